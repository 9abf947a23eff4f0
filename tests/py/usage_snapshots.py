"""Usage snapshots written by the Python aggregator (zae_limiter_aggregator of zae-limiter
0.17.0) for two bucket MODIFY records, as fixtures for the CLI's `usage` commands.

Usage: usage_snapshots.py TABLE NAMESPACE_ID
Record 1: key-1 on gpt-4 at 2026-11-30T10:15:00Z, rpm +3, tpm +1500.
Record 2: key-1 on gpt-4 at 2026-11-30T11:25:00Z, rpm +2, tpm +500.
Endpoint from ZAEL_TEST_ENDPOINT (boto3 reads AWS_ENDPOINT_URL).
"""

import os
import sys
import warnings

warnings.simplefilter("ignore")
os.environ["AWS_ENDPOINT_URL"] = os.environ["ZAEL_TEST_ENDPOINT"]

from zae_limiter_aggregator.processor import process_stream_records  # noqa: E402


def image(ns, rf, rpm_tc, tpm_tc):
    return {
        "PK": {"S": f"{ns}/BUCKET#key-1#gpt-4#0"},
        "SK": {"S": "#STATE"},
        "entity_id": {"S": "key-1"},
        "resource": {"S": "gpt-4"},
        "rf": {"N": str(rf)},
        "shard_count": {"N": "1"},
        "b_rpm_tk": {"N": "5000"}, "b_rpm_cp": {"N": "10000"}, "b_rpm_ra": {"N": "10000"},
        "b_rpm_rp": {"N": "60000"}, "b_rpm_tc": {"N": str(rpm_tc)},
        "b_tpm_tk": {"N": "5000"}, "b_tpm_cp": {"N": "100000"}, "b_tpm_ra": {"N": "100000"},
        "b_tpm_rp": {"N": "60000"}, "b_tpm_tc": {"N": str(tpm_tc)},
    }


def record(ns, rf, old, new):
    return {
        "eventID": str(rf),
        "eventName": "MODIFY",
        "eventSource": "aws:dynamodb",
        "dynamodb": {
            "Keys": {"PK": {"S": f"{ns}/BUCKET#key-1#gpt-4#0"}, "SK": {"S": "#STATE"}},
            "OldImage": image(ns, rf, *old),
            "NewImage": image(ns, rf, *new),
        },
    }


table, ns = sys.argv[1], sys.argv[2]
t1 = 1796033700000  # 2026-11-30T10:15:00Z
t2 = 1796037900000  # 2026-11-30T11:25:00Z
records = [record(ns, t1, (0, 0), (3000, 1500000)), record(ns, t2, (3000, 1500000), (5000, 2000000))]
result = process_stream_records(records, table, ["hourly", "daily"])
print(result.processed_count, result.snapshots_updated)
