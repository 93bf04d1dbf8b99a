"""A paced producer: `python -m bench.producer URL STREAM RATE SECONDS`.

It appends entries at a fixed rate on a schedule (entry n is due at start + n / rate), so a
slow moment is caught up rather than shifting every later entry. Each entry carries a `sent`
field with the producer's clock in microseconds, beside the millisecond entry id.
"""

from __future__ import annotations

import sys
import time

from redis import Redis

from bench.harness import entry


def main() -> None:
    url, stream, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    redis = Redis.from_url(url)
    total = int(rate * seconds)
    start = time.perf_counter()
    for n in range(total):
        due = start + n / rate
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        fields = entry(n)
        fields[b"sent"] = b"%.6f" % time.time()
        redis.xadd(stream, fields)  # type: ignore[arg-type]
    print(total, flush=True)


if __name__ == "__main__":
    main()
