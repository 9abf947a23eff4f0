"""zae-limiter 0.17.0 around resets and top-ups (deployer interop tests).

Usage (endpoint and region from ZAEL_TEST_ENDPOINT / AWS_REGION):
  bucket_ops.py audit TABLE NAMESPACE ENTITY
      prints the entity's audit events as the library reads them, newest first:
      [{"action", "principal", "resource", "details"}]
  bucket_ops.py set-quota TABLE NAMESPACE ENTITY RESOURCE
      stores `rpm` 10 per day and the session quota `session` (100 per 5-hour window)
      for ENTITY on RESOURCE
"""

import asyncio
import json
import os
import sys
import warnings
from datetime import timedelta

from zae_limiter import Limit, RateLimiter, Repository

warnings.simplefilter("ignore")


async def open_limiter(table, namespace):
    repo = await Repository.connect(
        namespace, stack=table, region=os.environ.get("AWS_REGION", "us-east-1"),
        endpoint_url=os.environ["ZAEL_TEST_ENDPOINT"],
    )
    return RateLimiter(repository=repo)


async def audit(table, namespace, entity):
    limiter = await open_limiter(table, namespace)
    events = await limiter.get_audit_events(entity)
    out = [
        {"action": e.action, "principal": e.principal, "resource": e.resource, "details": e.details}
        for e in events
    ]
    print(json.dumps(out, sort_keys=True))
    await limiter.close()


async def set_quota(table, namespace, entity, resource):
    limiter = await open_limiter(table, namespace)
    limits = [Limit.per_day("rpm", 10), Limit.quota("session", 100, reset_after=timedelta(hours=5))]
    await limiter.set_limits(entity, limits, resource=resource)
    await limiter.close()


COMMANDS = {"audit": audit, "set-quota": set_quota}

if __name__ == "__main__":
    asyncio.run(COMMANDS[sys.argv[1]](*sys.argv[2:]))
