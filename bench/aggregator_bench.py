"""DynamoDB Streams aggregator benchmark: zael-aggregator (`--poll`) vs the Python reference
aggregator of zae-limiter 0.17.0 (`zae_limiter_aggregator.processor.process_stream_records`),
on the same stream records, in moto. See bench/README.md ("Aggregator").

Run with the test virtualenv's python (bench/aggregator-bench does). Everything binds to
127.0.0.1 and every wait is bounded.

Per repeat, on fresh tables (zae-limiter's table definition, stream NEW_AND_OLD_IMAGES):

1. traffic: BENCH_BUCKETS bucket items in SRC, each one INSERT (a first acquire, its
   consumption in `tc`) and then MODIFYs (later acquires: `SET rf, tk`, `ADD tc`), round-robin
   across buckets, BENCH_RECORDS stream records in all. Fixed timestamps (2026-01-05, some
   buckets crossing 11:00Z), so the snapshot keys and refill decisions do not depend on when
   the benchmark runs. The bucket kinds (by bucket index mod 10):
     0-4 `plain`  one limit rpm 100/min, 1 per request
     5-7 `llm`    rpm 60/min + tpm 100,000/min (100..2000 tokens a request) + wcu
     8   `soft`   rpm + a soft tpm 5,000/min, 800 a request, driven into debt (overdrawn)
     9   `hot`    rps 5/s, 1 per request every 200 ms: the batch's demand (9) exceeds the
                  capacity, so both aggregators write a refill
   and every 5th bucket (index mod 5 == 2) has half its records before 11:00Z, half after.
2. TARGET: a second table holding a copy of SRC's items, so the Python aggregator's refill
   writes meet the same items (it is told TARGET, zael-aggregator writes back into SRC).
3. The stream is read once with boto3 (for the Python aggregator, as a Lambda event's records).
4. zael-aggregator: `--poll --until-idle --batch-size N --max-batches 1 --table SRC`, one
   batch; the time is its `Batch processing completed` log line's `processing_time_ms` (the
   batch, as in the Lambda) and the process's wall time (start, SDK config, DescribeTable,
   DescribeStream, GetShardIterator, GetRecords, the batch, exit).
   Python: `process_stream_records(records, table_name=TARGET, windows=["hourly","daily"])`
   in this process, after one warm-up call on no records (boto3's models loaded, as in a warm
   Lambda), timed with perf_counter.
   Requests are counted by the moto launcher (bench/moto_counting.py) between a reset just
   before and a read just after; zael's stream reads (DescribeTable, DescribeStream,
   GetShardIterator, GetRecords) are reported apart, not as the batch's requests.
   CPU: zael's whole process (getrusage of the child), Python's call (process_time), and
   moto's over the same span (/proc/PID/stat; for zael including its stream reads).
5. A consistency check: both wrote the same set of usage-snapshot items and the same number
   of refills.

The two runs of a repeat alternate which goes first. Medians over BENCH_REPEATS.

Environment: ZAEL_AGGREGATOR_BIN (default target/release/zael-aggregator; built with
`cargo build --release -p zael-aggregator` if missing), BENCH_RECORDS (1000), BENCH_BUCKETS
(100), BENCH_REPEATS (3), BENCH_BATCH (BENCH_RECORDS; zael's --batch-size, at most 1000,
GetRecords' limit; the Python side gets the same first BENCH_BATCH records).
"""

import contextlib
import datetime
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# moto accepts any credentials; never use real ones against it.
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_SESSION_TOKEN="testing",
    AWS_REGION="us-east-1",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
)

import boto3  # noqa: E402
from benchlib import Moto  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "aggregator" / "tests" / "py"))
from reference import stream_records  # noqa: E402  (the same stream read as the oracle tests)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
REGION = "us-east-1"
OUT = BENCH / "out"
NS = "bench"
WINDOWS = ["hourly", "daily"]

RECORDS = int(os.environ.get("BENCH_RECORDS", "1000"))
BUCKETS = int(os.environ.get("BENCH_BUCKETS", "100"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
BATCH = int(os.environ.get("BENCH_BATCH", str(RECORDS)))

HOUR_11 = 1767610800000  # 2026-01-05T11:00:00Z
STREAM_READS = ("DescribeTable", "DescribeStream", "GetShardIterator", "GetRecords")
WRITES = ("UpdateItem", "PutItem", "TransactWriteItems", "BatchWriteItem", "DeleteItem")


def log(msg):
    print(f"[aggregator-bench] {msg}", file=sys.stderr, flush=True)


# --- tables -----------------------------------------------------------------------------


def create_table(client, name):
    """zae-limiter 0.17.0's table, as table/src/admin.rs::create_table makes it."""
    attrs = ["PK", "SK"] + [f"GSI{n}{k}" for n in range(1, 5) for k in ("PK", "SK")] + [f"LSI{n}SK" for n in range(1, 6)]
    key = lambda h, r: [{"AttributeName": h, "KeyType": "HASH"}, {"AttributeName": r, "KeyType": "RANGE"}]  # noqa: E731
    client.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in attrs],
        KeySchema=key("PK", "SK"),
        GlobalSecondaryIndexes=[
            {
                "IndexName": f"GSI{n}",
                "KeySchema": key(f"GSI{n}PK", f"GSI{n}SK"),
                "Projection": {"ProjectionType": "ALL" if n <= 2 else "KEYS_ONLY"},
            }
            for n in range(1, 5)
        ],
        LocalSecondaryIndexes=[
            {
                "IndexName": f"LSI{n}",
                "KeySchema": key("PK", f"LSI{n}SK"),
                "Projection": {"ProjectionType": "ALL" if n % 2 == 1 else "KEYS_ONLY"},
            }
            for n in range(1, 6)
        ],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 300})


# --- traffic ----------------------------------------------------------------------------


KINDS = ["plain"] * 5 + ["llm"] * 3 + ["soft", "hot"]

# (cp, ra, rp) in millitokens / ms, per limit, per kind; and the consumption of one request.
LIMITS = {
    "plain": {"rpm": (100_000, 100_000, 60_000)},
    "llm": {"rpm": (60_000, 60_000, 60_000), "tpm": (100_000_000, 100_000_000, 60_000), "wcu": (1_000_000, 1_000_000, 1000)},
    "soft": {"rpm": (60_000, 60_000, 60_000), "tpm": (5_000_000, 5_000_000, 60_000)},
    "hot": {"rps": (5000, 5000, 1000)},
}
RESOURCE = {"plain": "api", "llm": "gpt-4", "soft": "gpt-4", "hot": "api"}
SPACING_MS = {"plain": 3000, "llm": 1500, "soft": 2000, "hot": 200}


class Bucket:
    def __init__(self, i, steps, rng):
        self.kind = KINDS[i % len(KINDS)]
        self.entity = f"e-{i:04d}"
        self.resource = RESOURCE[self.kind]
        self.limits = LIMITS[self.kind]
        self.rng = rng
        spacing = SPACING_MS[self.kind]
        if i % 5 == 2:  # half the records before 11:00Z, half after
            start = HOUR_11 - (steps // 2) * spacing + spacing // 2
        else:
            start = HOUR_11 - 30 * 60_000 + i * 7000
        self.rf = [start + s * spacing for s in range(steps)]
        self.tk = {name: cp for name, (cp, _, _) in self.limits.items()}
        self.tc = {name: 0 for name in self.limits}

    @property
    def pk(self):
        return f"{NS}/BUCKET#{self.entity}#{self.resource}#0"

    def consumption(self):
        c = {}
        for name in self.limits:
            if name == "tpm":
                c[name] = (800 if self.kind == "soft" else self.rng.randint(100, 2000)) * 1000
            else:
                c[name] = 1000
        return c

    def step(self, s):
        """Applies request `s` (refill since the last rf, then consumption); returns the
        consumption per limit."""
        used = self.consumption()
        for name, (cp, ra, rp) in self.limits.items():
            if s > 0:
                elapsed = self.rf[s] - self.rf[s - 1]
                self.tk[name] = min(cp, self.tk[name] + elapsed * ra // rp)
            self.tk[name] -= used[name]
            self.tc[name] += used[name]
        return used

    def item(self):
        e, r = self.entity, self.resource
        item = {
            "PK": self.pk,
            "SK": "#STATE",
            "entity_id": e,
            "rf": self.rf[0],
            "GSI2PK": f"{NS}/RESOURCE#{r}",
            "GSI2SK": f"BUCKET#{e}#0",
            "GSI3PK": f"{NS}/ENTITY#{e}",
            "GSI3SK": f"BUCKET#{r}#0",
            "GSI4PK": NS,
            "GSI4SK": f"BUCKET#{e}#{r}#0",
        }
        for name, (cp, ra, rp) in self.limits.items():
            item.update({f"b_{name}_tk": self.tk[name], f"b_{name}_cp": cp, f"b_{name}_ra": ra,
                         f"b_{name}_rp": rp, f"b_{name}_tc": self.tc[name]})
        if self.kind == "soft":
            item["b_tpm_soft"] = HOUR_11 + 10 * 3_600_000
        return item


def traffic(table_name):
    """Writes the stream; returns the buckets."""
    table = boto3.resource("dynamodb").Table(table_name)
    if RECORDS % BUCKETS:
        raise SystemExit("[aggregator-bench] BENCH_RECORDS must be a multiple of BENCH_BUCKETS")
    steps = RECORDS // BUCKETS
    rng = random.Random(20261130)
    buckets = [Bucket(i, steps, rng) for i in range(BUCKETS)]
    for s in range(steps):
        for b in buckets:
            used = b.step(s)
            if s == 0:
                table.put_item(Item=b.item())
                continue
            names, values, sets, adds = {}, {":rf": b.rf[s]}, ["rf = :rf"], []
            for k, name in enumerate(b.limits):
                names[f"#k{k}"], names[f"#c{k}"] = f"b_{name}_tk", f"b_{name}_tc"
                values[f":k{k}"], values[f":c{k}"] = b.tk[name], used[name]
                sets.append(f"#k{k} = :k{k}")
                adds.append(f"#c{k} :c{k}")
            table.update_item(
                Key={"PK": b.pk, "SK": "#STATE"},
                UpdateExpression=f"SET {', '.join(sets)} ADD {', '.join(adds)}",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
    return buckets


def copy_items(src, dst):
    client = boto3.client("dynamodb")
    items = client.scan(TableName=src)["Items"]
    for item in items:
        client.put_item(TableName=dst, Item=item)
    return len(items)


def usage_keys(table_name):
    client = boto3.client("dynamodb")
    keys, start = set(), None
    while True:
        kwargs = {"TableName": table_name, "ProjectionExpression": "PK, SK"}
        if start:
            kwargs["ExclusiveStartKey"] = start
        page = client.scan(**kwargs)
        keys |= {(i["PK"]["S"], i["SK"]["S"]) for i in page["Items"] if i["SK"]["S"].startswith("#USAGE#")}
        start = page.get("LastEvaluatedKey")
        if not start:
            return keys


# --- the two aggregators ------------------------------------------------------------------


def split(counts):
    reads = {k: v for k, v in counts.items() if k in STREAM_READS}
    batch = {k: v for k, v in counts.items() if k not in STREAM_READS}
    return reads, batch


def run_zael(binary, moto, src, tmp, rep):
    env = dict(os.environ, AWS_REGION=REGION, RUST_LOG="info")
    env.pop("AWS_ENDPOINT_URL", None)
    logfile = Path(tmp) / f"zael-{rep}.log"
    moto.counts(reset=True)
    moto_cpu = moto.cpu_s()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with open(logfile, "w") as out:
        proc = subprocess.run(
            [str(binary), "--poll", "--until-idle", "--batch-size", str(BATCH), "--max-batches", "1",
             "--interval-ms", "50", "--table", src, "--endpoint-url", moto.endpoint, "--region", REGION],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=600,
        )
    wall = time.perf_counter() - started
    counts = moto.counts()
    moto_cpu = moto.cpu_s() - moto_cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"[aggregator-bench] zael-aggregator failed: see {logfile}")
    lines = [json.loads(line) for line in logfile.read_text().splitlines() if line.startswith("{")]
    done = [l for l in lines if l.get("message") == "Batch processing completed"]
    finished = [l for l in lines if l.get("message") == "Polling finished"]
    if len(done) != 1 or not finished or finished[0]["records"] != BATCH:
        raise SystemExit(f"[aggregator-bench] expected one batch of {BATCH} records: see {logfile}")
    reads, batch = split(counts)
    stamp = lambda message: next(  # noqa: E731
        datetime.datetime.fromisoformat(l["timestamp"]) for l in lines if l.get("message") == message
    )
    read = stamp("Batch processing started") - stamp("Polling the table's stream")
    return {
        "records": finished[0]["records"],
        "batch_ms": done[0]["processing_time_ms"],
        "wall_ms": wall * 1000,
        "stream_read_ms": read.total_seconds() * 1000,
        "cpu_ms": cpu * 1000,
        "cpu_what": "process",
        "moto_cpu_ms": moto_cpu * 1000,  # with the stream reads
        "snapshots_updated": done[0]["snapshots_updated"],
        "refills_written": done[0]["refills_written"],
        "errors": done[0]["error_count"],
        "stream_reads": reads,
        "requests": batch,
    }


def run_python(moto, target, records, tmp, rep):
    from zae_limiter_aggregator.processor import process_stream_records

    os.environ["AWS_ENDPOINT_URL"] = moto.endpoint
    logfile = Path(tmp) / f"python-{rep}.log"
    with open(logfile, "w") as out, contextlib.redirect_stdout(out):
        process_stream_records([], table_name=target, windows=WINDOWS, ttl_days=90)  # warm-up: no requests
        moto.counts(reset=True)
        moto_cpu = moto.cpu_s()
        started, cpu = time.perf_counter(), time.process_time()
        result = process_stream_records(records, table_name=target, windows=WINDOWS, ttl_days=90)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        counts = moto.counts()
        moto_cpu = moto.cpu_s() - moto_cpu
    del os.environ["AWS_ENDPOINT_URL"]
    reads, batch = split(counts)
    return {
        "records": result.processed_count,
        "batch_ms": elapsed * 1000,
        "wall_ms": None,
        "stream_read_ms": None,
        "cpu_ms": cpu * 1000,
        "cpu_what": "call",
        "moto_cpu_ms": moto_cpu * 1000,
        "snapshots_updated": result.snapshots_updated,
        "refills_written": result.refills_written,
        "errors": len(result.errors),
        "stream_reads": reads,
        "requests": batch,
    }


def binary_path():
    explicit = os.environ.get("ZAEL_AGGREGATOR_BIN")
    path = Path(explicit) if explicit else REPO / "target" / "release" / "zael-aggregator"
    if not path.is_file():
        if explicit:
            raise SystemExit(f"[aggregator-bench] ZAEL_AGGREGATOR_BIN={explicit} does not exist")
        log("building zael-aggregator (cargo build --release -p zael-aggregator)")
        subprocess.run(["cargo", "build", "--release", "-p", "zael-aggregator"], cwd=REPO, check=True)
    return path


TABLES = iter(range(1, 1_000_000))


def one_repeat(binary, moto, tmp, rep):
    client = boto3.client("dynamodb", endpoint_url=moto.endpoint)
    stamp = f"{int(time.time())}x{next(TABLES)}"
    src, target = f"aggsrc{stamp}", f"aggdst{stamp}"
    create_table(client, src)
    create_table(client, target)
    os.environ["AWS_ENDPOINT_URL"] = moto.endpoint
    try:
        t = time.perf_counter()
        buckets = traffic(src)
        log(f"repeat {rep}: {RECORDS} records written to {src} in {time.perf_counter() - t:.1f} s")
        copied = copy_items(src, target)
        records = stream_records(src)
        if copied != BUCKETS or len(records) != RECORDS:
            raise SystemExit(f"[aggregator-bench] {copied} items copied, {len(records)} stream records")
        if len(records) < BATCH:
            raise SystemExit(f"[aggregator-bench] the stream holds {len(records)} records, fewer than {BATCH}")
        records = records[:BATCH]
    finally:
        del os.environ["AWS_ENDPOINT_URL"]
    results = {}
    order = ["zael", "python"] if rep % 2 == 0 else ["python", "zael"]
    for name in order:
        log(f"repeat {rep}: {name}")
        if name == "zael":
            results[name] = run_zael(binary, moto, src, tmp, rep)
        else:
            results[name] = run_python(moto, target, records, tmp, rep)
    os.environ["AWS_ENDPOINT_URL"] = moto.endpoint
    try:
        ours, theirs = usage_keys(src), usage_keys(target)
        results["check"] = {
            "buckets": len(buckets),
            "kinds": {k: sum(b.kind == k for b in buckets) for k in LIMITS},
            "usage_items_zael": len(ours),
            "usage_items_python": len(theirs),
            "same_usage_keys": ours == theirs,
            "same_refills": results["zael"]["refills_written"] == results["python"]["refills_written"],
        }
        for t in (src, target):
            client.delete_table(TableName=t)
    finally:
        del os.environ["AWS_ENDPOINT_URL"]
    return results


def metrics(r):
    writes = sum(v for k, v in r["requests"].items() if k in WRITES)
    total = sum(r["requests"].values())
    n = r["records"]
    return {
        "batch_ms": r["batch_ms"],
        "records_per_s": n / (r["batch_ms"] / 1000),
        "writes": writes,
        "writes_per_record": writes / n,
        "requests": total,
        "requests_per_record": total / n,
        "cpu_ms": r["cpu_ms"],
        "moto_cpu_ms": r["moto_cpu_ms"],
        "wall_ms": r["wall_ms"],
        "stream_read_ms": r["stream_read_ms"],
    }


def median_metrics(runs, name):
    ms = [metrics(r[name]) for r in runs]
    return {k: statistics.median(x[k] for x in ms) if ms[0][k] is not None else None for k in ms[0]}


def report(runs, load):
    steps = RECORDS // BUCKETS
    lines = [
        "# Aggregator: zael-aggregator vs zae-limiter 0.17.0's Python aggregator on moto",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}. One batch of {BATCH} stream records "
        f"({BUCKETS} buckets x {steps} records: 1 INSERT + {steps - 1} MODIFYs), windows hourly,daily; "
        f"median of {len(runs)} repeats, fresh tables each. moto serialises requests (one lock), so the "
        "batch times are bounded by moto; requests per record carry over to AWS. "
        f"Load average {load[0]:.2f} before, {load[1]:.2f} after.",
        "",
        "| aggregator | batch ms | records/s | write requests | writes/record | requests/record | by operation | aggregator CPU ms | moto CPU ms |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name in ("zael", "python"):
        m = median_metrics(runs, name)
        ops = sorted({op for r in runs for op in r[name]["requests"]})
        by_op = ", ".join(f"{op} {statistics.median(r[name]['requests'].get(op, 0) for r in runs):g}" for op in ops)
        label = "zael-aggregator" if name == "zael" else "Python `process_stream_records`"
        lines.append(
            f"| {label} | {m['batch_ms']:.0f} | {m['records_per_s']:.0f} | {m['writes']:g} | "
            f"{m['writes_per_record']:.3f} | {m['requests_per_record']:.3f} | {by_op or '-'} | "
            f"{m['cpu_ms']:.0f} | {m['moto_cpu_ms']:.0f} |"
        )
    z = median_metrics(runs, "zael")
    reads = runs[0]["zael"]["stream_reads"]
    lines += [
        "",
        f"zael-aggregator's whole process (start, SDK config, stream reads, the batch, exit): "
        f"{z['wall_ms']:.0f} ms wall, {BATCH / (z['wall_ms'] / 1000):.0f} records/s; of which reading the "
        f"stream (DescribeTable to the batch) {z['stream_read_ms']:.0f} ms; stream requests, not counted "
        "above: " + ", ".join(f"{k} {v}" for k, v in sorted(reads.items())) + ". "
        "Aggregator CPU: zael's whole process (user + system), Python's call (`time.process_time`).",
        "",
        "Per repeat (zael / python): " + "; ".join(
            f"batch {r['zael']['batch_ms']:.0f} / {r['python']['batch_ms']:.0f} ms, "
            f"snapshots {r['zael']['snapshots_updated']} / {r['python']['snapshots_updated']}, "
            f"refills {r['zael']['refills_written']} / {r['python']['refills_written']}, "
            f"errors {r['zael']['errors']} / {r['python']['errors']}, "
            f"usage items {r['check']['usage_items_zael']} / {r['check']['usage_items_python']}"
            f"{'' if r['check']['same_usage_keys'] else ' (DIFFERENT KEYS)'}"
            for r in runs
        ) + ".",
    ]
    return "\n".join(lines) + "\n"


def main():
    tmp = tempfile.mkdtemp(prefix="aggregator-bench.")
    log(f"logs in {tmp}")
    if not 1 <= BATCH <= 1000 or BATCH > RECORDS:
        raise SystemExit("[aggregator-bench] BENCH_BATCH must be 1..1000 and at most BENCH_RECORDS")
    binary = binary_path()
    moto = Moto(tmp)
    load = [os.getloadavg()[0]]
    try:
        runs = [one_repeat(binary, moto, tmp, rep) for rep in range(REPEATS)]
    finally:
        moto.stop()
    load.append(os.getloadavg()[0])
    text = report(runs, load)
    OUT.mkdir(exist_ok=True)
    suffix = "" if (RECORDS, BUCKETS, BATCH) == (1000, 100, 1000) else f"-{RECORDS}x{BUCKETS}b{BATCH}"
    (OUT / f"aggregator-results{suffix}.md").write_text(text)
    (OUT / f"aggregator-results{suffix}.json").write_text(json.dumps(runs, indent=2))
    print(text)


if __name__ == "__main__":
    main()
