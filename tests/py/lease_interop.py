"""Leases of the Python library zae-limiter 0.17.0 on a bucket that zael-server's native API
leases from at the same time (tests/tests/native_api.rs).

  lease_interop.py setup TABLE NAMESPACE ENTITY RESOURCE CAPACITY
      gives ENTITY a per-day `tpm` limit of CAPACITY on RESOURCE
  lease_interop.py run TABLE NAMESPACE ENTITY RESOURCE ROUNDS
      ROUNDS leases, one after the other: acquire tpm 10, adjust +5, and every third one fails
      inside the lease (the library rolls it back); prints {"kept": N, "rolled_back": N,
      "rejected": N}
"""

import asyncio
import json
import os
import sys
import warnings

from zae_limiter import Limit, RateLimiter, RateLimitExceeded, Repository

warnings.simplefilter("ignore")
ENDPOINT = os.environ["ZAEL_TEST_ENDPOINT"]
REGION = os.environ.get("AWS_REGION", "us-east-1")


class WorkFailed(Exception):
    pass


async def open_limiter(table, namespace):
    repo = await Repository.open(namespace, stack=table, region=REGION, endpoint_url=ENDPOINT)
    return RateLimiter(repository=repo)


async def setup(table, namespace, entity, resource, capacity):
    limiter = await open_limiter(table, namespace)
    await limiter.create_entity(entity)
    limit = Limit(name="tpm", capacity=int(capacity), refill_amount=int(capacity), refill_period_seconds=86400)
    await limiter.set_limits(entity, [limit], resource=resource)


async def run(table, namespace, entity, resource, rounds):
    limiter = await open_limiter(table, namespace)
    counts = {"kept": 0, "rolled_back": 0, "rejected": 0}
    for i in range(int(rounds)):
        try:
            async with limiter.acquire(entity, resource, consume={"tpm": 10}) as lease:
                await lease.adjust(tpm=5)
                if i % 3 == 2:
                    raise WorkFailed()
            counts["kept"] += 1
        except WorkFailed:
            counts["rolled_back"] += 1
        except RateLimitExceeded:
            counts["rejected"] += 1
    print(json.dumps(counts))


COMMANDS = {"setup": setup, "run": run}

if __name__ == "__main__":
    asyncio.run(COMMANDS[sys.argv[1]](*sys.argv[2:]))
