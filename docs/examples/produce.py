"""Enqueue emails from Python with redis-py, in mailfleet wire format v1.

    pip install redis
    python3 docs/examples/produce.py [redis-url] [prefix]

Plain XADD is enough. For idempotent enqueue (an idempotency key within its TTL enqueues once),
load lua/enqueue.lua and call it with the same KEYS/ARGV the Rust producer uses, as below.
"""
import json
import os
import sys
import time
import uuid

import redis


def uuid7() -> str:
    ms = int(time.time() * 1000)
    b = bytearray(ms.to_bytes(6, "big") + os.urandom(10))
    b[6] = (b[6] & 0x0F) | 0x70
    b[8] = (b[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(b)))


def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379"
    prefix = sys.argv[2] if len(sys.argv) > 2 else "mf"
    partitions = int(os.environ.get("MAILFLEET_PARTITIONS", "1"))
    r = redis.Redis.from_url(url)
    here = os.path.dirname(os.path.abspath(__file__))
    enqueue = r.register_script(open(os.path.join(here, "..", "..", "lua", "enqueue.lua")).read())

    payload = {
        "to": ["Ada Lovelace <ada@example.com>"],
        "from": "Shop <shop@example.com>",
        "template": "welcome",
        "vars": {"name": "Ada", "order": 42},
    }
    job_id, idem = uuid7(), "order-42-confirmation"
    p = fnv1a32(idem.encode()) % partitions
    keys = [f"{prefix}:{{{p}}}:dedup:{idem}", f"{prefix}:{{{p}}}:tx", f"{prefix}:{{{p}}}:delayed:tx"]
    now = int(time.time() * 1000)
    first_id, added = enqueue(keys=keys, args=[job_id, idem, now, json.dumps(payload), 86_400_000, 0, "tx"])
    print(first_id.decode(), "added" if added else "duplicate")

    # Plain XADD, no idempotency key: partition from the job id.
    job_id = uuid7()
    p = fnv1a32(job_id.encode()) % partitions
    r.xadd(f"{prefix}:{{{p}}}:bulk", {
        "v": "1", "id": job_id, "enqueued_at": str(int(time.time() * 1000)),
        "payload": json.dumps({"to": ["bob@example.com"], "from": "news@example.com",
                               "subject": "Weekly digest", "html": "<p>Hello Bob</p>"}),
    })
    print(job_id, "added")


if __name__ == "__main__":
    main()
