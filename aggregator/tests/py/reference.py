"""The Python aggregator of zae-limiter 0.17.0 (`zae_limiter_aggregator`) as the oracle of the
zael-aggregator tests, on moto (endpoint from ZAEL_TEST_ENDPOINT, credentials from the env).

Usage:
  reference.py traffic TABLE
      writes SCENARIO's bucket items (INSERTs and MODIFYs with fixed `rf`) and one foreign item
  reference.py aggregate TABLE TARGET WINDOWS
      reads every record of TABLE's stream and runs the reference `process_stream_records` on
      them with TARGET as its table; prints {"records": N, "snapshots_updated": N, "errors": [...]}
"""

import contextlib
import json
import os
import sys

import boto3

T0 = 1767608400000  # 2026-01-05T10:20:00Z
HOUR = 3_600_000


def bucket(ns, entity, resource, rf, limits, soft=()):
    item = {
        "PK": f"{ns}/BUCKET#{entity}#{resource}#0",
        "SK": "#STATE",
        "entity_id": entity,
        "rf": rf,
        "GSI2PK": f"{ns}/RESOURCE#{resource}",
        "GSI2SK": f"BUCKET#{entity}#0",
        "GSI3PK": f"{ns}/ENTITY#{entity}",
        "GSI3SK": f"BUCKET#{resource}#0",
        "GSI4PK": ns,
        "GSI4SK": f"BUCKET#{entity}#{resource}#0",
    }
    for name, (tk, cp, ra, rp, tc) in limits.items():
        item.update({f"b_{name}_tk": tk, f"b_{name}_cp": cp, f"b_{name}_ra": ra, f"b_{name}_rp": rp, f"b_{name}_tc": tc})
    for name in soft:
        item[f"b_{name}_soft"] = T0 + 10 * HOUR
    return item


def update(table, ns, entity, resource, rf, changes):
    """SET rf and, per limit, tk to a value and ADD a tc delta: one MODIFY."""
    names, values, sets, adds = {}, {":rf": rf}, ["rf = :rf"], []
    for i, (name, (tk, tc_delta)) in enumerate(changes.items()):
        names[f"#k{i}"], names[f"#c{i}"] = f"b_{name}_tk", f"b_{name}_tc"
        values[f":k{i}"], values[f":c{i}"] = tk, tc_delta
        sets.append(f"#k{i} = :k{i}")
        adds.append(f"#c{i} :c{i}")
    table.update_item(
        Key={"PK": f"{ns}/BUCKET#{entity}#{resource}#0", "SK": "#STATE"},
        UpdateExpression=f"SET {', '.join(sets)} ADD {', '.join(adds)}",
        ExpressionAttributeNames=names,
        ExpressionAttributeValues=values,
    )


def traffic(table_name):
    table = boto3.resource("dynamodb").Table(table_name)
    minute = (10_000, 10_000, 10_000, 60_000)
    # plain-1: one limit, whole tokens, INSERT without consumption, an hour boundary crossed.
    table.put_item(Item=bucket("ns1", "plain-1", "api", T0, {"rpm": (*minute, 0)}))
    update(table, "ns1", "plain-1", "api", T0 + 1000, {"rpm": (9000, 1000)})
    update(table, "ns1", "plain-1", "api", T0 + 2000, {"rpm": (7000, 2000)})
    update(table, "ns1", "plain-1", "api", T0 + HOUR, {"rpm": (6000, 1000)})
    # plain-2: a soft limit debited into debt twice, then a refund (negative delta).
    table.put_item(Item=bucket("ns1", "plain-2", "api", T0, {"tpm": (4000, 10_000, 10_000, 60_000, 0)}, soft=["tpm"]))
    update(table, "ns1", "plain-2", "api", T0 + 1000, {"tpm": (-1000, 5000)})
    update(table, "ns1", "plain-2", "api", T0 + 2000, {"tpm": (-6000, 5000)})
    update(table, "ns1", "plain-2", "api", T0 + 3000, {"tpm": (-3000, -3000)})
    # fix-1: two limits and wcu, consumption on the INSERT (D5), 1.5-token deltas (D3).
    table.put_item(
        Item=bucket(
            "ns1",
            "fix-1",
            "chat",
            T0,
            {"rpm": (9000, 10_000, 10_000, 60_000, 1000), "tpm": (9500, 10_000, 10_000, 60_000, 500),
             "wcu": (999_000, 1_000_000, 1_000_000, 1000, 1000)},
        )
    )
    for step in (1, 2):
        update(table, "ns1", "fix-1", "chat", T0 + step * 1000,
               {"rpm": (9000 - step * 1000, 1000), "tpm": (9500 - step * 1500, 1500), "wcu": (999_000, 1000)})
    # Not buckets: an entity's META, and a PK without namespace.
    table.put_item(Item={"PK": "ns1/ENTITY#plain-1", "SK": "#META", "entity_id": "plain-1"})
    table.put_item(Item={**bucket("x", "legacy", "api", T0, {"rpm": (*minute, 0)}), "PK": "BUCKET#legacy#api#0"})
    table.update_item(Key={"PK": "BUCKET#legacy#api#0", "SK": "#STATE"}, UpdateExpression="ADD b_rpm_tc :d",
                      ExpressionAttributeValues={":d": 1000})


def stream_records(table_name):
    """Every record of TABLE's stream, as a Lambda event carries them (also bench/aggregator_bench.py's input)."""
    client = boto3.client("dynamodb")
    streams = boto3.client("dynamodbstreams")
    arn = client.describe_table(TableName=table_name)["Table"]["LatestStreamArn"]
    records = []
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        it = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")[
            "ShardIterator"]
        for _ in range(10_000):
            page = streams.get_records(ShardIterator=it, Limit=1000)
            records.extend(page["Records"])
            if not page["Records"] or not page.get("NextShardIterator"):
                break
            it = page["NextShardIterator"]
    for r in records:
        r["eventSourceARN"] = arn
        r["dynamodb"].pop("ApproximateCreationDateTime", None)
    return records


def aggregate(table_name, target, windows):
    from zae_limiter_aggregator.processor import process_stream_records

    records = stream_records(table_name)
    with contextlib.redirect_stdout(sys.stderr):
        result = process_stream_records(records, table_name=target, windows=windows.split(","), ttl_days=90)
    print(json.dumps({"records": len(records), "snapshots_updated": result.snapshots_updated,
                      "errors": result.errors}))


def main():
    os.environ["AWS_ENDPOINT_URL"] = os.environ["ZAEL_TEST_ENDPOINT"]
    command, args = sys.argv[1], sys.argv[2:]
    if command == "traffic":
        traffic(*args)
    elif command == "aggregate":
        aggregate(*args)
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
