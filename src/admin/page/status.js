// The cutover status page. Plain script, no modules, no dependencies: it is served from the
// binary under a CSP that allows only this file to run.
//
// Every name, reason and error from the API reaches the DOM through textContent or
// createTextNode, never as markup. The admin token lives in sessionStorage and leaves the page
// only as an Authorization header.
'use strict';

(function () {
  const TOKEN_KEY = 'cutover.adminToken';
  const POLL_MS = 1000;
  const POLL_TIMEOUT_MS = 4000;
  const HISTORY_MS = 5 * 60 * 1000;
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const $ = (id) => document.getElementById(id);

  // ---- small DOM helpers -------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  // ---- formatting --------------------------------------------------------------------------

  // 50 → "50%", 33.33 → "33.33%": the API's two decimals, without trailing zeros.
  function pct(value) {
    return String(Number(value.toFixed(2))) + '%';
  }

  function rate(value) {
    return value.toFixed(1);
  }

  function clock(date) {
    return date.toLocaleTimeString([], { hour12: false });
  }

  function killLine(kill) {
    if (!kill) return '';
    const when = kill.at ? ' at ' + kill.at : '';
    return 'Killed by ' + kill.by + when + ': ' + kill.reason;
  }

  // ---- admin token -------------------------------------------------------------------------

  function getToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || '';
    } catch (e) {
      return '';
    }
  }

  function setToken(value) {
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      // Storage disabled: the token lasts until the page closes.
    }
    memoryToken = value;
    renderTokenState();
  }

  let memoryToken = getToken();

  function renderTokenState() {
    const has = Boolean(memoryToken);
    setText($('token-state'), has ? 'admin token set for this tab' : 'no admin token');
    setText($('token-change'), has ? 'change' : 'enter token');
    show($('token-forget'), has);
  }

  // The action to run once a token is entered (after none was set, or after a 401/403).
  let pending = null;

  function askToken(action) {
    pending = action || null;
    const note = $('token-pending');
    if (pending) setText(note, 'Then: ' + pending.label + '.');
    show(note, Boolean(pending));
    hideConfirm();
    show($('token-form'), true);
    const input = $('token-input');
    input.value = '';
    input.focus();
  }

  function hideTokenForm() {
    show($('token-form'), false);
    $('token-input').value = '';
  }

  // ---- notices (results of actions) --------------------------------------------------------

  function notify(kind, text, items, offerToken) {
    const box = $('notice');
    box.className = 'notice ' + kind;
    $('notice-text').setAttribute('role', kind === 'error' ? 'alert' : 'status');
    setText($('notice-text'), text);
    const list = $('notice-list');
    list.replaceChildren();
    for (const item of items || []) list.appendChild(el('li', '', String(item)));
    show(list, Boolean(items && items.length));
    show($('notice-token'), Boolean(offerToken));
    show(box, true);
  }

  // ---- confirm panel (kill all, resume all) ------------------------------------------------

  let confirmAction = null;

  function askConfirm(text, buttonLabel, danger, withReason, run) {
    hideTokenForm();
    confirmAction = run;
    setText($('confirm-text'), text);
    const go = $('confirm-go');
    setText(go, buttonLabel);
    go.className = danger ? 'danger' : 'primary';
    $('confirm-form').className = 'panel' + (danger ? ' danger-panel' : '');
    show($('confirm-reason-wrap'), withReason);
    $('confirm-reason').value = '';
    show($('confirm-form'), true);
    (withReason ? $('confirm-reason') : go).focus();
  }

  function hideConfirm() {
    confirmAction = null;
    show($('confirm-form'), false);
  }

  // ---- actions -----------------------------------------------------------------------------

  // POSTs to the admin API and reports the outcome. `describe` turns a 2xx JSON body into a
  // notice.
  async function act(action) {
    if (action.refused) {
      notify('error', 'Cannot ' + action.label + ' from this page: use the cutover CLI.');
      return;
    }
    const token = memoryToken;
    if (!token) {
      askToken(action);
      return;
    }
    let response;
    let body = null;
    try {
      response = await fetch(action.path, {
        method: 'POST',
        headers: { Authorization: 'Bearer ' + token, 'Content-Type': 'application/json' },
        body: action.body ? JSON.stringify(action.body) : '',
        cache: 'no-store',
        credentials: 'omit',
      });
      body = await response.json().catch(() => null);
    } catch (err) {
      notify('error', 'Could not ' + action.label + ': cutover did not answer (' + err.message + ').');
      return;
    }
    if (response.ok) {
      action.describe(body || {});
    } else if (response.status === 401 || response.status === 403) {
      pending = action;
      notify('error', 'Refused (' + response.status + '): ' + errorText(body, response) +
        '. Nothing changed.', [], true);
    } else if (response.status === 422 && body && Array.isArray(body.errors)) {
      notify('error', 'Could not ' + action.label + ': the config was rejected; cutover keeps ' +
        'serving the last good one.', body.errors);
    } else {
      notify('error', 'Could not ' + action.label + ' (' + response.status + '): ' +
        errorText(body, response) + '.');
    }
    refreshNow();
  }

  function errorText(body, response) {
    return body && typeof body.error === 'string' ? body.error : response.statusText || 'error';
  }

  function persisted(body) {
    return body.persisted === false
      ? ['Not written to the state file (' + body.persist_error + '): it will not survive a restart.']
      : [];
  }

  function switchAction(kind, name, verb) {
    const noun = kind === 'routes' ? 'route' : 'flag';
    const label = verb + ' ' + noun + ' “' + name + '”';
    return {
      label: label,
      // cutover refuses these names; if one ever came through, the browser would resolve the
      // dot segment and the call would reach /api/kill, every route.
      refused: name === '.' || name === '..',
      path: '/api/' + kind + '/' + encodeURIComponent(name) + '/' + verb,
      body: verb === 'kill' ? { reason: 'killed from the status page' } : null,
      describe: (body) => {
        const changed = Array.isArray(body.changed) && body.changed.length > 0;
        const past = verb === 'kill' ? 'killed' : 'resumed';
        const text = changed
          ? noun[0].toUpperCase() + noun.slice(1) + ' “' + name + '” ' + past + '.'
          : noun[0].toUpperCase() + noun.slice(1) + ' “' + name + '” was already ' +
            (verb === 'kill' ? 'killed' : 'live') + '.';
        const items = persisted(body);
        notify(items.length ? 'warn' : 'ok', text, items);
      },
    };
  }

  function bulkAction(verb, reason) {
    return {
      label: verb + ' every route',
      path: '/api/' + verb,
      body: verb === 'kill' && reason ? { reason: reason } : null,
      describe: (body) => {
        const changed = Array.isArray(body.changed) ? body.changed : [];
        const text = changed.length
          ? (verb === 'kill' ? 'Killed ' : 'Resumed ') + changed.length + ' route(s): ' +
            changed.join(', ') + '.'
          : 'Nothing to ' + verb + '.';
        const items = persisted(body);
        notify(items.length ? 'warn' : 'ok', text, items);
      },
    };
  }

  const reloadAction = {
    label: 'reload the config',
    path: '/api/reload',
    body: null,
    describe: (body) => {
      if (body.result === 'applied') {
        notify('ok', 'Config reloaded: generation ' + body.generation + '.', body.changes || []);
      } else {
        notify('ok', 'Config unchanged: still generation ' + body.generation + '.');
      }
    },
  };

  // ---- sparkline history -------------------------------------------------------------------

  // key → [{t, rps, err}], newest last, at most HISTORY_MS old.
  const history = new Map();

  function record(now, status) {
    const seen = new Set();
    for (const route of status.routes) {
      for (const b of route.backends) {
        const key = JSON.stringify([route.name, b.name]);
        seen.add(key);
        let samples = history.get(key);
        if (!samples) history.set(key, (samples = []));
        samples.push({ t: now, rps: b.requests_per_second, err: b.requests ? b.error_percent : 0 });
        while (samples.length && samples[0].t < now - HISTORY_MS) samples.shift();
      }
    }
    for (const key of history.keys()) if (!seen.has(key)) history.delete(key);
  }

  // The time axis spans the samples kept, at least a minute and at most HISTORY_MS, so a page
  // opened a moment ago still draws a readable line.
  function sparkline(spark, samples, now) {
    const W = 120;
    const H = 28;
    const oldest = samples.length ? samples[0].t : now;
    const span = Math.min(HISTORY_MS, Math.max(60 * 1000, now - oldest));
    const x = (t) => (W * (t - (now - span)) / span).toFixed(1);
    const peak = Math.max(0, ...samples.map((s) => s.rps));
    const top = Math.max(1, peak);
    const y = (v, scale) => (H - 1 - (H - 2) * v / scale).toFixed(1);
    const line = samples.map((s) => x(s.t) + ',' + y(s.rps, top)).join(' ');
    spark.line.setAttribute('points', line);
    spark.area.setAttribute('points', samples.length
      ? x(oldest) + ',' + H + ' ' + line + ' ' + x(samples[samples.length - 1].t) + ',' + H
      : '');
    const anyErrors = samples.some((s) => s.err > 0);
    spark.err.setAttribute('points', anyErrors
      ? samples.map((s) => x(s.t) + ',' + y(s.err, 100)).join(' ')
      : '');
    const last = samples.length ? samples[samples.length - 1].rps : 0;
    const minutes = Math.round(span / 60000);
    const summary = 'req/s over the last ' + minutes + ' min: now ' + rate(last) + ', peak ' +
      rate(peak) + (anyErrors ? '; red line: error % (0–100)' : '');
    setText(spark.title, summary);
    spark.root.setAttribute('aria-label', summary);
  }

  function newSparkline() {
    const root = svg('svg', {
      class: 'spark', viewBox: '0 0 120 28', preserveAspectRatio: 'none', role: 'img',
    });
    const title = svg('title');
    const area = svg('polygon', { class: 'spark-area' });
    const line = svg('polyline', { class: 'spark-line' });
    const err = svg('polyline', { class: 'spark-err' });
    root.append(title, area, line, err);
    return { root, title, area, line, err };
  }

  // ---- split bars --------------------------------------------------------------------------

  function colorClass(route, name, index) {
    if (name === route.stable) return 'c-stable';
    const others = route.backends.filter((b) => b.name !== route.stable).map((b) => b.name);
    return 'c-' + ((others.indexOf(name) % 5) + 1);
  }

  function fillBar(bar, route, field) {
    bar.replaceChildren();
    route.backends.forEach((b, i) => {
      const share = b[field];
      if (share <= 0) return;
      const seg = el('div', 'seg ' + colorClass(route, b.name, i));
      seg.style.width = share + '%';
      seg.title = b.name + ' ' + pct(share);
      seg.appendChild(el('span', 'seg-label', b.name + ' ' + pct(share)));
      bar.appendChild(seg);
    });
  }

  // ---- cards with a kill switch (routes and flags) -------------------------------------------

  // The card, its heading, state badge, kill and resume buttons and the line saying why it is
  // killed. `kind` is the API's path segment: `routes` or `flags`.
  function newSwitchCard(kind, name) {
    const card = el('article', 'card ' + (kind === 'routes' ? 'route' : 'flag'));
    card.dataset[kind === 'routes' ? 'route' : 'flag'] = name;
    const head = el('div', 'card-head');
    const badge = el('span', 'badge');
    const button = (verb, label, cls) => {
      const b = el('button', cls, label);
      b.type = 'button';
      b.dataset.action = verb;
      b.addEventListener('click', () => act(switchAction(kind, name, verb)));
      return b;
    };
    const kill = button('kill', 'Kill', 'danger');
    const resume = button('resume', 'Resume', 'primary');
    head.append(el('h3', 'name', name), badge, el('span', 'spacer'), kill, resume);
    const killed = el('p', 'kill-line');
    card.append(head, killed);
    return { card, badge, kill, resume, killed };
  }

  function updateSwitch(view, killed, kill, consequence) {
    view.card.classList.toggle('killed', killed);
    setText(view.badge, killed ? 'KILLED' : 'live');
    view.badge.className = 'badge ' + (killed ? 'bad' : 'good');
    show(view.kill, !killed);
    show(view.resume, killed);
    // `kill: true` in the YAML is undone in the YAML; the API would answer 409.
    const inConfig = Boolean(kill && kill.by === 'yaml');
    view.resume.disabled = inConfig;
    view.resume.title = inConfig ? 'Killed by kill: true in the config file: edit the file to resume' : '';
    setText(view.killed, killed ? killLine(kill) + ' — ' + consequence : '');
    show(view.killed, killed);
  }

  // ---- routes ------------------------------------------------------------------------------

  const routeCards = new Map();

  function newRouteCard(name) {
    const view = newSwitchCard('routes', name);
    const bars = el('div', 'bars');
    const effRow = el('div', 'bar-row');
    const effLabel = el('span', 'bar-label', 'in effect');
    const effBar = el('div', 'bar effective');
    effRow.append(effLabel, effBar);
    const cfgRow = el('div', 'bar-row configured');
    const cfgBar = el('div', 'bar');
    cfgRow.append(el('span', 'bar-label', 'configured'), cfgBar);
    bars.append(effRow, cfgRow);

    const table = el('div', 'backends');
    table.setAttribute('role', 'table');
    const header = el('div', 'brow bhead');
    header.setAttribute('role', 'row');
    for (const [label, cls] of [['backend', 'bname'], ['split', 'split num'], ['req/s', 'rps num'],
      ['errors', 'err num'], ['p99', 'p99 num'], ['recent req/s', 'trend']]) {
      const cell = el('span', cls, label);
      cell.setAttribute('role', 'columnheader');
      header.appendChild(cell);
    }
    const rows = el('div', 'brows');
    table.append(header, rows);
    const guard = el('p', 'guard');
    const shadow = el('p', 'shadow');
    const shadowText = el('span');
    const shadowLink = el('a', null, 'mismatch samples');
    shadow.append(shadowText, ' ', shadowLink);
    const ramp = newRampBlock();
    view.card.append(bars, table, guard, shadow, ramp.ramp);
    return Object.assign(view, ramp, {
      effLabel, effBar, cfgRow, cfgBar, rows, guard, shadow, shadowText, shadowLink,
      shape: '', rowsByName: new Map(), barsKey: '',
    });
  }

  function newBackendRow() {
    const row = el('div', 'brow');
    row.setAttribute('role', 'row');
    const cell = (cls, label) => {
      const c = el('span', cls);
      c.setAttribute('role', 'cell');
      if (label) c.appendChild(el('span', 'k', label));
      const v = el('span', 'v');
      c.appendChild(v);
      row.appendChild(c);
      return v;
    };
    const nameCell = el('span', 'bname');
    nameCell.setAttribute('role', 'cell');
    const swatch = el('span', 'swatch');
    const name = el('span', 'v');
    const stable = el('span', 'tag', 'stable');
    nameCell.append(swatch, name, stable);
    row.appendChild(nameCell);
    const split = cell('split num', 'split');
    const rps = cell('rps num', 'req/s');
    const err = cell('err num', 'errors');
    const p99 = cell('p99 num', 'p99');
    const trend = el('span', 'trend');
    trend.setAttribute('role', 'cell');
    const spark = newSparkline();
    trend.appendChild(spark.root);
    row.appendChild(trend);
    return { row, swatch, name, stable, split, rps, err, p99, spark };
  }

  function updateRoute(view, route, now) {
    updateSwitch(view, route.killed, route.kill, 'all traffic goes to ' + route.stable + '.');

    const differs = route.backends.some((b) => b.configured !== b.effective);
    const barsKey = JSON.stringify([route.stable, route.backends.map((b) => [b.name, b.configured, b.effective])]);
    if (barsKey !== view.barsKey) {
      view.barsKey = barsKey;
      fillBar(view.effBar, route, 'effective');
      fillBar(view.cfgBar, route, 'configured');
    }
    setText(view.effLabel, differs ? 'in effect' : 'split');
    show(view.cfgRow, differs);

    const shape = JSON.stringify([route.stable, route.backends.map((b) => b.name)]);
    if (shape !== view.shape) {
      view.shape = shape;
      view.rowsByName = new Map();
      view.rows.replaceChildren();
      route.backends.forEach((b, i) => {
        const r = newBackendRow();
        r.row.dataset.backend = b.name;
        setText(r.name, b.name);
        r.swatch.className = 'swatch ' + colorClass(route, b.name, i);
        show(r.stable, b.name === route.stable);
        view.rowsByName.set(b.name, r);
        view.rows.appendChild(r.row);
      });
    }
    for (const b of route.backends) {
      const r = view.rowsByName.get(b.name);
      setText(r.split, b.configured === b.effective
        ? pct(b.configured)
        : pct(b.configured) + ' → ' + pct(b.effective));
      r.split.parentNode.classList.toggle('changed', b.configured !== b.effective);
      setText(r.rps, rate(b.requests_per_second));
      setText(r.err, b.requests ? b.error_percent.toFixed(1) + '%' : '–');
      r.err.parentNode.classList.toggle('bad-text', b.requests > 0 && b.error_percent > 0);
      setText(r.p99, b.p99_ms == null ? '–' : b.p99_ms.toFixed(1) + ' ms');
      sparkline(r.spark, history.get(JSON.stringify([route.name, b.name])) || [], now);
    }
    const stats = 'stats over the last ' + route.window_seconds + ' s';
    setText(view.guard, route.guard
      ? 'Guard: kills the route when a non-stable backend passes ' + route.guard.max_error_rate +
        '% errors over ' + route.guard.window_seconds + ' s (after ' + route.guard.min_requests +
        ' requests); ' + stats + '.'
      : 'No guard; ' + stats + '.');
    updateShadow(view, route.shadow);
    updateRamp(view, route.ramp);
  }

  function newRampBlock() {
    const ramp = el('div', 'ramp');
    const rampLine = el('p', 'ramp-line');
    const rampGate = el('p', 'ramp-gate');
    const rampHistory = el('ol', 'ramp-history');
    ramp.append(rampLine, rampGate, rampHistory);
    return { ramp, rampLine, rampGate, rampHistory, rampHistoryKey: '' };
  }

  // A ramp: where it stands, why it holds, each gate reading against its threshold (a flag's
  // ramp has none), and its last steps.
  function updateRamp(view, ramp) {
    show(view.ramp, !!ramp);
    if (!ramp) return;
    const steps = ramp.steps.map((s, i) => {
      if (i + 1 !== ramp.step) return pct(s);
      // Held where users were (a start or an edit between steps), before this step.
      return s === ramp.percent ? '[' + pct(s) + ']' : '[' + pct(ramp.percent) + '] → ' + pct(s);
    });
    let line = 'Ramp to ' + ramp.to + ': step ' + ramp.step + ' of ' + ramp.steps.length + ' (' +
      pct(ramp.percent) + ') · ' + ramp.state;
    if (ramp.holding) line += ' · ' + ramp.holding;
    else if (ramp.reason) line += ' · ' + ramp.reason;
    line += ' · steps ' + steps.join(' → ') + ' every ' + ramp.every_seconds + ' s';
    setText(view.rampLine, line);
    view.ramp.classList.toggle('bad-text', ramp.state === 'aborted');
    const units = { requests: '', error_rate: '%', latency_ratio: '×', mismatch_rate: '%' };
    show(view.rampGate, ramp.gate.length > 0);
    setText(view.rampGate, 'Gate over ' + ramp.time_at_step_seconds + ' s at this step: ' +
      ramp.gate.map((g) => {
        const unit = units[g.name] || '';
        const value = g.value == null ? '–' : g.value + unit;
        const bound = (g.name === 'requests' ? '≥ ' : '≤ ') + g.threshold + unit;
        return g.name.replace('_', ' ') + ' ' + value + ' (' + bound + (g.ok ? ', ok)' : ', NOT MET)');
      }).join(' · '));
    const recent = ramp.history.slice(-5).reverse();
    const key = JSON.stringify(recent);
    if (key !== view.rampHistoryKey) {
      view.rampHistoryKey = key;
      view.rampHistory.replaceChildren(...recent.map((e) =>
        el('li', null, e.at + ' · ' + pct(e.percent) + ' · ' + e.event)));
    }
  }

  function updateShadow(view, shadow) {
    show(view.shadow, !!shadow);
    if (!shadow) return;
    const c = shadow.counts;
    const compared = c.match + c.mismatch;
    const result = shadow.match_percent == null
      ? 'nothing compared yet'
      : shadow.match_percent + '% match of ' + compared + ' compared';
    setText(view.shadowText, 'Shadow: ' + pct(shadow.percent) + ' of ' + shadow.methods.join('/') +
      ' copied to ' + shadow.to + ' — ' + result + ' · mismatch ' + c.mismatch + ' · error ' +
      c.error + ' · timeout ' + c.timeout + ' · dropped ' + c.dropped + '.');
    view.shadow.classList.toggle('bad-text', c.mismatch > 0);
    if (view.shadowLink.getAttribute('href') !== shadow.diffs) {
      view.shadowLink.setAttribute('href', shadow.diffs);
    }
  }

  // Keeps one card per name, in the API's order, reusing nodes so buttons never move or
  // vanish under the pointer between refreshes.
  function reconcile(container, cards, items, keyOf, create, update) {
    const wanted = new Set(items.map(keyOf));
    for (const [key, view] of cards) {
      if (!wanted.has(key)) {
        view.card.remove();
        cards.delete(key);
      }
    }
    let previous = null;
    for (const item of items) {
      const key = keyOf(item);
      let view = cards.get(key);
      if (!view) cards.set(key, (view = create(key)));
      update(view, item);
      const expected = previous ? previous.nextSibling : container.firstChild;
      if (expected !== view.card) container.insertBefore(view.card, expected);
      previous = view.card;
    }
  }

  // ---- flags -------------------------------------------------------------------------------

  const flagCards = new Map();

  function newFlagCard(key) {
    const view = newSwitchCard('flags', key);
    const barRow = el('div', 'bar-row');
    const bar = el('div', 'bar');
    barRow.append(el('span', 'bar-label', 'rollout'), bar);
    const noRollout = el('p', 'muted', 'No rollout: rules and the default decide.');
    const table = el('div', 'variants');
    table.setAttribute('role', 'table');
    const meta = el('p', 'guard');
    const ramp = newRampBlock();
    view.card.append(barRow, noRollout, table, meta, ramp.ramp);
    return Object.assign(view, ramp, { barRow, bar, noRollout, table, meta, shape: '' });
  }

  function updateFlag(view, flag) {
    updateSwitch(view, flag.killed, flag.kill, 'everyone gets “' + flag.default + '”.');
    // A flag with a rollout gives every variant a share (0 for those left out).
    const hasRollout = flag.variants.some((v) => v.rollout_percent != null);
    show(view.barRow, hasRollout);
    show(view.noRollout, !hasRollout);

    const shape = JSON.stringify([flag.variants.map((v) => [v.name, v.rollout_percent]), flag.default]);
    if (shape !== view.shape) {
      view.shape = shape;
      const asRoute = {
        stable: flag.default,
        backends: flag.variants.map((v) => ({ name: v.name, share: v.rollout_percent || 0 })),
      };
      fillBar(view.bar, asRoute, 'share');
      view.table.replaceChildren();
      const header = el('div', 'vrow vhead');
      header.append(el('span', 'vname', 'variant'), el('span', 'num', 'rollout'),
        el('span', 'num', 'served'), el('span', 'num', 'share served'));
      view.table.appendChild(header);
      view.rows = flag.variants.map((v, i) => {
        const row = el('div', 'vrow');
        row.dataset.variant = v.name;
        const nameCell = el('span', 'vname');
        nameCell.append(el('span', 'swatch ' + colorClass(asRoute, v.name, i)), el('span', 'v', v.name));
        if (v.name === flag.default) nameCell.appendChild(el('span', 'tag', 'default'));
        const rollout = el('span', 'num rollout', v.rollout_percent == null ? '–' : pct(v.rollout_percent));
        const served = el('span', 'num served');
        const share = el('span', 'num share');
        row.append(nameCell, rollout, served, share);
        view.table.appendChild(row);
        return { served, share };
      });
    }
    flag.variants.forEach((v, i) => {
      setText(view.rows[i].served, String(v.evaluations));
      setText(view.rows[i].share, flag.evaluations ? pct(100 * v.evaluations / flag.evaluations) : '–');
    });
    setText(view.meta, 'Default “' + flag.default + '” · ' + flag.evaluations +
      ' evaluations since start.');
    updateRamp(view, flag.ramp);
  }

  // ---- the whole document ------------------------------------------------------------------

  function render(status, now) {
    setText($('generation'), String(status.generation));
    setText($('config-file'), status.config_file);
    const reload = status.last_reload;
    show($('reload-banner'), !reload.ok);
    if (!reload.ok) {
      setText($('reload-when'), '(' + reload.trigger + ' at ' + reload.at + ')');
      setText($('reload-serving'), String(status.generation));
      const list = $('reload-errors');
      const errors = JSON.stringify(reload.errors);
      if (list.dataset.errors !== errors) {
        list.dataset.errors = errors;
        list.replaceChildren(...reload.errors.map((e) => el('li', '', e)));
      }
    }
    const unsaved = status.state_file && status.state_file.failure;
    show($('persist-banner'), Boolean(unsaved));
    if (unsaved) {
      setText($('persist-path'), status.state_file.path);
      setText($('persist-since'), unsaved.since);
      setText($('persist-attempts'), String(unsaved.attempts));
      setText($('persist-error'), unsaved.error);
    }
    document.body.classList.toggle('any-killed', status.routes.some((r) => r.killed));
    reconcile($('routes'), routeCards, status.routes, (r) => r.name, newRouteCard,
      (view, route) => updateRoute(view, route, now));
    const orphans = status.orphan_kills || [];
    show($('orphans'), orphans.length > 0);
    const orphanList = $('orphan-list');
    if (orphanList.dataset.names !== JSON.stringify(orphans)) {
      orphanList.dataset.names = JSON.stringify(orphans);
      orphanList.replaceChildren(...orphans.map((name) => el('li', '', name)));
    }
    const flags = status.flags || [];
    show($('flags-section'), flags.length > 0);
    reconcile($('flags'), flagCards, flags, (f) => f.key, newFlagCard, updateFlag);
  }

  // ---- polling -----------------------------------------------------------------------------

  let timer = null;
  let inFlight = false;
  let again = false;
  let lastOk = null;

  async function poll() {
    inFlight = true;
    const abort = new AbortController();
    const deadline = setTimeout(() => abort.abort(), POLL_TIMEOUT_MS);
    try {
      const response = await fetch('/api/status', { cache: 'no-store', signal: abort.signal });
      if (!response.ok) throw new Error('HTTP ' + response.status);
      const status = await response.json();
      const now = Date.now();
      record(now, status);
      render(status, now);
      lastOk = new Date(now);
      setText($('updated'), 'updated ' + clock(lastOk));
      show($('conn-banner'), false);
      document.body.classList.remove('stale');
    } catch (err) {
      const reason = err.name === 'AbortError' ? 'timed out' : err.message;
      setText($('conn-banner'), 'No answer from cutover' +
        (lastOk ? ' since ' + clock(lastOk) : '') + ' (' + reason +
        '). The numbers below are stale; retrying every second.');
      show($('conn-banner'), true);
      document.body.classList.add('stale');
    } finally {
      clearTimeout(deadline);
      inFlight = false;
      clearTimeout(timer);
      if (again) {
        again = false;
        poll();
      } else {
        timer = setTimeout(poll, POLL_MS);
      }
    }
  }

  function refreshNow() {
    if (inFlight) {
      again = true;
      return;
    }
    clearTimeout(timer);
    poll();
  }

  // ---- wiring ------------------------------------------------------------------------------

  function start() {
    renderTokenState();
    $('reload').addEventListener('click', () => act(reloadAction));
    $('kill-all').addEventListener('click', () => askConfirm(
      'Kill every route? All traffic goes to each route’s stable backend until someone resumes.',
      'Kill all routes', true, true,
      () => act(bulkAction('kill', $('confirm-reason').value.trim()))));
    $('resume-all').addEventListener('click', () => askConfirm(
      'Resume every route? Each route goes back to its configured split, including routes the ' +
      'guard killed.', 'Resume all routes', false, false, () => act(bulkAction('resume'))));
    $('confirm-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const run = confirmAction;
      hideConfirm();
      if (run) run();
    });
    $('confirm-cancel').addEventListener('click', hideConfirm);

    $('token-change').addEventListener('click', () => askToken(null));
    $('token-forget').addEventListener('click', () => {
      setToken('');
      notify('ok', 'Admin token forgotten.');
    });
    $('token-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const value = $('token-input').value.trim();
      if (!value) return;
      setToken(value);
      hideTokenForm();
      const action = pending;
      pending = null;
      if (action) act(action);
    });
    $('token-cancel').addEventListener('click', () => {
      pending = null;
      hideTokenForm();
    });
    $('notice-token').addEventListener('click', () => {
      const action = pending;
      setToken('');
      show($('notice'), false);
      askToken(action);
    });
    $('notice-dismiss').addEventListener('click', () => {
      pending = null;
      show($('notice'), false);
    });
    document.addEventListener('keydown', (event) => {
      if (event.key !== 'Escape') return;
      hideConfirm();
      if (!$('token-form').hidden) {
        pending = null;
        hideTokenForm();
      }
    });
    poll();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
