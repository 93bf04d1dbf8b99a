"""Benchmarks: syncworker side by side with a raw redis.asyncio loop and FastStream.

Run with `make bench` (or `python -m bench`, `python -m bench --quick`). Each run starts its
own redis-server on a free port, and every contender runs in a fresh subprocess of its own
against the same server, so that the ratios compare like with like.
"""
