"""What zae-limiter 0.17.0 reads from a table the Rust CLI wrote (deployer interop tests).

Usage: library_reads.py TABLE NAMESPACE ENTITY RESOURCE PARENT
Prints one JSON object: namespaces, the entity (and its parent), their limits on RESOURCE,
the resource and system defaults, and the entity's audit actions, newest first.
Endpoint and region from ZAEL_TEST_ENDPOINT / AWS_REGION.
"""

import asyncio
import json
import os
import sys
import warnings

from zae_limiter import RateLimiter, Repository

warnings.simplefilter("ignore")


def limit_dicts(limits):
    """`Limit.to_dict()` of each, by name (items keep no attribute order)."""
    return sorted((limit.to_dict() for limit in limits), key=lambda d: d["name"])


async def main(table, namespace, entity, resource, parent):
    repo = await Repository.connect(
        namespace, stack=table, region=os.environ.get("AWS_REGION", "us-east-1"),
        endpoint_url=os.environ["ZAEL_TEST_ENDPOINT"],
    )
    limiter = RateLimiter(repository=repo)
    e = await limiter.get_entity(entity)
    system, on_unavailable = await limiter.get_system_defaults()
    out = {
        "namespaces": sorted(n["name"] for n in await repo.list_namespaces()),
        "entity": {"id": e.id, "name": e.name, "parent_id": e.parent_id, "cascade": e.cascade},
        "limits": limit_dicts(await limiter.get_limits(entity, resource=resource)),
        "parent_limits": limit_dicts(await limiter.get_limits(parent, resource=resource)),
        "resource_defaults": limit_dicts(await limiter.get_resource_defaults(resource)),
        "system_defaults": limit_dicts(system),
        "on_unavailable": str(on_unavailable.value if hasattr(on_unavailable, "value") else on_unavailable),
        "audit": [ev.action for ev in await limiter.get_audit_events(entity)],
    }
    print(json.dumps(out, sort_keys=True))
    await limiter.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
