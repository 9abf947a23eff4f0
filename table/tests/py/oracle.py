"""zae-limiter 0.17.0 as the oracle of the zael-table interop tests.

Usage (endpoint and region from ZAEL_TEST_ENDPOINT / AWS_REGION, credentials from the env):
  oracle.py setup TABLE NAMESPACE
      create the table with the library and open the namespace; prints {"namespace_id": ...}
  oracle.py acquire TABLE NAMESPACE ENTITY RESOURCE CP RA RP AMOUNT COUNT
      COUNT sequential acquires of AMOUNT on limit `hits` (an `acquire(limits=...)` override);
      prints one {"admitted", "slow", "tokens_milli"} per acquire
  oracle.py hammer TABLE NAMESPACE ENTITY RESOURCE CP RA RP ATTEMPTS CONCURRENCY
      ATTEMPTS acquires of 1, CONCURRENCY at a time; prints {"admitted": N}
  oracle.py entity-setup TABLE NAMESPACE
      creates the table, the namespace and the entities and stored limits of ENTITY_SCENARIO
  oracle.py entity-run TABLE NAMESPACE STEPS_JSON
      runs each step [entity, resource, {limit: amount}] with the stored limits; prints per
      step [outcome, {entity: {limit: available}}, slow] for the entity and its cascade parent,
      where outcome is "admitted", "rejected", "disabled" or "no_limits" and slow says whether
      the library took its slow path
  oracle.py entity-hammer TABLE NAMESPACE ENTITY RESOURCE CONSUME_JSON ATTEMPTS CONCURRENCY
      ATTEMPTS acquires with the stored limits, CONCURRENCY at a time; prints {"admitted": N}
  oracle.py entity-available TABLE NAMESPACE PAIRS_JSON
      prints {"entity/resource": {limit: available}} for each [entity, resource]
  oracle.py entities-file TABLE PATH
      creates the table and writes, with the library's own calls, the namespaces, entities,
      stored limits and access flags of a zael-server `--entities` file (the embedded store's
      config), so one fixture gives both stores the same limits
"""

import asyncio
import json
import os
import sys
import warnings

from zae_limiter import Limit, RateLimiter, RateLimitExceeded, Repository
from zae_limiter.exceptions import ResourceDisabled, ValidationError

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


def count_slow_paths(limiter):
    """A list that grows by one on each of the limiter's slow-path acquires."""
    slow_calls = []
    original = limiter._slow_acquire

    async def spy(*args, **kwargs):
        slow_calls.append(1)
        return await original(*args, **kwargs)

    limiter._slow_acquire = spy
    return slow_calls


def hits(cp, ra, rp):
    return [Limit(name="hits", capacity=int(cp), refill_amount=int(ra), refill_period_seconds=int(rp))]


async def acquire(table, namespace, entity, resource, cp, ra, rp, amount, count):
    limiter = await open_limiter(table, namespace)
    slow_calls = count_slow_paths(limiter)
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


def per_day(name, capacity):
    return Limit(name=name, capacity=capacity, refill_amount=capacity, refill_period_seconds=86400)


# Entities, parents and stored limits at every config level (per-day limits, so that the
# few milliseconds between steps refill nothing visible).
async def entity_setup(table, namespace):
    await setup(table, namespace)
    limiter = await open_limiter(table, namespace)
    await limiter.create_entity("proj-1")
    await limiter.create_entity("proj-2")
    await limiter.create_entity("key-1", parent_id="proj-1", cascade=True)
    await limiter.create_entity("key-2")
    await limiter.create_entity("key-3", parent_id="proj-1", cascade=True)
    await limiter.create_entity("key-4", parent_id="proj-2", cascade=True)
    await limiter.create_entity("key-5", parent_id="proj-1", cascade=False)
    await limiter.set_limits("key-1", [per_day("rpm", 5), per_day("tpm", 100)], resource="gpt-4")
    await limiter.set_limits("proj-1", [per_day("rpm", 8)], resource="gpt-4")
    await limiter.set_limits("key-4", [per_day("rpm", 10)], resource="gpt-4")
    await limiter.set_limits("proj-2", [per_day("rpm", 2)], resource="gpt-4")
    await limiter.set_limits("key-5", [per_day("rpm", 4)])  # entity default, every resource
    await limiter.create_entity("key-6")
    soft = Limit(name="rpm", capacity=2, refill_amount=2, refill_period_seconds=86400, soft=True)
    await limiter.set_limits("key-6", [soft, per_day("tpm", 10)], resource="gpt-4")
    await limiter.create_entity("key-7")
    await limiter.set_limits("key-7", [per_day("rpm", 1)], resource="gpt-4")
    await limiter._repository.bypass_entity("key-7", "gpt-4")
    await limiter.create_entity("proj-3")
    await limiter.create_entity("key-8", parent_id="proj-3", cascade=True)
    await limiter.set_limits("key-8", [per_day("rpm", 30)], resource="gpt-4")
    await limiter.set_limits("proj-3", [per_day("rpm", 20)], resource="gpt-4")
    await limiter.set_resource_defaults("gpt-4", [per_day("rpm", 2)])
    await limiter.set_system_defaults([per_day("rpm", 3), per_day("tpm", 50)])
    await limiter._repository.disable_entity("key-2", "claude")


async def available_of(limiter, entity, resource):
    try:
        return await limiter.available(entity, resource)
    except Exception as e:  # noqa: BLE001 - the oracle reports what the library says
        return {"error": type(e).__name__}


async def entity_run(table, namespace, steps):
    limiter = await open_limiter(table, namespace)
    slow_calls = count_slow_paths(limiter)
    out = []
    for entity, resource, consume in json.loads(steps):
        before = len(slow_calls)
        try:
            async with limiter.acquire(entity, resource, consume):
                outcome = "admitted"
        except RateLimitExceeded:
            outcome = "rejected"
        except ResourceDisabled:
            outcome = "disabled"
        except ValidationError:
            outcome = "no_limits"
        meta = await limiter.get_entity(entity)
        owners = [entity]
        if meta is not None and meta.parent_id and meta.cascade:
            owners.append(meta.parent_id)
        slow = len(slow_calls) > before
        out.append([outcome, {e: await available_of(limiter, e, resource) for e in owners}, slow])
    print(json.dumps(out))


async def entity_hammer(table, namespace, entity, resource, consume, attempts, concurrency):
    limiter = await open_limiter(table, namespace)
    sem = asyncio.Semaphore(int(concurrency))
    admitted = 0

    async def one():
        nonlocal admitted
        async with sem:
            try:
                async with limiter.acquire(entity, resource, json.loads(consume)):
                    admitted += 1
            except RateLimitExceeded:
                pass

    await asyncio.gather(*(one() for _ in range(int(attempts))))
    print(json.dumps({"admitted": admitted}))


async def entity_available(table, namespace, pairs):
    limiter = await open_limiter(table, namespace)
    out = {}
    for entity, resource in json.loads(pairs):
        out[f"{entity}/{resource}"] = await available_of(limiter, entity, resource)
    print(json.dumps(out, sort_keys=True))


async def entities_file(table, path):
    import dataclasses

    import yaml

    from zae_limiter.cli import _parse_limit

    # Every scalar a string (YAML 1.1 would read an entity named `off` as false).
    with open(path) as f:
        spec = yaml.load(f, Loader=yaml.BaseLoader)
    words = {"true": True, "false": False, "bypass": "bypass"}
    repo = Repository(name=table, region=REGION, endpoint_url=ENDPOINT, _skip_deprecation_warning=True)
    await repo.create_table()

    def limits_of(level):
        soft = set(level.get("soft", []))
        return [dataclasses.replace(lim, soft=lim.name in soft) for lim in map(_parse_limit, level.get("limits", []))]

    async def access(repo, level, entity=None, resource=None):
        flag = level.get("disabled")
        if flag is None:
            return
        flag = words[flag]
        if entity is None:
            call = {True: repo.disable_resource, False: repo.enable_resource, "bypass": repo.bypass_resource}[flag]
            await call(resource)
        else:
            call = {True: repo.disable_entity, False: repo.enable_entity, "bypass": repo.bypass_entity}[flag]
            await call(entity, resource)

    for name, ns in spec["namespaces"].items():
        limiter = await open_limiter(table, name)
        repo = limiter._repository
        entities = ns.get("entities", {})
        # Parents first: a child names an existing parent.
        order = sorted(entities, key=lambda e: entities[e].get("parent") is not None)
        for entity in order:
            e = entities[entity]
            await limiter.create_entity(entity, parent_id=e.get("parent"), cascade=e.get("cascade") == "true")
        system = ns.get("system")
        if system:
            await limiter.set_system_defaults(limits_of(system), on_unavailable=system.get("on_unavailable"))
        for resource, level in ns.get("resources", {}).items():
            if level.get("limits"):
                await limiter.set_resource_defaults(resource, limits_of(level))
            await access(repo, level, resource=resource)
        for entity in order:
            e = entities[entity]
            if e.get("limits"):
                await limiter.set_limits(entity, limits_of(e))
            await access(repo, e, entity=entity)
            for resource, level in e.get("resources", {}).items():
                if level.get("limits"):
                    await limiter.set_limits(entity, limits_of(level), resource=resource)
                await access(repo, level, entity=entity, resource=resource)
    print(json.dumps({"ok": True}))


COMMANDS = {
    "setup": setup,
    "acquire": acquire,
    "hammer": hammer,
    "entity-setup": entity_setup,
    "entity-run": entity_run,
    "entity-available": entity_available,
    "entity-hammer": entity_hammer,
    "entities-file": entities_file,
}

if __name__ == "__main__":
    asyncio.run(COMMANDS[sys.argv[1]](*sys.argv[2:]))
