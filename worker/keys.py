"""Names of the keys derived from a stream, laid out so that Redis Cluster keeps them together.

Every atomic step of the runtime (dead-lettering an entry and acking it, replaying a dead
letter, handing entries back, pruning a consumer) is one Lua script or one MULTI over the
stream and keys derived from it. On Redis Cluster all keys of one script must hash to one
slot, and a key hashes on its *hash tag* (the text between the first `{` and the next `}`,
when not empty) or else on its whole name. So on a cluster a derived key carries the
stream's tag: the dead letters of `orders` live in `{orders}:dlq`, which hashes like
`orders`. A stream that already has a tag (`{tenant1}.orders`) keeps it:
`{tenant1}.orders:dlq`.

Off a cluster (one server, or a primary with replicas behind Sentinel) slots do not exist,
and the derived keys keep the names they always had (`orders:dlq`), so that upgrading needs
no migration. The hand-over hash is the one exception: it was always tagged
(`{orders}:handover`), on every topology.
"""

from __future__ import annotations

import binascii

SLOTS = 16384
"""Hash slots of a Redis Cluster."""


def hash_tag(key: str) -> str | None:
    """The part of `key` Redis Cluster hashes, if it is a tag (None: the whole key is hashed).

    Redis takes the first `{` and the first `}` after it; an empty tag (`{}`) counts as none.
    """
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


def key_slot(key: str) -> int:
    """The Redis Cluster hash slot of `key` (CRC16/XMODEM of its tag or whole name, mod 16384)."""
    tag = hash_tag(key)
    hashed = (key if tag is None else tag).encode()
    return binascii.crc_hqx(hashed, 0) % SLOTS


def derived(stream: str, suffix: str, cluster: bool) -> str:
    """The key `stream + suffix`, tagged to share `stream`'s slot on a cluster.

    Args:
        stream: the stream the key belongs to.
        suffix: what follows, e.g. `:dlq`.
        cluster: whether the keys live on a Redis Cluster; off a cluster the name is
            `stream + suffix`, as it always was.

    A stream name with a `}` but no tag (`a}b`) cannot be wrapped in a tag of its own (the
    `}` would end it early); its derived keys keep the plain name, and `syncworker check`
    reports that they land in another slot.
    """
    if not cluster or hash_tag(stream) is not None or "}" in stream:
        return stream + suffix
    return "{" + stream + "}" + suffix


def same_slot(*keys: str) -> bool:
    """Whether every key hashes to one slot (what a script over them needs on a cluster)."""
    return len({key_slot(k) for k in keys}) <= 1


def colocated(anchor: str, name: str) -> str:
    """`name` with a hash tag that puts it in `anchor`'s slot: `{orders}name`.

    For the keys a handler keeps beside a target in another slot (its dedupe marker next to
    the entity it writes, say), so that the effect and its marker stay one atomic step.

    Raises:
        ValueError: `anchor` has a `}` but no tag, so no tag can name its slot.
    """
    tag = hash_tag(anchor)
    if tag is None:
        if "}" in anchor:
            raise ValueError(f"no hash tag can name the slot of {anchor!r} (it has a stray '}}')")
        tag = anchor
    return "{" + tag + "}" + name
