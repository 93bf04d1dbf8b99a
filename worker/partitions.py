"""Partitioned streams: one logical stream split into N Redis streams, chosen by the key.

A route with `partitions = N` reads the streams `{orders:0}` ... `{orders:N-1}` instead of
`orders`. The whole name is the Redis Cluster hash tag, so the partitions of one logical
stream land on different slots (and so spread over the shards), while everything derived
from one partition by appending to its name (`{orders:3}:dlq`, its lease `{orders:3}:lease:...`,
its presence and hand-over keys) shares that partition's slot. Tags of the bare index
(`orders:{3}`) would put partition 3 of every logical stream on the same slot.

The partition of an entry is `crc32(key as UTF-8) mod N` (CRC-32/ISO-HDLC, the zlib and
IEEE 802.3 one: `zlib.crc32` in Python, `hash/crc32.ChecksumIEEE` in Go, `crc-32` or
`zlib.crc32` in Node), an unsigned 32-bit value. Producers in other languages compute the
same partition with that function. Entries without a key go to partition 0.
"""

from __future__ import annotations

import re
import zlib

MAX_PARTITIONS = 1024
"""Most partitions of one logical stream (each costs a lease, a group and a read slot)."""

_PARTITION = re.compile(r"^\{(?P<stream>.+):(?P<index>0|[1-9][0-9]*)\}$")


def partition_of(key: str | bytes | None, partitions: int) -> int:
    """The partition index of an entry with `key`, in `[0, partitions)`.

    Stable across processes, machines and languages: CRC-32 (IEEE) of the key's UTF-8 bytes,
    modulo the partition count. No key (None or empty) is partition 0.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, not {partitions}")
    if not key:
        return 0
    data = key.encode() if isinstance(key, str) else key
    return zlib.crc32(data) % partitions


def partition_name(stream: str, index: int) -> str:
    """The Redis stream of partition `index` of the logical `stream`: `{stream:index}`."""
    return f"{{{stream}:{index}}}"


def partition_names(stream: str, partitions: int) -> tuple[str, ...]:
    """Every partition stream of the logical `stream`, in index order."""
    return tuple(partition_name(stream, i) for i in range(partitions))


def stream_for(stream: str, key: str | bytes | None, partitions: int | None) -> str:
    """Where an entry with `key` goes: the logical stream itself when it is not partitioned
    (`partitions` None or 0), else its partition."""
    if not partitions:
        return stream
    return partition_name(stream, partition_of(key, partitions))


def logical_of(stream: str) -> tuple[str, int | None]:
    """The logical stream and partition index of a partition stream's name; a stream that is
    not a partition is its own logical stream, with index None."""
    found = _PARTITION.match(stream)
    if found is None:
        return stream, None
    return found["stream"], int(found["index"])


def check_partitioned_name(stream: str, partitions: int) -> None:
    """Refuse logical names that cannot be partitioned.

    Raises:
        ValueError: braces in the name (its partitions' hash tags would be cut short, and
            every partition would land on one slot), or a partition count out of range.
    """
    if "{" in stream or "}" in stream:
        raise ValueError(
            f"stream {stream!r} has partitions and so must not contain braces: its "
            f"partitions are named {partition_name(stream, 0)!r}..., each its own hash tag"
        )
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ValueError(f"partitions must be between 1 and {MAX_PARTITIONS}, not {partitions}")
