"""DynamoDB store benchmark: zael-server (--store dynamodb) vs the Python library
zae-limiter 0.17.0, on the same table in moto, on the same workloads.

Run through bench/dynamodb-bench (it picks the test virtualenv's python). See
bench/README.md. Everything binds to 127.0.0.1 and every wait is bounded.

Measured per workload, for each client:

* DynamoDB requests per decision, counted by the moto launcher (bench/moto_counting.py),
  so both clients are counted by the same neutral party; sequential requests;
* decisions per second and client-observed p50/p99 latency with BENCH_CONCURRENCY requests
  in flight for BENCH_SECONDS.

Workloads: `first` (every request a bucket never seen: the create path), `warm` (admitted
on a warm bucket: the fast path), `rejected` (an exhausted bucket), on YAML rules; and on
stored limits (zael's `entity:` rules, the library's plain `acquire`): `entity-warm` (an entity
without META on resource defaults), `entity-rejected` (one exhausted, 1 per hour),
`cascade-first` (children of one parent, each acquiring for the first time: calls only), `cascade-warm` (warm children charging their parent too),
`cascade-rejected` (a child whose parent is exhausted). Leases (zael's native API
`zael.limiter.v1`, the library's `async with acquire(...) as lease`), each decision a whole
lease on a warm entity: `lease` (acquire rpm 1 + tpm 100, adjust tpm -50, release),
`lease-rollback` (acquire, then roll back), `lease-idempotent` (as `lease`, the acquire with a
request id: zael only guards against a retried acquire; the library runs plain `lease`).
"""

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import warnings
from pathlib import Path

warnings.simplefilter("ignore")

import grpc  # noqa: E402
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2  # noqa: E402
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc  # noqa: E402
from zae_limiter import Limit, RateLimiter, RateLimitExceeded, Repository  # noqa: E402

from benchlib import Moto, free_port, wait_until  # noqa: E402

# moto accepts any credentials; never use real ones against it.
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_SESSION_TOKEN="testing",
    AWS_REGION="us-east-1",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
REGION = "us-east-1"
NAMESPACE = "bench"
HUGE = 1_000_000_000

CALLS_N = int(os.environ.get("BENCH_CALLS", "200"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "16"))
WORKLOADS = os.environ.get(
    "BENCH_WORKLOADS",
    "first warm hot rejected entity-warm entity-rejected cascade-first cascade-warm cascade-rejected "
    "lease lease-rollback lease-idempotent",
).split()
# Workloads measured for calls only: their buckets run out of fresh entities.
CALLS_ONLY = {"cascade-first"}
STORE_TIMEOUT = os.environ.get("BENCH_STORE_TIMEOUT", "30s")
CLIENTS = os.environ.get("BENCH_CLIENTS", "zael zael-off python").split()
OUT = BENCH / "out"

ZAEL_CONFIG = f"""
domain: {NAMESPACE}
descriptors:
  - key: first
    rate_limit: {{unit: second, requests_per_unit: {HUGE}}}
  - key: warm
    rate_limit: {{unit: second, requests_per_unit: {HUGE}}}
  - key: hot
    rate_limit: {{unit: second, requests_per_unit: {HUGE}}}
  - key: rejected
    rate_limit: {{unit: hour, requests_per_unit: 1}}
  - key: entity
    entity: {{resource: entity, consume: {{rpm: 1}}}}
  - key: cascade
    entity: {{resource: cascade, consume: {{rpm: 1}}}}
  - key: entity-rej
    entity: {{resource: entity-rej, consume: {{rpm: 1}}}}
"""


def stored(workload):
    """The rule key and resource of a workload on stored limits, else None."""
    if workload.startswith("lease"):
        return "lease"
    if workload == "entity-rejected":
        return "entity-rej"
    if workload.startswith("entity"):
        return "entity"
    if workload.startswith("cascade"):
        return "cascade"
    return None

# The same limits for the library, as `acquire(limits=...)` overrides (what zael's YAML
# buckets are in the table).
PY_LIMITS = {
    "first": [Limit(name="hits", capacity=HUGE, refill_amount=HUGE, refill_period_seconds=1)],
    "warm": [Limit(name="hits", capacity=HUGE, refill_amount=HUGE, refill_period_seconds=1)],
    "hot": [Limit(name="hits", capacity=HUGE, refill_amount=HUGE, refill_period_seconds=1)],
    "rejected": [Limit(name="hits", capacity=1, refill_amount=1, refill_period_seconds=3600)],
}


class Rollback(Exception):
    """Fails a library lease on purpose (`lease-rollback`)."""


def native_stubs(tmp):
    """The native API's Python stubs, generated from proto/ with grpc_tools (test venv)."""
    out = Path(tmp) / "stubs"
    out.mkdir(exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO / "proto"), f"--python_out={out}",
         f"--grpc_python_out={out}", str(REPO / "proto/zael/limiter/v1/limiter.proto")],
        check=True,
    )
    sys.path.insert(0, str(out))
    from zael.limiter.v1 import limiter_pb2, limiter_pb2_grpc

    return limiter_pb2, limiter_pb2_grpc


def log(msg):
    print(f"[dynamodb-bench] {msg}", file=sys.stderr, flush=True)


class Zael:
    """zael-server on the table, and an RLS client."""

    def __init__(self, binary, moto, table, tmp, reservations="on"):
        self.grpc_port, self.http_port = free_port(), free_port()
        config = Path(tmp) / "bench.yaml"
        config.write_text(ZAEL_CONFIG)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZAEL_")}
        env.update(
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_SESSION_TOKEN="testing",
            AWS_REGION=REGION,
            AWS_EC2_METADATA_DISABLED="true",
            ZAEL_LOG_LEVEL="warn",
        )
        self.log = open(Path(tmp) / "zael.log", "w")
        self.proc = subprocess.Popen(
            [
                str(binary),
                "--config", str(config),
                "--listen", f"127.0.0.1:{self.grpc_port}",
                "--http-listen", f"127.0.0.1:{self.http_port}",
                "--store", "dynamodb",
                "--table", table,
                "--endpoint-url", moto.endpoint,
                "--region", REGION,
                "--store-timeout", STORE_TIMEOUT,
                "--lease-key", "dynamodb-bench-lease-key",
                "--reservations", reservations,
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

        def healthy():
            if self.proc.poll() is not None:
                raise SystemExit(f"[dynamodb-bench] zael-server exited: see {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthcheck", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(healthy, 30, "zael-server")
        self.channel = None

    async def open(self):
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        self.stub = rls_pb2_grpc.RateLimitServiceStub(self.channel)
        if NATIVE:
            self.limiter = NATIVE[1].LimiterStub(self.channel)

    async def lease(self, workload, value):
        pb = NATIVE[0]
        request = pb.AcquireRequest(namespace=NAMESPACE, entity_id=value, resource="lease", consume={"rpm": 1, "tpm": 100})
        if workload == "lease-idempotent":
            request.request_id = uuid.uuid4().hex
        try:
            acquired = await self.limiter.Acquire(request, timeout=60)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return False
            raise
        if workload == "lease-rollback":
            await self.limiter.Rollback(pb.RollbackRequest(lease_id=acquired.lease_id), timeout=60)
        else:
            adjusted = await self.limiter.Adjust(pb.AdjustRequest(lease_id=acquired.lease_id, deltas={"tpm": -50}), timeout=60)
            await self.limiter.Release(pb.ReleaseRequest(lease_id=adjusted.lease_id), timeout=60)
        return True

    async def decide(self, workload, value):
        if workload.startswith("lease"):
            return await self.lease(workload, value)
        descriptor = ratelimit_pb2.RateLimitDescriptor(
            entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=stored(workload) or workload, value=value)]
        )
        request = rls_pb2.RateLimitRequest(domain=NAMESPACE, descriptors=[descriptor])
        response = await self.stub.ShouldRateLimit(request, timeout=10)
        return response.overall_code == rls_pb2.RateLimitResponse.OK

    async def close(self):
        await self.channel.close()

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Python:
    """The library's RateLimiter on the same table and namespace."""

    def __init__(self, moto, table):
        self.moto, self.table = moto, table

    async def open(self):
        repo = await Repository.open(NAMESPACE, stack=self.table, region=REGION, endpoint_url=self.moto.endpoint)
        self.limiter = RateLimiter(repository=repo)

    async def decide(self, workload, value):
        if workload.startswith("lease"):
            try:
                async with self.limiter.acquire(value, "lease", {"rpm": 1, "tpm": 100}) as lease:
                    if workload == "lease-rollback":
                        raise Rollback()
                    await lease.adjust(tpm=-50)
            except Rollback:
                pass
            except RateLimitExceeded:
                return False
            return True
        try:
            resource = stored(workload)
            if resource:
                acquire = self.limiter.acquire(value, resource, {"rpm": 1})
            else:
                acquire = self.limiter.acquire(f"py-{value}", workload, {"hits": 1}, limits=PY_LIMITS[workload])
            async with acquire:
                return True
        except RateLimitExceeded:
            return False

    async def close(self):
        await self.limiter.close()


TABLES = iter(range(1, 1_000_000))


async def create_table(moto):
    """A fresh table made by the library, with the namespace registered and the stored limits
    of the entity workloads (resource defaults; `proj-rej` exhausted after one request)."""
    table = f"bench{int(time.time())}x{next(TABLES)}"
    repo = Repository(name=table, region=REGION, endpoint_url=moto.endpoint, _skip_deprecation_warning=True)
    await repo.create_table()
    await repo.close()
    opened = await Repository.open(NAMESPACE, stack=table, region=REGION, endpoint_url=moto.endpoint)
    limiter = RateLimiter(repository=opened)
    huge = [Limit(name="rpm", capacity=HUGE, refill_amount=HUGE, refill_period_seconds=1)]
    await limiter.set_resource_defaults("entity", huge)
    await limiter.set_resource_defaults("cascade", huge)
    await limiter.set_resource_defaults(
        "lease", huge + [Limit(name="tpm", capacity=HUGE, refill_amount=HUGE, refill_period_seconds=1)]
    )
    await limiter.set_resource_defaults(
        "entity-rej", [Limit(name="rpm", capacity=1, refill_amount=1, refill_period_seconds=3600)]
    )
    await limiter.create_entity("proj")
    await limiter.create_entity("proj-rej")
    one = [Limit(name="rpm", capacity=1, refill_amount=1, refill_period_seconds=3600)]
    await limiter.set_limits("proj-rej", one, resource="cascade")
    await limiter.close()
    return table


async def create_entities(moto, table, values, workload):
    """The children a cascade workload acquires for (META with `cascade`), before measuring."""
    if not workload.startswith("cascade"):
        return
    repo = await Repository.open(NAMESPACE, stack=table, region=REGION, endpoint_url=moto.endpoint)
    limiter = RateLimiter(repository=repo)
    if workload == "cascade-first":
        ids = [f"{values.prefix}-new-{n}" for n in range(1, CALLS_N + 1)]
        parent = "proj"
    elif workload == "cascade-warm":
        ids = [values.next(workload, w) for w in range(CONCURRENCY)]
        parent = "proj"
    else:
        ids = [values.next(workload)]
        parent = "proj-rej"
    for entity in ids:
        await limiter.create_entity(entity, parent_id=parent, cascade=True)
    await limiter.close()


class Values:
    """Bucket values per workload: `first` never repeats one."""

    def __init__(self, prefix):
        self.prefix, self.n = prefix, 0

    def next(self, workload, worker=0):
        if workload.startswith("lease"):
            return f"{self.prefix}-lease-{worker}"
        if workload.endswith("first"):
            self.n += 1
            return f"{self.prefix}-new-{self.n}"
        if workload.endswith("warm"):
            return f"{self.prefix}-warm-{worker}"
        if workload == "hot":
            return f"{self.prefix}-hot"
        return f"{self.prefix}-exhausted"


async def prepare(client, values, workload, workers):
    """Warm buckets / exhaust the rejected one, outside the measurement."""
    if workload.endswith("warm") or workload.startswith("lease") or workload == "hot":
        for w in range(workers):
            await client.decide(workload, values.next(workload, w))
    elif workload.endswith("rejected"):
        await client.decide(workload, values.next(workload))


async def calls_per_decision(client, moto, values, workload):
    await prepare(client, values, workload, 1)
    moto.counts(reset=True)
    admitted = 0
    for _ in range(CALLS_N):
        ok = await client.decide(workload, values.next(workload))
        admitted += ok
    counts = moto.counts()
    total = sum(counts.values())
    return {"calls": total / CALLS_N, "by_op": {k: v / CALLS_N for k, v in sorted(counts.items())}, "admitted": admitted}


async def throughput(client, values, workload):
    await prepare(client, values, workload, CONCURRENCY)
    latencies, errors, admitted = [], 0, 0
    deadline = time.monotonic() + SECONDS

    async def worker(w):
        nonlocal errors, admitted
        while time.monotonic() < deadline:
            value = values.next(workload, w)
            started = time.perf_counter()
            try:
                # Await first: `admitted += await ...` would read `admitted` before the await.
                ok = await client.decide(workload, value)
                admitted += ok
                latencies.append(time.perf_counter() - started)
            except Exception:  # noqa: BLE001 - counted, the run goes on
                errors += 1

    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(worker(w) for w in range(CONCURRENCY))), SECONDS + 60)
    elapsed = time.monotonic() - started
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")  # noqa: E731
    return {
        "decisions_per_s": len(latencies) / elapsed,
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "errors": errors,
        "run_admitted": admitted,
        "run_decisions": len(latencies),
    }


async def run_workload(name, client, moto, table, workload):
    values = Values(f"{name}{int(time.time())}")
    await create_entities(moto, table, values, workload)
    await client.open()
    # The first call of a process resolves the namespace (and, for both, its system
    # config): keep it out of the measurements.
    await client.decide("warm", "process-warm-up")
    if stored(workload):
        # ... and the stored limits' shared config levels (system, resource).
        await client.decide(workload, "process-warm-up")
    log(f"{name}: {workload}: calls per decision ({CALLS_N} sequential requests)")
    calls = await calls_per_decision(client, moto, values, workload)
    if workload in CALLS_ONLY:
        await client.close()
        return calls
    log(f"{name}: {workload}: throughput ({CONCURRENCY} in flight, {SECONDS:g} s)")
    result = {**calls, **await throughput(client, values, workload)}
    await client.close()
    return result


async def run_client(name, moto, binary, tmp):
    """Each workload on a fresh table: moto's TransactWriteItems deep-copies the whole table
    (O(items)), so a table that grew in one workload would slow the creates of the next."""
    results = {}
    for workload in WORKLOADS:
        table = await create_table(moto)
        if name.startswith("zael"):
            zael = Zael(binary, moto, table, tmp, "off" if name == "zael-off" else "on")
            try:
                results[workload] = await run_workload(name, zael, moto, table, workload)
                (Path(tmp) / f"{name}-metrics-{workload}.txt").write_text(zael.metrics())
            finally:
                zael.stop()
        else:
            results[workload] = await run_workload(name, Python(moto, table), moto, table, workload)
    return results


def zael_binary():
    explicit = os.environ.get("ZAEL_BIN")
    path = Path(explicit) if explicit else REPO / "target" / "release" / "zael-server"
    if not path.is_file():
        if explicit:
            raise SystemExit(f"[dynamodb-bench] ZAEL_BIN={explicit} does not exist")
        log("building zael-server (cargo build --release --workspace)")
        subprocess.run(["cargo", "build", "--release", "--workspace"], cwd=REPO, check=True)
    return path


def report(results):
    lines = [
        "# DynamoDB store: zael-server vs zae-limiter 0.17.0 (Python) on moto",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}. moto serialises requests (one lock) and "
        "deep-copies the table on every TransactWriteItems, so decisions/s is bounded by moto (and `first` "
        "slows down as its table grows), not by DynamoDB; calls/decision is what carries over to AWS. "
        "Each (client, workload) runs on a fresh table.",
        f"Calls: {CALLS_N} sequential requests per workload, counted by the moto launcher. "
        f"Throughput: {CONCURRENCY} in flight for {SECONDS:g} s.",
        "",
        "| workload | client | DynamoDB calls / decision | by operation | admitted | decisions/s | admitted in run | p50 ms | p99 ms | errors |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for workload in WORKLOADS:
        for name in results:
            r = results[name][workload]
            ops = ", ".join(f"{op} {v:.2f}" for op, v in r["by_op"].items()) or "-"
            if "decisions_per_s" in r:
                run = (
                    f"{r['decisions_per_s']:.0f} | {r['run_admitted']}/{r['run_decisions']} | "
                    f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']}"
                )
            else:
                run = "- | - | - | - | -"
            lines.append(f"| {workload} | {name} | {r['calls']:.2f} | {ops} | {r['admitted']}/{CALLS_N} | {run} |")
    return "\n".join(lines) + "\n"


NATIVE = None


async def main():
    global NATIVE
    tmp = tempfile.mkdtemp(prefix="dynamodb-bench.")
    log(f"logs in {tmp}")
    if any(w.startswith("lease") for w in WORKLOADS):
        NATIVE = native_stubs(tmp)
    binary = zael_binary() if any(c.startswith("zael") for c in CLIENTS) else None
    moto = Moto(tmp)
    try:
        results = {}
        for name in CLIENTS:
            results[name] = await run_client(name, moto, binary, tmp)
        text = report(results)
        OUT.mkdir(exist_ok=True)
        (OUT / "dynamodb-results.md").write_text(text)
        (OUT / "dynamodb-results.json").write_text(json.dumps(results, indent=2))
        print(text)
    finally:
        moto.stop()


if __name__ == "__main__":
    asyncio.run(main())
