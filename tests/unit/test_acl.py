"""The ACL rules of partitioned streams and ordered routes (`worker.acl`): each partition's
keys, and no other stream's. tests/integration/test_acl.py grants them to a real user."""

from __future__ import annotations

from fnmatch import fnmatchcase

import pytest

from worker import acl


def patterns(rules: str) -> list[str]:
    """The key patterns of `rules`, without their `~`, `%R~` or `%W~` prefix."""
    return [r.split("~", 1)[1] for r in rules.split() if "~" in r]


def granted(rules: str, key: str) -> bool:
    return any(fnmatchcase(key, p) for p in patterns(rules))  # no escapes in these names


ORDERED = acl.rules("run", "orders", partitions=2, ordered=True)


@pytest.mark.parametrize(
    "key",
    [
        "{orders:0}",
        "{orders:1}:dlq",
        "{orders:1}:handover",
        "{orders:0}:presence:g:c",
        "{orders:1}:lease:g",
        "orders:members:g",
    ],
)
def test_an_ordered_route_gets_every_key_of_its_partitions(key: str) -> None:
    assert granted(ORDERED, key)


@pytest.mark.parametrize(
    "key",
    ["orders", "{orders:2}", "{orders:eu:0}", "{orders:eu:0}:lease:g", "{orders:0}x", "other"],
)
def test_no_key_of_another_partition_or_stream(key: str) -> None:
    """Listing each partition, not `{orders:*`: the stream `orders:eu`'s partitions stay out."""
    assert not granted(ORDERED, key)


def test_each_role_covers_every_partition_as_it_covers_one_stream() -> None:
    for role in ("status", "dlq-read", "dlq-replay", "dlq-purge", "trim", "consumers-prune"):
        rendered = acl.rules(role, "orders", partitions=3)
        for i in range(3):
            one = acl.rules(role, f"{{orders:{i}}}")
            assert set(patterns(one)) <= set(patterns(rendered)), role
        assert rendered.split("-@all")[1] == acl.rules(role, "orders").split("-@all")[1], role


def test_ordered_commands_follow_the_topology() -> None:
    one_server, cluster = (
        ORDERED.split(),
        acl.rules("run", "o", partitions=1, ordered=True, cluster=True).split(),
    )
    assert "+role" in one_server and "+cluster|nodes" not in one_server
    assert "+cluster|nodes" in cluster and "+role" not in cluster
    assert {"+wait", "+pexpire", "+zadd"} <= set(one_server) & set(cluster)
    assert "+role" not in acl.rules("run", "orders", partitions=2).split()  # not ordered


def test_refuses_what_cannot_be_partitioned() -> None:
    with pytest.raises(ValueError, match="partitions"):
        acl.rules("run", "orders", ordered=True)
    with pytest.raises(ValueError, match="braces"):
        acl.rules("publish", "{orders}", partitions=2)
    assert acl.rules("check", "orders", partitions=2) == acl.rules("check", "orders")
