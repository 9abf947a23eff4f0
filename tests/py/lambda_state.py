"""What moto holds for a stack's aggregator: its function and event source mappings.

Usage (endpoint from ZAEL_TEST_ENDPOINT): lambda_state.py STACK
prints {"runtime", "handler", "architectures", "code_sha256", "code_size", "mappings": [state...]}
"""

import json
import os
import sys

import boto3

os.environ["AWS_ENDPOINT_URL"] = os.environ["ZAEL_TEST_ENDPOINT"]
function = f"{sys.argv[1]}-aggregator"
client = boto3.client("lambda")
conf = client.get_function_configuration(FunctionName=function)
mappings = client.list_event_source_mappings(FunctionName=function)["EventSourceMappings"]
print(json.dumps({
    "runtime": conf["Runtime"],
    "handler": conf["Handler"],
    "architectures": conf.get("Architectures"),
    "code_sha256": conf["CodeSha256"],
    "code_size": conf["CodeSize"],
    "mappings": [m["State"] for m in mappings],
}))
