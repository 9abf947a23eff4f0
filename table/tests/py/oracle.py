"""zae-limiter 0.17.0 as the oracle of the zael-table interop tests.

Usage (endpoint and region from ZAEL_TEST_ENDPOINT / AWS_REGION, credentials from the env):
  oracle.py setup TABLE NAMESPACE
      create the table with the library and open the namespace; prints {"namespace_id": ...}
  oracle.py acquire TABLE NAMESPACE ENTITY RESOURCE CP RA RP AMOUNT COUNT
      COUNT sequential acquires of AMOUNT on limit `hits` (an `acquire(limits=...)` override);
      prints one {"admitted", "slow", "tokens_milli"} per acquire
  oracle.py hammer TABLE NAMESPACE ENTITY RESOURCE CP RA RP ATTEMPTS CONCURRENCY
      ATTEMPTS acquires of 1, CONCURRENCY at a time; prints {"admitted": N}
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


async def open_limiter(table, namespace):
    repo = await Repository.open(namespace, stack=table, region=REGION, endpoint_url=ENDPOINT)
    return RateLimiter(repository=repo)


async def setup(table, namespace):
    repo = Repository(name=table, region=REGION, endpoint_url=ENDPOINT, _skip_deprecation_warning=True)
    await repo.create_table()
    opened = await Repository.open(namespace, stack=table, region=REGION, endpoint_url=ENDPOINT)
    print(json.dumps({"namespace_id": opened.namespace_id}))


def hits(cp, ra, rp):
    return [Limit(name="hits", capacity=int(cp), refill_amount=int(ra), refill_period_seconds=int(rp))]


async def acquire(table, namespace, entity, resource, cp, ra, rp, amount, count):
    limiter = await open_limiter(table, namespace)
    slow_calls = []
    original = limiter._slow_acquire

    async def spy(*args, **kwargs):
        slow_calls.append(1)
        return await original(*args, **kwargs)

    limiter._slow_acquire = spy
    results = []
    for _ in range(int(count)):
        before = len(slow_calls)
        try:
            async with limiter.acquire(entity, resource, {"hits": int(amount)}, limits=hits(cp, ra, rp)) as lease:
                tokens = [e.state.tokens_milli for e in lease.entries if e.limit.name == "hits"]
                results.append({"admitted": True, "slow": len(slow_calls) > before, "tokens_milli": tokens[0]})
        except RateLimitExceeded:
            results.append({"admitted": False, "slow": len(slow_calls) > before, "tokens_milli": None})
    print(json.dumps(results))


async def hammer(table, namespace, entity, resource, cp, ra, rp, attempts, concurrency):
    limiter = await open_limiter(table, namespace)
    sem = asyncio.Semaphore(int(concurrency))
    admitted = 0

    async def one():
        nonlocal admitted
        async with sem:
            try:
                async with limiter.acquire(entity, resource, {"hits": 1}, limits=hits(cp, ra, rp)):
                    admitted += 1
            except RateLimitExceeded:
                pass

    await asyncio.gather(*(one() for _ in range(int(attempts))))
    print(json.dumps({"admitted": admitted}))


COMMANDS = {"setup": setup, "acquire": acquire, "hammer": hammer}

if __name__ == "__main__":
    asyncio.run(COMMANDS[sys.argv[1]](*sys.argv[2:]))
