"""An LLM gateway on zael's native API (zael.limiter.v1), from Python with grpcio.

Reserve the estimated tokens before the model call, reconcile with the real count after it,
give everything back when the call fails:

    python -m grpc_tools.protoc -I proto --python_out=gen --grpc_python_out=gen \
        proto/zael/limiter/v1/limiter.proto
    PYTHONPATH=gen python examples/native-api/llm_gateway.py 127.0.0.1:8081 key-1 3
"""

import sys
import uuid

import grpc
from google.rpc import status_pb2

from zael.limiter.v1 import limiter_pb2, limiter_pb2_grpc


def rate_limit_exceeded(error: grpc.RpcError) -> limiter_pb2.RateLimitExceeded:
    """The RateLimitExceeded detail of a RESOURCE_EXHAUSTED error."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            detail = limiter_pb2.RateLimitExceeded()
            status.details[0].Unpack(detail)
            return detail
    raise error


def call_model(prompt: str) -> int:
    """Stands in for the model call: the tokens it really used."""
    return len(prompt) * 3


def handle(stub, api_key: str, prompt: str, estimate: int = 500) -> str:
    try:
        acquired = stub.Acquire(
            limiter_pb2.AcquireRequest(
                namespace="demo",
                entity_id=api_key,
                resource="gpt-4",
                consume={"rpm": 1, "tpm": estimate},
                request_id=str(uuid.uuid4()),  # a retry of this call charges once
            ),
            timeout=5,
        )
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise
        detail = rate_limit_exceeded(e)
        return f"429 retry after {detail.retry_after_ms} ms"
    try:
        used = call_model(prompt)
    except Exception:
        stub.Rollback(limiter_pb2.RollbackRequest(lease_id=acquired.lease_id), timeout=5)
        raise
    adjusted = stub.Adjust(
        limiter_pb2.AdjustRequest(lease_id=acquired.lease_id, deltas={"tpm": used - estimate}), timeout=5
    )
    stub.Release(limiter_pb2.ReleaseRequest(lease_id=adjusted.lease_id), timeout=5)
    return f"200 used {used} tokens"


def main() -> None:
    target, api_key, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with grpc.insecure_channel(target) as channel:
        stub = limiter_pb2_grpc.LimiterStub(channel)
        for _ in range(calls):
            print(handle(stub, api_key, "Explain token buckets in one paragraph."))


if __name__ == "__main__":
    main()
