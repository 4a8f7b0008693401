#!/usr/bin/env python3
"""Client side of benches/memory.sh: drives connections at a proxy on 127.0.0.1 and reads the
proxy's memory from /proc between phases. Python 3.11 stdlib only.

  memory_client.py --port 18480 --pid 1234 --mode keepalive   # idle keep-alive, then churn
  memory_client.py --port 18480 --pid 1234 --mode partial     # partial request heads

Results go to stdout as `key value` lines (memory in KiB), progress to stderr.
"""

import argparse
import asyncio
import os
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
PARTIAL = b"GET / HTTP/1.1\r\nHost: a"
IO_TIMEOUT = 30.0  # any single connect / write / read


def log(msg):
    print(f"  [client {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def result(key, value):
    print(f"{key} {value}", flush=True)


# ------------------------------------------------------------------ /proc


def tree(pid):
    """pid and all its descendants (nginx/haproxy workers)."""
    out = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [p for c in f.read().split() for p in tree(int(c))]
    except OSError:
        pass
    return out


def status_kib(pid, field):
    """A /proc/PID/status field (VmRSS, VmHWM, ...) summed over the process tree, in KiB."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def open_fds(pid):
    n = 0
    for p in tree(pid):
        try:
            n += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return n


def reset_hwm(pid):
    """Resets VmHWM to the current RSS (clear_refs 5), so a later VmHWM is this phase's peak."""
    ok = True
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


def alive(pid):
    return os.path.exists(f"/proc/{pid}/status")


def sample(pid, key, label):
    rss = status_kib(pid, "VmRSS")
    fds = open_fds(pid)
    result(f"{key}_rss", rss)
    result(f"{key}_fds", fds)
    log(f"{label}: RSS {rss / 1024:.1f} MB, {fds} fds")
    return rss


# ------------------------------------------------------------------ HTTP/1.1


async def read_response(reader):
    """Reads one response with a Content-Length body; returns the status code."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
        elif name.strip().lower() == "transfer-encoding":
            raise ValueError("chunked answer: the backend should send a Content-Length")
    if length:
        await asyncio.wait_for(reader.readexactly(length), IO_TIMEOUT)
    return status


async def connect(port):
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), IO_TIMEOUT)


def close(writer):
    try:
        writer.close()
    except OSError:
        pass


class Errors:
    def __init__(self):
        self.n = 0
        self.first = None

    def add(self, err):
        self.n += 1
        if self.first is None:
            self.first = f"{type(err).__name__}: {err}"


async def one_request(port, errors, keep=None):
    """Connect, one GET, read the answer; keep the connection open in `keep` or close it."""
    try:
        reader, writer = await connect(port)
        writer.write(REQUEST)
        await asyncio.wait_for(writer.drain(), IO_TIMEOUT)
        status = await read_response(reader)
        if status != 200:
            raise ValueError(f"status {status}")
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as err:
        errors.add(err)
        return
    if keep is None:
        close(writer)
    else:
        keep.append((reader, writer))


async def limited(sem, coro):
    async with sem:
        return await coro


# ------------------------------------------------------------------ phases


async def warm_up(port, requests, conns):
    """`requests` requests over up to `conns` keep-alive connections at once, then closed.

    As many at once as the idle phase opens, so a proxy's pool of upstream connections (bounded,
    whatever the number of clients) is already at its size in the baseline and is not counted
    as a cost of each idle client connection."""
    conns = min(conns, requests)
    errors = Errors()

    async def worker(n):
        try:
            reader, writer = await connect(port)
            for _ in range(n):
                writer.write(REQUEST)
                await writer.drain()
                if await read_response(reader) != 200:
                    raise ValueError("not 200")
            close(writer)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as err:
            errors.add(err)

    share = [requests // conns + (i < requests % conns) for i in range(conns)]
    await asyncio.gather(*(worker(n) for n in share))
    if errors.n:
        raise SystemExit(f"warm-up failed on {errors.n} connections: {errors.first}")


async def open_idle(port, n, connect_concurrency):
    keep, errors = [], Errors()
    sem = asyncio.Semaphore(connect_concurrency)
    await asyncio.gather(*(limited(sem, one_request(port, errors, keep)) for _ in range(n)))
    return keep, errors


async def churn(args, pid):
    """args.churn connections in batches of args.batch at once: connect, GET, read, close."""
    errors, peak, done = Errors(), 0, 0
    started = time.monotonic()
    while done < args.churn:
        size = min(args.batch, args.churn - done)
        await asyncio.gather(*(one_request(args.port, errors) for _ in range(size)))
        done += size
        peak = max(peak, status_kib(pid, "VmRSS"))
    result("churn_errors", errors.n)
    result("churn_seconds", f"{time.monotonic() - started:.1f}")
    if errors.n:
        log(f"churn: {errors.n} of {args.churn} failed, first: {errors.first}")
    return peak


async def settle(pid, seconds, label):
    """Waits `seconds`, logging RSS every 10 s so a slow give-back shows."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        await asyncio.sleep(min(10.0, left))
        log(f"{label}: RSS {status_kib(pid, 'VmRSS') / 1024:.1f} MB, {open_fds(pid)} fds")


IDLE_SETTLE_SECONDS = 12


async def keepalive_mode(args):
    pid = args.pid
    await warm_up(args.port, args.warmup, args.connect_concurrency)
    await asyncio.sleep(2)
    baseline = sample(pid, "baseline", f"baseline after {args.warmup} requests")

    started = time.monotonic()
    keep, errors = await open_idle(args.port, args.conns, args.connect_concurrency)
    result("idle_open", len(keep))
    result("idle_errors", errors.n)
    log(f"{len(keep)} idle keep-alive connections in {time.monotonic() - started:.1f} s"
        + (f", {errors.n} failed, first: {errors.first}" if errors.n else ""))
    await asyncio.sleep(2)
    # The proxy may have dropped some meanwhile: count the ones still open.
    still = sum(1 for r, _ in keep if not r.at_eof())
    result("idle_still_open", still)
    idle = sample(pid, "idle", f"{still} idle connections")
    if still:
        result("idle_kib_per_conn", f"{(idle - baseline) / still:.2f}")
    # Memory the allocator holds after the burst of opening them (a proxy's per-request
    # buffers) is given back over seconds; what the idle connections themselves keep remains.
    await asyncio.sleep(IDLE_SETTLE_SECONDS)
    still = sum(1 for r, _ in keep if not r.at_eof())
    idle = sample(pid, "idle_settled", f"{still} idle connections, {IDLE_SETTLE_SECONDS} s later")
    if still:
        result("idle_settled_kib_per_conn", f"{(idle - baseline) / still:.2f}")
    for _, w in keep:
        close(w)
    keep.clear()
    await asyncio.sleep(2)
    sample(pid, "closed", "idle connections closed")

    reset_hwm(pid)
    log(f"churn: {args.churn} connections, {args.batch} at once")
    peak = await churn(args, pid)
    result("churn_peak_rss", peak)
    hwm = status_kib(pid, "VmHWM")
    result("churn_hwm", hwm)
    sample(pid, "churned", f"churn done (peak seen {peak / 1024:.1f} MB, HWM {hwm / 1024:.1f} MB)")
    await settle(pid, args.settle, "settling")
    after = sample(pid, "settled", f"{args.settle} s after churn")
    result("settled_ratio", f"{after / baseline:.2f}")


async def partial_mode(args):
    pid = args.pid
    await warm_up(args.port, args.warmup, args.connect_concurrency)
    await asyncio.sleep(2)
    baseline = sample(pid, "baseline", f"baseline after {args.warmup} requests")
    result("hwm_reset", int(reset_hwm(pid)))

    conns, errors = [], Errors()
    open_now, max_open = 0, 0
    sem = asyncio.Semaphore(args.connect_concurrency)

    async def partial_head():
        nonlocal open_now, max_open
        try:
            async with sem:
                reader, writer = await connect(args.port)
                writer.write(PARTIAL)
                await asyncio.wait_for(writer.drain(), IO_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as err:
            errors.add(err)
            return
        conns.append(writer)
        open_now += 1
        max_open = max(max_open, open_now)
        try:
            # The server ends it: a 408 and/or EOF, or a reset.
            await asyncio.wait_for(reader.read(), args.wait_close)
        except (OSError, asyncio.TimeoutError):
            pass
        open_now -= 1

    started = time.monotonic()
    tasks = [asyncio.create_task(partial_head()) for _ in range(args.conns)]
    while len(conns) + errors.n < args.conns and time.monotonic() - started < args.wait_close:
        await asyncio.sleep(0.05)
    log(f"{len(conns)} partial heads sent in {time.monotonic() - started:.1f} s, {open_now} open")
    result("partial_open_at_sample", open_now)
    sample(pid, "partial_sample", "all partial heads sent")
    await asyncio.gather(*tasks)
    log(f"all closed {time.monotonic() - started:.1f} s after the first connect")
    for w in conns:
        close(w)
    result("partial_errors", errors.n)
    if errors.n:
        log(f"partial: {errors.n} failed, first: {errors.first}")
    result("partial_max_open", max_open)
    hwm = status_kib(pid, "VmHWM")
    result("partial_hwm", hwm)
    log(f"partial heads: peak (VmHWM) {hwm / 1024:.1f} MB, at most {max_open} open at once")
    if max_open:
        result("partial_kib_per_conn", f"{(hwm - baseline) / max_open:.2f}")
    await settle(pid, args.settle, "settling")
    after = sample(pid, "partial_settled", f"{args.settle} s after the partial heads closed")
    result("partial_settled_ratio", f"{after / baseline:.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True, help="the proxy's pid (tree is summed)")
    p.add_argument("--mode", choices=["keepalive", "partial"], required=True)
    p.add_argument("--conns", type=int, default=5000, help="idle or partial connections")
    p.add_argument("--warmup", type=int, default=1000, help="requests before the baseline")
    p.add_argument("--churn", type=int, default=20000, help="connections in the churn")
    p.add_argument("--batch", type=int, default=2000, help="churn connections at once")
    p.add_argument("--settle", type=float, default=60, help="seconds before the last RSS")
    p.add_argument("--connect-concurrency", type=int, default=256)
    p.add_argument("--wait-close", type=float, default=60,
                   help="partial mode: longest wait for the server to close a partial head")
    args = p.parse_args()
    if not alive(args.pid):
        raise SystemExit(f"no process {args.pid}")
    run = keepalive_mode if args.mode == "keepalive" else partial_mode
    asyncio.run(run(args))
    if not alive(args.pid):
        raise SystemExit(f"process {args.pid} died during the run")


if __name__ == "__main__":
    main()
