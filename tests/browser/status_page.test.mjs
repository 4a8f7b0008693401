// The status page as a person uses it: real headless Chromium, the real cutover binary, two
// real backends and steady traffic through the proxy. Run by tests/browser/run.sh.
//
// Everything listens on 127.0.0.1 ephemeral ports; every wait is bounded; every process this
// file starts is stopped in `after`, and killed on exit if that never ran.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..', '..');
const BIN = path.resolve(ROOT, process.env.CUTOVER_BIN || 'target/debug/cutover');
const TOKEN = 'page-test-' + Math.random().toString(36).slice(2);
// Names are any printable text, so a route may be called this; it must render as text.
const XSS = '<img src=x onerror=alert(1)>';
const ORPHAN = '<img src=x onerror=alert(4)>';
const SCREENSHOT_DIR = process.env.SCREENSHOT_DIR || HERE;

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

// ---- fixtures -------------------------------------------------------------------------------

const env = {
  dir: null,
  backends: [],
  cutover: null,
  logs: [],
  proxy: null,
  admin: null,
  flags: null,
  browser: null,
  context: null,
  page: null,
  dialogs: [],
  consoleErrors: [],
  requests: [],
  load: null,
};

function backend(name) {
  const server = http.createServer((req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'text/plain', 'x-backend': name });
    res.end(name + '\n');
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve({ name, server, port: server.address().port }));
  });
}

function config(legacyPort, newPort, extraRoute = '') {
  return `listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
  token_env: CUTOVER_ADMIN_TOKEN
flags_api:
  listen: 127.0.0.1:0
shutdown_timeout: 1s
backends:
  legacy:
    url: http://127.0.0.1:${legacyPort}
    request_timeout: 2s
  new:
    url: http://127.0.0.1:${newPort}
    request_timeout: 2s
routes:
  - name: checkout
    match:
      path_prefix: /api/checkout
    split:
      legacy: 50
      new: 50
    stable: legacy
    guard: { max_error_rate: 50, min_requests: 100000, window: 30s }
    shadow: { to: new, percent: 100 }
  - name: ramped
    match:
      path_prefix: /api/ramped
    split: { legacy: 100, new: 0 }
    ramp: { to: new, steps: [1, 50, 100], every: 1h, gate: { min_requests: 1000000, max_latency_ratio: 2 } }
${extraRoute}  - name: everything-else
    match:
      path_prefix: /
    split:
      legacy: 100
flags:
  new-checkout:
    variants: { "on": true, "off": false }
    default: "off"
    rollout: { "on": 25, "off": 75 }
  ramped-flag:
    variants: { "new": "new", "old": "old" }
    default: "old"
    rollout: { "old": 100, "new": 0 }
    ramp: { to: "new", steps: [5, 100], every: 1h }
`;
}

// Starts `cutover run` and reads the bound addresses from its startup line, like
// tests/common/mod.rs does.
function startCutover(configPath) {
  const child = spawn(BIN, ['run', '--config', configPath, '--threads', '2'], {
    env: { ...process.env, CUTOVER_ADMIN_TOKEN: TOKEN, RUST_LOG: 'info' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  env.cutover = child;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('cutover did not start in 15 s:\n' +
      env.logs.join('\n'))), 15000);
    let buffered = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      buffered += chunk;
      const lines = buffered.split('\n');
      buffered = lines.pop();
      for (const line of lines) {
        env.logs.push(line);
        if (!line.includes('cutover listening')) continue;
        clearTimeout(timer);
        const field = (key) => {
          const m = line.match(new RegExp(key + '=(\\S+)'));
          return m && m[1] !== 'off' ? m[1] : null;
        };
        resolve({ proxy: field('proxy'), admin: field('admin'), flags: field('flags') });
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error('cutover exited with ' + code + ':\n' + env.logs.join('\n')));
    });
  });
}

// One plain HTTP request with a deadline: { status, headers, body }.
function request(addr, method, urlPath, { headers = {}, body = '' } = {}) {
  const [host, port] = addr.split(':');
  return new Promise((resolve, reject) => {
    const req = http.request({ host, port, method, path: urlPath, headers, timeout: 5000 }, (res) => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => { data += chunk; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: data }));
    });
    req.on('timeout', () => req.destroy(new Error(method + ' ' + urlPath + ' timed out')));
    req.on('error', reject);
    req.end(body);
  });
}

async function apiStatus() {
  const res = await request(env.admin, 'GET', '/api/status');
  assert.equal(res.status, 200);
  return JSON.parse(res.body);
}

function admin(method, urlPath, body = '') {
  return request(env.admin, method, urlPath, {
    headers: { authorization: 'Bearer ' + TOKEN, 'content-type': 'application/json' },
    body,
  });
}

// `count` sequential requests through the proxy: { legacy: n, new: m }.
async function sample(count) {
  const seen = {};
  for (let i = 0; i < count; i++) {
    const res = await request(env.proxy, 'GET', '/api/checkout/probe');
    assert.equal(res.status, 200, res.body);
    const name = res.body.trim();
    seen[name] = (seen[name] || 0) + 1;
  }
  return seen;
}

// Steady, light traffic through the proxy: one request every 15 ms, bounded in count.
function startLoad() {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 2 });
  const [host, port] = env.proxy.split(':');
  const load = { stop: false, sent: 0, counts: {}, done: null };
  load.done = (async () => {
    while (!load.stop && load.sent < 40000) {
      load.sent++;
      await new Promise((resolve) => {
        const req = http.get({ host, port, path: '/api/checkout/load', agent, timeout: 2000 }, (res) => {
          let body = '';
          res.on('data', (c) => { body += c; });
          res.on('end', () => {
            load.counts[body.trim()] = (load.counts[body.trim()] || 0) + 1;
            resolve();
          });
        });
        req.on('timeout', () => req.destroy());
        req.on('error', resolve);
      });
      await new Promise((resolve) => setTimeout(resolve, 15));
    }
    agent.destroy();
  })();
  return load;
}

async function eventually(what, check, timeoutMs = 8000) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  while (Date.now() < deadline) {
    try {
      return await check();
    } catch (err) {
      lastError = err;
    }
    await new Promise((resolve) => setTimeout(resolve, 150));
  }
  throw new Error(what + ' did not happen in ' + timeoutMs + ' ms: ' + (lastError && lastError.message));
}

function pct(value) {
  return String(Number(value.toFixed(2))) + '%';
}

const route = (name) => `[data-route="${name}"]`;
const cell = (routeName, backendName, column) =>
  `${route(routeName)} [data-backend="${backendName}"] .${column} .v`;

// ---- setup and teardown ---------------------------------------------------------------------

function killEverything() {
  if (env.cutover && env.cutover.exitCode === null) env.cutover.kill('SIGKILL');
}
process.on('exit', killEverything);

before(async () => {
  assert.ok(fs.existsSync(BIN), BIN + ' is missing: run cargo build first');
  env.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cutover-page-'));
  const [legacy, fresh] = await Promise.all([backend('legacy'), backend('new')]);
  env.backends = [legacy, fresh];
  env.configPath = path.join(env.dir, 'cutover.yaml');
  env.goodConfig = config(legacy.port, fresh.port,
    `  - name: "${XSS}"\n    match: { path_prefix: /x }\n    split: { legacy: 100 }\n`);
  fs.writeFileSync(env.configPath, env.goodConfig);
  // A runtime kill of a route that is not in the config: its name and reason reach the page
  // as they are.
  fs.writeFileSync(path.join(env.dir, 'cutover-state.json'), JSON.stringify({
    routes: { [ORPHAN]: { by: 'api', at: '2026-01-01T00:00:00Z', reason: '<b>old</b>' } },
    flags: {},
  }));
  const addrs = await startCutover(env.configPath);
  env.startedAt = Date.now();
  Object.assign(env, addrs);
  env.load = startLoad();

  // Playwright gives the browser a fresh temporary --user-data-dir and removes it on close.
  env.browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 30000,
  });
  env.context = await env.browser.newContext({ viewport: { width: 1280, height: 900 } });
  env.context.setDefaultTimeout(8000);
  env.page = await env.context.newPage();
  watch(env.page);
});

function watch(page) {
  page.on('dialog', (dialog) => {
    env.dialogs.push(dialog.message());
    dialog.dismiss().catch(() => {});
  });
  page.on('console', (msg) => {
    // Chromium logs every non-2xx fetch; the refusals this test provokes are expected.
    const refused = /Failed to load resource: the server responded with a status of 40[13]/;
    if (msg.type() === 'error' && !refused.test(msg.text())) env.consoleErrors.push(msg.text());
  });
  page.on('pageerror', (err) => env.consoleErrors.push(String(err)));
  page.on('request', (req) => env.requests.push({
    url: req.url(), method: req.method(), headers: req.headers(),
  }));
}

after(async () => {
  if (env.load) {
    env.load.stop = true;
    await Promise.race([env.load.done, new Promise((r) => setTimeout(r, 3000))]);
  }
  if (env.browser) await env.browser.close().catch(() => {});
  if (env.cutover && env.cutover.exitCode === null) {
    const exited = new Promise((resolve) => env.cutover.once('exit', resolve));
    env.cutover.kill('SIGTERM');
    const timer = setTimeout(killEverything, 3000);
    await exited;
    clearTimeout(timer);
  }
  for (const b of env.backends) {
    b.server.closeAllConnections();
    b.server.close();
  }
  if (env.dir) fs.rmSync(env.dir, { recursive: true, force: true });
  if (env.load) console.log('# load: ' + env.load.sent + ' requests ' + JSON.stringify(env.load.counts));
});

// ---- the tests, in order: each builds on the state the previous one left --------------------

test('the page loads under its CSP and shows what /api/status says', { timeout: 30000 }, async () => {
  const { page } = env;
  const response = await page.goto('http://' + env.admin + '/', { waitUntil: 'load' });
  assert.equal(response.status(), 200);
  assert.match(response.headers()['content-security-policy'], /script-src 'self'/);
  await page.waitForSelector(cell('checkout', 'new', 'rps'));
  // Wait for traffic to show up, and for the rate window to be a few seconds old: younger,
  // one second moves the rate too much to compare two reads a second apart.
  await page.waitForFunction((sel) => Number(document.querySelector(sel).textContent) > 2,
    cell('checkout', 'new', 'rps'), { timeout: 10000 });
  const settle = env.startedAt + 6000 - Date.now();
  if (settle > 0) await new Promise((resolve) => setTimeout(resolve, settle));

  const shown = {
    generation: await page.textContent('#generation'),
    split: {
      legacy: await page.textContent(cell('checkout', 'legacy', 'split')),
      new: await page.textContent(cell('checkout', 'new', 'split')),
    },
    rps: {
      legacy: Number(await page.textContent(cell('checkout', 'legacy', 'rps'))),
      new: Number(await page.textContent(cell('checkout', 'new', 'rps'))),
    },
    badge: await page.textContent(route('checkout') + ' .badge'),
    flagRollout: await page.textContent('[data-flag="new-checkout"] [data-variant="on"] .rollout'),
  };
  const status = await apiStatus();
  const checkout = status.routes.find((r) => r.name === 'checkout');
  assert.equal(shown.generation, String(status.generation));
  for (const b of checkout.backends) {
    assert.equal(shown.split[b.name], pct(b.configured), b.name + ' split');
    const api = b.requests_per_second;
    const tolerance = Math.max(2, api * 0.25);
    assert.ok(Math.abs(shown.rps[b.name] - api) <= tolerance,
      `${b.name}: page shows ${shown.rps[b.name]} req/s, API ${api}`);
  }
  assert.equal(shown.badge, 'live');
  const on = status.flags[0].variants.find((v) => v.name === 'on');
  assert.equal(shown.flagRollout, pct(on.rollout_percent));
  // The catch-all route is listed too, in config order.
  const names = await page.$$eval('[data-route]', (cards) => cards.map((c) => c.dataset.route));
  assert.deepEqual(names, status.routes.map((r) => r.name));
});

test('a shadowed route shows its results and links to its samples', { timeout: 20000 }, async () => {
  const { page } = env;
  const line = route('checkout') + ' .shadow';
  // legacy and new answer differently, so every copy is a mismatch.
  await page.waitForFunction((sel) => /% match of \d+ compared · mismatch [1-9]/.test(
    document.querySelector(sel).textContent), line, { timeout: 10000 });
  assert.match(await page.textContent(line), /^Shadow: 100% of GET\/HEAD copied to new — /);
  assert.ok(await page.isVisible(line));
  assert.equal(await page.getAttribute(line + ' a', 'href'), '/api/routes/checkout/diffs');
  assert.equal(await page.isVisible(route('everything-else') + ' .shadow'), false);
  const diffs = await request(env.admin, 'GET', '/api/routes/checkout/diffs');
  assert.equal(diffs.status, 200);
  assert.ok(JSON.parse(diffs.body).samples.length > 0);
});

test('a ramping route shows its step, why it holds, its gate and its history', { timeout: 20000 }, async () => {
  const { page } = env;
  const card = route('ramped');
  await page.waitForSelector(card + ' .ramp-line', { state: 'visible' });
  assert.match(await page.textContent(card + ' .ramp-line'),
    /^Ramp to new: step 1 of 3 \(1%\) · running · waiting for traffic: \d+ of 1000000 · steps \[1%\] → 50% → 100% every 3600 s$/);
  assert.match(await page.textContent(card + ' .ramp-gate'),
    /requests \d+ \(≥ 1000000, NOT MET\) · error rate – \(≤ 1%, ok\) · latency ratio .* \(≤ 2×, ok\)/);
  assert.match(await page.textContent(card + ' .ramp-history li'), /· 1% · ramp started at 1%$/);
  // The ramp's share is what is in effect; the YAML's is what is configured.
  assert.equal(await page.isVisible(card + ' .configured'), true);
  assert.equal(await page.isVisible(route('checkout') + ' .ramp'), false);
  // A flag's ramp: its step, no gate.
  const flagCard = '[data-flag="ramped-flag"]';
  assert.match(await page.textContent(flagCard + ' .ramp-line'),
    /^Ramp to new: step 1 of 2 \(5%\) · running · next step in 59m \d+s · steps \[5%\] → 100% every 3600 s$/);
  assert.equal(await page.isVisible(flagCard + ' .ramp-gate'), false);
});

test('sparklines fill from the samples the page keeps', { timeout: 20000 }, async () => {
  await env.page.waitForFunction((sel) => {
    const points = document.querySelector(sel).getAttribute('points') || '';
    return points.trim().split(/\s+/).length >= 3;
  }, `${route('checkout')} [data-backend="new"] .spark-line`, { timeout: 10000 });
});

test('names and reasons from outside are text, never markup', { timeout: 30000 }, async () => {
  const { page } = env;
  try {
    // A route named with markup, killed by that name (percent-encoded in the path) with a
    // reason that is markup too.
    assert.ok((await page.textContent(route(XSS))).includes(XSS));
    const res = await admin('POST', '/api/routes/' + encodeURIComponent(XSS) + '/kill',
      JSON.stringify({ reason: '<img src=x onerror=alert(2)>' }));
    assert.equal(res.status, 200, res.body);
    await page.waitForFunction((sel) => document
      .querySelector(sel + ' .kill-line')
      .textContent.includes('<img src=x onerror=alert(2)>'), route(XSS));
    // A reload error that quotes a backend name with markup.
    const bad = '<img src=x onerror=alert(3)>';
    fs.writeFileSync(env.configPath, env.goodConfig.replace('  - name: everything-else',
      `  - name: broken\n    match: { path_prefix: /y }\n    split: { "${bad}": 100 }\n  - name: everything-else`));
    const rejected = await admin('POST', '/api/reload');
    assert.equal(rejected.status, 422, rejected.body);
    await page.waitForSelector('#reload-banner:not([hidden])');
    const bannerText = await page.textContent('#reload-errors');
    assert.ok(bannerText.includes(bad), bannerText);
    // The orphan kill from the state file.
    const orphans = await page.textContent('#orphan-list');
    assert.ok(orphans.includes(ORPHAN), orphans);

    const imgs = await page.$$eval('img', (nodes) => nodes.length);
    assert.equal(imgs, 0, 'no <img> may come from data');
    assert.deepEqual(env.dialogs, []);
    await page.screenshot({ path: path.join(SCREENSHOT_DIR, 'status-page-incident.png'), fullPage: true });
  } finally {
    // Leave the good config and a live catch-all for the tests after this one.
    fs.writeFileSync(env.configPath, env.goodConfig);
    assert.equal((await admin('POST', '/api/reload')).status, 200);
    const resumed = await admin('POST', '/api/routes/' + encodeURIComponent(XSS) + '/resume');
    assert.equal(resumed.status, 200, resumed.body);
  }
  await page.waitForSelector('#reload-banner', { state: 'hidden' });
  await page.waitForFunction((sel) => !document.querySelector(sel).classList.contains('killed'),
    route(XSS));
});

test('a wrong token is refused with the API message, then the right one kills the route', { timeout: 30000 }, async () => {
  const { page } = env;
  const refusal = await request(env.admin, 'POST', '/api/routes/checkout/kill',
    { headers: { authorization: 'Bearer nope' } });
  assert.equal(refusal.status, 403);
  const message = JSON.parse(refusal.body).error;

  await page.click(route('checkout') + ' button[data-action="kill"]');
  await page.waitForSelector('#token-form:not([hidden])');
  assert.match(await page.textContent('#token-pending'), /kill route “checkout”/);
  await page.fill('#token-input', 'wrong-token');
  await page.click('#token-form button[type="submit"]');
  await page.waitForSelector('#notice:not([hidden])');
  await page.waitForFunction((m) => document.querySelector('#notice-text').textContent.includes(m), message);
  assert.match(await page.textContent('#notice-text'), /403/);
  assert.equal((await apiStatus()).routes[0].killed, false, 'a refused kill changes nothing');

  // Re-enter: the refused kill runs again with the new token.
  await page.click('#notice-token');
  await page.waitForSelector('#token-form:not([hidden])');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('cutover.adminToken')), null,
    'the refused token is forgotten');
  await page.fill('#token-input', TOKEN);
  await page.click('#token-form button[type="submit"]');
  await eventually('the kill', async () => assert.equal((await apiStatus()).routes[0].killed, true));
  await page.waitForSelector(route('checkout') + '.killed');
  assert.equal(await page.textContent(route('checkout') + ' .badge'), 'KILLED');
  assert.equal(await page.textContent(cell('checkout', 'legacy', 'split')), '50% → 100%');
  assert.equal(await page.textContent(cell('checkout', 'new', 'split')), '50% → 0%');
  const status = await apiStatus();
  const effective = Object.fromEntries(status.routes[0].backends.map((b) => [b.name, b.effective]));
  assert.deepEqual(effective, { legacy: 100, new: 0 });

  const seen = await sample(40);
  assert.deepEqual(seen, { legacy: 40 }, 'a killed route sends everything to legacy');

  // The token stays in this tab and travels only as a header.
  assert.equal(await page.evaluate(() => sessionStorage.getItem('cutover.adminToken')), TOKEN);
  assert.equal(await page.evaluate(() => document.cookie), '');
  for (const req of env.requests) assert.ok(!req.url.includes(TOKEN), req.url);
  const posts = env.requests.filter((r) => r.method === 'POST');
  assert.ok(posts.length >= 2);
  assert.ok(posts.some((r) => r.headers.authorization === 'Bearer ' + TOKEN));
  await page.screenshot({ path: path.join(SCREENSHOT_DIR, 'status-page.png'), fullPage: true });
});

test('resume sends traffic to new again', { timeout: 30000 }, async () => {
  const { page } = env;
  await page.click(route('checkout') + ' button[data-action="resume"]');
  await eventually('the resume', async () => assert.equal((await apiStatus()).routes[0].killed, false));
  await page.waitForSelector(route('checkout') + ':not(.killed)');
  assert.equal(await page.textContent(cell('checkout', 'new', 'split')), '50%');
  const seen = await sample(60);
  assert.ok(seen.new > 5 && seen.legacy > 5, JSON.stringify(seen));
});

test('a flag kill serves the default to everyone until resumed', { timeout: 30000 }, async () => {
  const { page } = env;
  const evaluate = async () => {
    const res = await request(env.flags, 'POST', '/ofrep/v1/evaluate/flags/new-checkout', {
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ context: { targetingKey: 'user-7' } }),
    });
    assert.equal(res.status, 200, res.body);
    return JSON.parse(res.body);
  };
  assert.equal((await evaluate()).reason, 'SPLIT');
  const flag = '[data-flag="new-checkout"]';
  await page.click(flag + ' button[data-action="kill"]');
  await eventually('the flag kill', async () => assert.equal((await apiStatus()).flags[0].killed, true));
  await page.waitForSelector(flag + '.killed');
  assert.match(await page.textContent(flag + ' .kill-line'), /everyone gets “off”/);
  const killed = await evaluate();
  assert.equal(killed.reason, 'DISABLED');
  assert.equal(killed.value, false);

  await page.click(flag + ' button[data-action="resume"]');
  await eventually('the flag resume', async () => assert.equal((await apiStatus()).flags[0].killed, false));
  await page.waitForSelector(flag + ':not(.killed)');
  assert.equal((await evaluate()).reason, 'SPLIT');
  // The page counts what the API counts (nothing else evaluates flags here).
  const total = (await apiStatus()).flags[0].evaluations;
  assert.ok(total >= 3, String(total));
  await page.waitForFunction(([sel, want]) => [...document.querySelectorAll(sel)]
    .reduce((sum, node) => sum + Number(node.textContent), 0) === want,
  [flag + ' .served', total]);
});

test('kill all asks first, then kills every route; resume all undoes it', { timeout: 30000 }, async () => {
  const { page } = env;
  await page.click('#kill-all');
  await page.waitForSelector('#confirm-form:not([hidden])');
  await new Promise((r) => setTimeout(r, 300));
  assert.ok((await apiStatus()).routes.every((r) => !r.killed), 'nothing is killed before confirming');
  await page.fill('#confirm-reason', 'drill');
  await page.click('#confirm-go');
  await eventually('kill all', async () => {
    const status = await apiStatus();
    assert.ok(status.routes.every((r) => r.killed && r.kill.reason === 'drill'));
  });
  const routes = (await apiStatus()).routes.length;
  await page.waitForFunction((n) => document.querySelectorAll('[data-route].killed').length === n,
    routes);
  assert.deepEqual(await sample(20), { legacy: 20 });

  await page.click('#resume-all');
  await page.click('#confirm-go');
  await eventually('resume all', async () =>
    assert.ok((await apiStatus()).routes.every((r) => !r.killed)));
  await page.waitForFunction(() => document.querySelectorAll('[data-route].killed').length === 0);
});

test('reload reports its outcome', { timeout: 30000 }, async () => {
  const { page } = env;
  await page.click('#reload');
  await page.waitForFunction(() => /Config (unchanged|reloaded)/.test(
    document.querySelector('#notice-text').textContent));
  const status = await apiStatus();
  assert.equal(await page.textContent('#generation'), String(status.generation));
});

test('a kill that cannot be saved is shown until the retry saves it', { timeout: 30000 }, async () => {
  const { page } = env;
  // A directory where the state file goes: the atomic rename over it fails, even as root.
  const statePath = path.join(env.dir, 'cutover-state.json');
  const saved = fs.readFileSync(statePath);
  fs.rmSync(statePath);
  fs.mkdirSync(statePath);
  try {
    const res = await admin('POST', '/api/routes/checkout/kill', JSON.stringify({ reason: 'disk test' }));
    assert.equal(res.status, 200, res.body);
    assert.equal(JSON.parse(res.body).persisted, false, res.body);
    await page.waitForSelector('#persist-banner:not([hidden])');
    const error = await page.textContent('#persist-error');
    assert.ok(error.includes('cutover-state.json'), error);
    assert.equal(await page.textContent('#persist-path'), statePath);
  } finally {
    fs.rmdirSync(statePath);
    fs.writeFileSync(statePath, saved);
  }
  // The retry writes the state (with the kill); then the resume is saved at once.
  await page.waitForSelector('#persist-banner', { state: 'hidden', timeout: 15000 });
  assert.ok(fs.readFileSync(statePath, 'utf8').includes('disk test'));
  const resumed = await admin('POST', '/api/routes/checkout/resume');
  assert.equal(JSON.parse(resumed.body).persisted, true, resumed.body);
});

test('a phone-sized viewport has no horizontal overflow', { timeout: 30000 }, async () => {
  const phone = await env.browser.newContext({
    viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true,
    colorScheme: 'dark', // the 3 a.m. look
  });
  phone.setDefaultTimeout(8000);
  const page = await phone.newPage();
  watch(page);
  try {
    await page.goto('http://' + env.admin + '/');
    await page.waitForSelector(cell('checkout', 'new', 'rps'));
    await page.waitForSelector('[data-flag="new-checkout"]');
    // Two samples draw a sparkline: lay out the page as it will look, then measure.
    await page.waitForFunction((sel) => (document.querySelector(sel).getAttribute('points') || '')
      .trim().split(/\s+/).length >= 2, `${route('checkout')} [data-backend="new"] .spark-line`);
    const overflow = await page.evaluate(() => {
      const width = document.documentElement.clientWidth;
      const wide = [];
      for (const node of document.querySelectorAll('body *')) {
        const box = node.getBoundingClientRect();
        if (box.width > 0 && (box.right > width + 1 || box.left < -1)) {
          wide.push(node.tagName + '.' + node.className + ' ' + Math.round(box.left) + '..' + Math.round(box.right));
        }
      }
      return { width, scroll: document.documentElement.scrollWidth, wide: wide.slice(0, 5) };
    });
    assert.equal(overflow.width, 390);
    assert.ok(overflow.scroll <= overflow.width, JSON.stringify(overflow));
    assert.deepEqual(overflow.wide, []);
    await page.screenshot({ path: path.join(SCREENSHOT_DIR, 'status-page-phone.png'), fullPage: true });
  } finally {
    await phone.close();
  }
});

test('no dialog, script error or CSP violation happened', () => {
  assert.deepEqual(env.dialogs, []);
  assert.deepEqual(env.consoleErrors, []);
  console.log('# screenshots: ' + ['status-page.png', 'status-page-incident.png', 'status-page-phone.png']
    .map((f) => path.join(SCREENSHOT_DIR, f)).join(' '));
});

test('when cutover stops answering, the page says its numbers are stale', { timeout: 20000 }, async () => {
  const exited = new Promise((resolve) => env.cutover.once('exit', resolve));
  env.cutover.kill('SIGTERM');
  await exited;
  await env.page.waitForSelector('#conn-banner:not([hidden])', { timeout: 10000 });
  assert.match(await env.page.textContent('#conn-banner'), /No answer from cutover since/);
  assert.ok(await env.page.evaluate(() => document.body.classList.contains('stale')));
});
