"""What counting the lag costs Redis when XINFO GROUPS reports none (worker/admin/lag.py).

Run with `python -m bench.lag_estimate`: starts its own redis-server on a free port, fills a
stream with ~120-byte entries, and prints the server-side time of one count for a few lags.
The count runs on Redis's single thread, so this is how long it blocks other clients.
"""

from __future__ import annotations

import asyncio
import json
import time

from redis.asyncio import Redis

from worker.admin import lag
from worker.redis_server import RedisServer

PAYLOAD = json.dumps({"order_id": 42, "total": "19.90", "currency": "EUR", "note": "x" * 60})


async def main() -> None:
    with RedisServer() as server:
        redis = Redis.from_url(server.url)
        total = 50_000
        pipe = redis.pipeline(transaction=False)
        for _ in range(total):
            pipe.xadd("bench:lag", {"type": "t", "data": PAYLOAD})
        await pipe.execute()
        ids = [entry_id for entry_id, _ in await redis.xrange("bench:lag")]
        for lag_wanted in (100, 1_000, 10_000, 40_000):
            last = ids[total - lag_wanted - 1].decode()
            runs = []
            for _ in range(5):
                started = time.perf_counter()
                counted = await lag.estimate_lag(redis, "bench:lag", last)
                runs.append(time.perf_counter() - started)
            print(
                f"lag {lag_wanted:>6}: counted {counted:>6}, "
                f"best of 5 {min(runs) * 1000:.2f} ms (limit {lag.LAG_SCAN_LIMIT})"
            )
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
