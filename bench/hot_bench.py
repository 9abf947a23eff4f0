"""Hot-bucket benchmark (issue 14): one YAML-rule bucket offered a paced rate from two
zael-server processes, with token reservations on and off, and the Python library
zae-limiter 0.17.0 from two processes, on moto. Run through bench/hot-bench; see
bench/README.md ("Hot buckets, paced").

Workloads (HOT_WORKLOADS):

* `hot-<R>`: R decisions/s offered in total on one bucket whose allowance (10^9/s) is far
  above it: every decision should be admitted; the figure is DynamoDB writes per decision.
* `over-<R>`: R decisions/s offered on one bucket of HOT_OVER_LIMIT/s (capacity the same):
  admitted should equal the allowance (capacity + refill over the run) whatever the client.
* `cascade-<R>`: the cascade pair: R decisions/s offered on two children (`pair-1` through
  one server or library process, `pair-2` through the other) of one parent, stored limits
  (an entity rule; the library's plain `acquire`) of 10^9/s: every decision charges its child
  and the shared parent.

Each (client, workload) runs on a fresh table. Per run: two load processes (one per
server, or two library processes), each pacing R/2 with at most HOT_IN_FLIGHT calls in
flight; the moto launcher counts every request from after the warm-up until the servers
have stopped (so the give-back on SIGTERM is counted); the servers' own
`zael_decision_duration_seconds` histograms give server-side p50/p99 (bucket bounds).
"""

import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import dynamodb_bench as db  # noqa: E402  (sets the moto credentials)
from benchlib import Moto  # noqa: E402

SECONDS = float(os.environ.get("HOT_SECONDS", "30"))
IN_FLIGHT = int(os.environ.get("HOT_IN_FLIGHT", "512"))
OVER_LIMIT = int(os.environ.get("HOT_OVER_LIMIT", "20"))
WORKLOADS = os.environ.get("HOT_WORKLOADS", "hot-1000 hot-2000 hot-5000 over-1000 cascade-1000").split()
CLIENTS = os.environ.get("HOT_CLIENTS", "zael-2 zael-2-off python-2").split()
WRITE_PRICE, READ_PRICE = 0.625, 0.125  # $ per million WRU / RRU (README "Cost")
WRITES = {"UpdateItem", "PutItem", "TransactWriteItems", "BatchWriteItem", "DeleteItem"}

CONFIG = f"""
domain: {db.NAMESPACE}
descriptors:
  - key: warm
    rate_limit: {{unit: second, requests_per_unit: {db.HUGE}}}
  - key: hot
    rate_limit: {{unit: second, requests_per_unit: {db.HUGE}}}
  - key: over
    rate_limit: {{unit: second, requests_per_unit: {OVER_LIMIT}}}
  - key: cascade
    entity: {{resource: cascade, consume: {{rpm: 1}}}}
"""


def parse(workload):
    kind, rate = workload.split("-")
    return kind, int(rate)


def py_limits(kind):
    per_s = db.HUGE if kind == "hot" else OVER_LIMIT
    return [db.Limit(name="hits", capacity=per_s, refill_amount=per_s, refill_period_seconds=1)]


async def paced(decide, rate, seconds, start_at):
    """Calls `decide()` at `rate` per second from `start_at` for `seconds`, at most IN_FLIGHT
    at once (a client that falls behind sends as fast as it can, never in a burst, and stops
    sending at the end of the run)."""
    total = int(rate * seconds)
    slots = asyncio.Semaphore(IN_FLIGHT)
    stats = {"sent": 0, "admitted": 0, "errors": 0}
    latencies = []

    async def one():
        started = time.perf_counter()
        try:
            ok = await decide()
            stats["admitted"] += ok
            latencies.append(time.perf_counter() - started)
        except Exception:  # noqa: BLE001 - counted, the run goes on
            stats["errors"] += 1
        finally:
            slots.release()

    tasks = []
    deadline = start_at + seconds
    for i in range(total):
        due = start_at + i / rate
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        if time.time() > deadline:
            slots.release()
            break
        stats["sent"] += 1
        tasks.append(asyncio.ensure_future(one()))
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    stats["elapsed"] = time.time() - start_at
    stats["latencies"] = latencies
    return stats


def value_of(kind, n):
    """The descriptor value (the entity) load process `n` asks for."""
    return f"pair-{n + 1}" if kind == "cascade" else "bucket"


async def create_pair(endpoint, table):
    """The cascade pair's children, under the bench table's parent `proj` (resource defaults
    of 10^9/s on `cascade`: dynamodb_bench.create_table)."""
    repo = await db.Repository.open(db.NAMESPACE, stack=table, region=db.REGION, endpoint_url=endpoint)
    limiter = db.RateLimiter(repository=repo)
    for n in range(2):
        await limiter.create_entity(value_of("cascade", n), parent_id="proj", cascade=True)
    await limiter.close()


def rls_client(port, kind, n):
    """A channel to a server and a `decide()` asking it for load process `n`'s descriptor."""
    import grpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = db.rls_pb2_grpc.RateLimitServiceStub(channel)
    entry = db.ratelimit_pb2.RateLimitDescriptor.Entry(key=kind, value=value_of(kind, n))
    request = db.rls_pb2.RateLimitRequest(
        domain=db.NAMESPACE, descriptors=[db.ratelimit_pb2.RateLimitDescriptor(entries=[entry])]
    )

    async def decide():
        response = await stub.ShouldRateLimit(request, timeout=10)
        return response.overall_code == db.rls_pb2.RateLimitResponse.OK

    return channel, decide


async def load_zael(port, kind, rate, seconds, start_at, n=0):
    channel, decide = rls_client(port, kind, n)
    try:
        return await paced(decide, rate, seconds, start_at)
    finally:
        await channel.close()


async def python_client(endpoint, table, kind, n):
    """The library on the table, and a `decide()` for load process `n`'s bucket."""
    repo = await db.Repository.open(db.NAMESPACE, stack=table, region=db.REGION, endpoint_url=endpoint)
    limiter = db.RateLimiter(repository=repo)
    limits = py_limits(kind)

    async def decide():
        try:
            if kind == "cascade":
                async with limiter.acquire(value_of(kind, n), kind, {"rpm": 1}):
                    return True
            async with limiter.acquire("py-bucket", kind, {"hits": 1}, limits=limits):
                return True
        except db.RateLimitExceeded:
            return False

    return limiter, decide


async def load_python(endpoint, table, kind, rate, seconds, start_at, n=0):
    limiter, decide = await python_client(endpoint, table, kind, n)
    try:
        return await paced(decide, rate, seconds, start_at)
    finally:
        await limiter.close()


def load_process(args):
    """One load process (spawned): runs its paced share and returns its counts."""
    target, kind, rate, seconds, start_at, n = args
    if target[0] == "zael":
        return asyncio.run(load_zael(target[1], kind, rate, seconds, start_at, n))
    return asyncio.run(load_python(target[1], target[2], kind, rate, seconds, start_at, n))


def histogram(texts):
    """Server-side decision latency: the merged `zael_decision_duration_seconds` buckets of
    every server, as (p50, p99) bucket upper bounds in ms."""
    buckets = {}
    for text in texts:
        for line in text.splitlines():
            if line.startswith("zael_decision_duration_seconds_bucket"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                buckets[le] = buckets.get(le, 0) + float(line.rsplit(" ", 1)[1])
    ordered = sorted(((float("inf") if le == "+Inf" else float(le), n) for le, n in buckets.items()))
    if not ordered or ordered[-1][1] == 0:
        return None, None
    total = ordered[-1][1]
    pick = lambda q: next(le for le, n in ordered if n >= q * total) * 1000  # noqa: E731
    return pick(0.50), pick(0.99)


def quantiles(latencies):
    latencies = sorted(latencies)
    if not latencies:
        return float("nan"), float("nan")
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return pick(0.50), pick(0.99)


def warm_decisions(kind):
    """Warm-up decisions per load process: two seconds' allowance on the over-limit bucket."""
    return 2 * OVER_LIMIT if kind == "over" else 1


def warm_up(port, kind, decisions, n):
    """Decisions outside the measurement, one after another: the namespace's resolution and
    the bucket's creation; on the over-limit bucket, enough to drain it, so that the run
    starts from an empty bucket with a fresh `rf` (see "allowance" in bench/README.md).
    (Every one is sent: a run that starts on a bucket nobody created yet measures a storm of
    creates racing each other instead.)"""

    async def sequential():
        channel, decide = rls_client(port, kind, n)
        try:
            for _ in range(decisions):
                await decide()
        finally:
            await channel.close()

    try:
        asyncio.run(sequential())
    except Exception as e:  # noqa: BLE001 - the run cannot start
        raise SystemExit(f"[hot-bench] warm-up against 127.0.0.1:{port} failed: {e}") from e


async def warm_python(endpoint, table, kind, decisions, n):
    """The library's counterpart of [`warm_up`]."""
    limiter, decide = await python_client(endpoint, table, kind, n)
    try:
        for _ in range(decisions):
            await decide()
    finally:
        await limiter.close()


def run(name, workload, moto, binary, tmp, pool):
    kind, rate = parse(workload)
    table = asyncio.run(db.create_table(moto))
    if kind == "cascade":
        asyncio.run(create_pair(moto.endpoint, table))
    db.ZAEL_CONFIG = CONFIG
    servers = []
    try:
        if name.startswith("zael"):
            for n in range(2):
                sub = Path(tmp) / f"{name}-{workload}-{n}"
                sub.mkdir()
                servers.append(db.Zael(binary, moto, table, sub, "off" if name.endswith("-off") else "on"))
            for n, s in enumerate(servers):
                warm_up(s.grpc_port, kind, warm_decisions(kind), n)
            targets = [("zael", s.grpc_port) for s in servers]
        else:
            for n in range(2):
                asyncio.run(warm_python(moto.endpoint, table, kind, warm_decisions(kind), n))
            targets = [("python", moto.endpoint, table)] * 2
        moto.counts(reset=True)
        start_at = time.time() + 0.5
        db.log(f"{name}: {workload}: {rate}/s for {SECONDS:g} s")
        shares = pool.map(load_process, [(t, kind, rate / 2, SECONDS, start_at, n) for n, t in enumerate(targets)])
        texts = [s.metrics() for s in servers]
        for n, text in enumerate(texts):  # beside each server's log, for a look afterwards
            (Path(tmp) / f"{name}-{workload}-{n}" / "metrics.txt").write_text(text)
    finally:
        for s in servers:
            s.stop()
    counts = moto.counts()
    decisions = sum(s["sent"] - s["errors"] for s in shares)
    writes = sum(v for op, v in counts.items() if op in WRITES)
    reads = sum(v for op, v in counts.items() if op not in WRITES)
    client_p50, client_p99 = quantiles([x for s in shares for x in s["latencies"]])
    server_p50, server_p99 = histogram(texts)
    elapsed = max(s["elapsed"] for s in shares)
    allowance = OVER_LIMIT + int(OVER_LIMIT * elapsed) if kind == "over" else db.HUGE
    per = lambda v: v / decisions if decisions else float("nan")  # noqa: E731
    return {
        "offered_per_s": rate,
        "decisions": decisions,
        "decisions_per_s": decisions / elapsed,
        "admitted": sum(s["admitted"] for s in shares),
        "allowance": allowance,
        "errors": sum(s["errors"] for s in shares),
        "writes_per_decision": per(writes),
        "reads_per_decision": per(reads),
        "by_op": dict(sorted(counts.items())),
        "usd_per_million": per(writes) * WRITE_PRICE + per(reads) * READ_PRICE,
        "client_p50_ms": client_p50,
        "client_p99_ms": client_p99,
        "server_p50_ms": server_p50,
        "server_p99_ms": server_p99,
    }


def report(results):
    ms = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [
        "# Hot buckets, paced: zael-server x2 (reservations on / off) vs zae-limiter 0.17.0 x2 on moto",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}. {SECONDS:g} s per run, at most {IN_FLIGHT} "
        f"calls in flight per load process, over-limit bucket {OVER_LIMIT}/s. Requests counted by the moto "
        "launcher from after the warm-up until the servers stopped. Server p50/p99: upper bounds of the "
        "`zael_decision_duration_seconds` buckets. $: requests only, at $0.625/M writes and $0.125/M reads.",
        "",
        "| workload | client | offered/s | decisions/s | admitted / allowance | writes / decision | reads / decision "
        "| $ per million | server p50 / p99 ms | client p50 / p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for workload in WORKLOADS:
        for name in results:
            r = results[name].get(workload)
            if r is None:
                continue
            if "aborted" in r:
                lines.append(f"| {workload} | {name} | – | – | aborted: {r['aborted']} | | | | | | |")
                continue
            allowance = "10⁹/s" if r["allowance"] == db.HUGE else f"{r['allowance']:,}"
            lines.append(
                f"| {workload} | {name} | {r['offered_per_s']:,} | {r['decisions_per_s']:,.0f} | "
                f"{r['admitted']:,} / {allowance} | {r['writes_per_decision']:.4f} | {r['reads_per_decision']:.4f} | "
                f"{r['usd_per_million']:.4f} | {ms(r['server_p50_ms'])} / {ms(r['server_p99_ms'])} | "
                f"{r['client_p50_ms']:.2f} / {r['client_p99_ms']:.2f} | {r['errors']} |"
            )
    return "\n".join(lines) + "\n"


def main():
    tmp = tempfile.mkdtemp(prefix="hot-bench.")
    db.log(f"logs in {tmp}")
    binary = db.zael_binary() if any(c.startswith("zael") for c in CLIENTS) else None
    moto = Moto(tmp)
    try:
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            pool.map(quantiles, [[1.0], [1.0]])  # the load processes started and imported
            results = {}
            db.OUT.mkdir(exist_ok=True)
            for name in CLIENTS:
                for w in WORKLOADS:
                    try:
                        results.setdefault(name, {})[w] = run(name, w, moto, binary, tmp, pool)
                    except (TimeoutError, asyncio.TimeoutError) as e:
                        # Calls still open 60 s after the run (the library queueing on a
                        # contended bucket): reported as aborted, the other runs go on.
                        db.log(f"{name}: {w}: aborted: {e!r}")
                        results.setdefault(name, {})[w] = {"aborted": "calls still open 60 s after the run"}
                    # Kept as they come, so a failed run loses only itself.
                    (db.OUT / "hot-results.json").write_text(json.dumps(results, indent=2))
        text = report(results)
        (db.OUT / "hot-results.md").write_text(text)
        print(text)
    finally:
        moto.stop()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
