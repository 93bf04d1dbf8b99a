"""Helpers for tests of the operations surface: HTTP GETs and Prometheus text parsing."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families


async def http_get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """GET `path` from the ops server; returns (status, body)."""
    return await http_request(port, f"GET {path}", host)


async def http_request(port: int, line: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """Send one request (`line` is method and path) to the ops server; (status, body)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"{line} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition, keyed by name and label set."""
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The sample `name` with exactly these labels; KeyError if absent."""
    return found[(name, frozenset(labels.items()))]
