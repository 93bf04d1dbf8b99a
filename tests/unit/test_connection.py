"""Clients from `connect` send exactly the bytes redis-py would, packed by hiredis."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import (
    BusyLoadingError,
    DataError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)

from worker.connection import connect, refused_for_now
from worker.settings import WorkerSettings

_python_packer = Connection()

_arguments = st.lists(
    st.binary(max_size=30)
    | st.text(max_size=30)
    | st.integers()
    | st.floats(allow_nan=False)
    | st.binary(max_size=30).map(bytearray)
    | st.binary(max_size=30).map(memoryview),
    max_size=20,
)


def _client_connection(url: str) -> Any:
    client = connect(WorkerSettings(redis_url=url))
    return client.connection_pool.connection_class()


class TestPacking:
    @given(
        command=st.sampled_from(["XACK", "XINFO GROUPS", b"XREADGROUP", b"CONFIG GET"]),
        args=_arguments,
    )
    def test_same_bytes_as_redis_py(self, command: str | bytes, args: list[Any]) -> None:
        """Any command with str, bytes, int, float or buffer arguments packs identically."""
        ours = _client_connection("redis://localhost:6379/0")
        assert b"".join(ours.pack_command(command, *args)) == b"".join(
            _python_packer.pack_command(command, *args)
        )

    @pytest.mark.parametrize("bad", [True, None, [1], {"a": 1}])
    def test_unpackable_arguments_fail_as_in_redis_py(self, bad: Any) -> None:
        """Arguments Redis cannot take raise redis-py's own DataError."""
        ours = _client_connection("redis://localhost:6379/0")
        with pytest.raises(DataError, match="Invalid input of type"):
            ours.pack_command("SET", "key", bad)

    @pytest.mark.parametrize(
        ("url", "kind"),
        [
            ("redis://localhost:6379/0", Connection),
            ("rediss://localhost:6379/0", SSLConnection),
            ("unix:///run/redis.sock", UnixDomainSocketConnection),
        ],
    )
    def test_every_scheme_keeps_its_transport(self, url: str, kind: type) -> None:
        """TCP, TLS and Unix-socket URLs still get their own transport, with the faster packer."""
        connection = _client_connection(url)
        assert isinstance(connection, kind)
        assert type(connection).pack_command is not kind.pack_command


class TestClusterPacking:
    @pytest.mark.parametrize(
        ("url", "kind"),
        [
            ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", Connection),
            ("rediss+cluster://127.0.0.1:7000", SSLConnection),
        ],
    )
    def test_cluster_connections_pack_with_hiredis(self, url: str, kind: type) -> None:
        """A cluster client's nodes, those it starts from and those it learns of later
        (built from its connection options), make connections of their own transport that
        pack as redis-py would, with the faster packer."""
        client: Any = connect(WorkerSettings(redis_url=url))
        classes = [node.connection_class for node in client.nodes_manager.startup_nodes.values()]
        classes.append(client.connection_kwargs["connection_class"])
        for cls in classes:
            assert issubclass(cls, kind)
            assert cls.pack_command is not kind.pack_command
            connection = cls(host="127.0.0.1", port=7000)
            command = ("XREADGROUP", "GROUP", "g", "c", "COUNT", 256, "STREAMS", "s", ">")
            assert connection.pack_command(*command) == [
                b"".join(_python_packer.pack_command(*command))
            ]


class TestRefusedForNow:
    @pytest.mark.parametrize(
        ("error", "expected"),
        [
            (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), True),
            (ReadOnlyError("You can't write against a read only replica."), True),
            (ResponseError("BUSY Redis is busy running a script."), True),
            (BusyLoadingError("Redis is loading the dataset in memory"), True),
            (ResponseError("MASTERDOWN Link with MASTER is down"), True),
            (ResponseError("WRONGTYPE Operation against a key holding the wrong kind"), False),
            (ResponseError("NOGROUP No such key 'x' or consumer group 'g'"), False),
            (ResponseError("BUSYGROUP Consumer Group name already exists"), False),
            (ValueError("OOM"), False),
        ],
    )
    def test_only_the_servers_own_transient_refusals_count(
        self, error: BaseException, expected: bool
    ) -> None:
        """Out of memory, read-only, busy or failing over: yes; the command's own fault: no."""
        assert refused_for_now(error) is expected
