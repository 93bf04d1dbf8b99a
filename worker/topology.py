"""Clients for Redis Cluster and Sentinel, and what differs when the keys live on a cluster.

`worker.connection.connect` builds a plain client for `redis://`; this module builds the
other two from the same options:

- `redis+cluster://host:port[,host:port...]`: redis-py's `RedisCluster`, which learns the
  slot map from any of the start-up nodes, sends each command to the primary of its key's
  slot, and follows MOVED/ASK redirections (a failover, a resharding);
- `redis+sentinel://host:port[,host:port...]/service_name[/db]`: redis-py's `Sentinel`
  `master_for(service_name)`, a client whose connections ask the sentinels where the
  primary is; after a failover the next connection goes to the promoted replica.

Both offer the commands the runtime uses under the same names as `redis.asyncio.Redis`, so
they are typed as one here. What a cluster does not offer is handled where it matters:
a read per stream instead of one across streams (`worker.runtime.reader`), derived keys in
the stream's slot (`worker.keys`), and scripts that cannot go through a cluster pipeline
(`batch`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoScriptError

from worker.redis_url import CLUSTER, SENTINEL, RedisUrl

_SENTINEL_OPTIONS = ("socket_timeout", "socket_connect_timeout")
"""Options the connections to the sentinels themselves take from the worker's settings."""


def client(
    parsed: RedisUrl, options: dict[str, Any], sentinel_options: dict[str, Any] | None = None
) -> Redis:
    """A client for a `redis+cluster://` or `redis+sentinel://` URL.

    Args:
        parsed: the URL; a username and password in it win over those in `options`, as they
            do for `redis://` URLs.
        options: the connection options `connect` built (timeouts, credentials, TLS).
        sentinel_options: Sentinel: the sentinels' own credentials and TLS options (none by
            default: the data nodes' credentials are never sent to them); they share the
            timeouts of `options`.
    """
    options = dict(options)
    if parsed.password is not None:
        options["password"] = parsed.password
        options.pop("username", None)
    if parsed.username is not None:
        options["username"] = parsed.username
    if parsed.tls:
        options["ssl"] = True
    if parsed.topology == CLUSTER:
        nodes = [ClusterNode(host, port) for host, port in parsed.addresses]
        return cast(Redis, RedisCluster(startup_nodes=nodes, **options))
    assert parsed.topology == SENTINEL and parsed.service_name is not None
    sentinel_kwargs: dict[str, Any] = {k: options[k] for k in _SENTINEL_OPTIONS if k in options}
    # Each sentinel is asked once per discovery: redis-py goes on to the next one, and the
    # connection to the primary repeats the discovery as a whole (with back-off). Retries
    # per sentinel would only make a dead sentinel, or refused credentials, cost seconds.
    sentinel_kwargs["retry"] = Retry(NoBackoff(), 0)
    if sentinel_options is None:
        sentinel_options = {"ssl": True} if parsed.tls else {}
    sentinel_kwargs.update(sentinel_options)
    # The pool would pick the connection class from `ssl`; ours fail at once on a refused login.
    tls = options.pop("ssl", False)
    options["connection_class"] = _SentinelManagedSSLConnection if tls else _SentinelManaged
    sentinel = _Sentinel(parsed.addresses, sentinel_kwargs=sentinel_kwargs, **options)
    return cast(
        Redis, sentinel.master_for(parsed.service_name, redis_class=_SentinelRedis, db=parsed.db)
    )


class SentinelLoginRefused(AuthenticationError):
    """No sentinel named the primary, and some refused the login: their credentials
    (`redis_sentinel_username`, `redis_sentinel_password`) are wrong or missing.

    An `AuthenticationError`, so the commands report it as a refused login (exit 1); the
    worker ends at start-up on it instead of waiting for the sentinels to accept.
    """


class _SentinelNode(Redis):
    """A client of one sentinel that remembers whether its last SENTINEL MASTERS was a
    refused login (redis-py's `discover_master` keeps only the text of each error)."""

    refused: AuthenticationError | None = None

    async def sentinel_masters(self) -> Any:
        self.refused = None
        try:
            return await super().sentinel_masters()
        except AuthenticationError as exc:
            self.refused = exc
            raise


class _Sentinel(Sentinel):
    """redis-py's Sentinel, which says so when the sentinels refuse the login, instead of
    "No master found"."""

    def __init__(
        self,
        sentinels: list[tuple[str, int]],
        *,
        sentinel_kwargs: dict[str, Any],
        **connection_kwargs: Any,
    ) -> None:
        super().__init__([], sentinel_kwargs=sentinel_kwargs, **connection_kwargs)  # type: ignore[no-untyped-call]
        self.sentinels = [
            _SentinelNode(host=host, port=port, **sentinel_kwargs) for host, port in sentinels
        ]

    async def discover_master(self, service_name: str) -> Any:
        try:
            return await super().discover_master(service_name)
        except MasterNotFoundError:
            refused = [
                f"{node.connection_pool.connection_kwargs['host']}:"
                f"{node.connection_pool.connection_kwargs['port']} ({node.refused})"
                for node in self.sentinels
                if isinstance(node, _SentinelNode) and node.refused is not None
            ]
            if not refused:
                raise
            raise SentinelLoginRefused(
                "the sentinels refused the login: " + ", ".join(refused) + "; check "
                "SYNCWORKER_REDIS_SENTINEL_USERNAME and SYNCWORKER_REDIS_SENTINEL_PASSWORD"
            ) from None


class _SentinelManaged(SentinelManagedConnection):
    """A connection to the primary the sentinels name, which does not ask them again (with
    back-off: seconds) when they refused the login: they will refuse it every time."""

    async def connect(self) -> None:
        await self.retry.call_with_retry(
            self._connect_retry,
            lambda error: asyncio.sleep(0),
            is_retryable=lambda error: not isinstance(error, SentinelLoginRefused),
        )


class _SentinelManagedSSLConnection(_SentinelManaged, SSLConnection):
    pass


class _SentinelRedis(Redis):
    """The primary's client, which also closes its connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for sentinel in self.connection_pool.sentinel_manager.sentinels:  # type: ignore[attr-defined]
            await sentinel.aclose()


def is_cluster(redis: Any) -> bool:
    """Whether `redis` is a Redis Cluster client."""
    return isinstance(redis, RedisCluster)


def batch(redis: Redis, scripts: Iterable[Any] = ()) -> Any:
    """A non-transactional pipeline; on a cluster, one that also takes script calls.

    redis-py refuses EVALSHA in a cluster pipeline. On a cluster this returns a `ScriptBatch`:
    commands queue the same way, and `execute` sends them concurrently, each to the primary
    of its key's slot. Off a cluster it is `redis.pipeline(transaction=False)`.

    Args:
        scripts: the registered scripts that will be called with `client=` the batch, so
            that a server that lost its script cache (a failover, a restart) gets them again.
    """
    if not is_cluster(redis):
        return redis.pipeline(transaction=False)
    return ScriptBatch(redis, scripts)


class ScriptBatch:
    """The part of a pipeline the runtime uses (queued commands, `execute(raise_on_error)`),
    for a cluster client: every call is queued, then sent concurrently.

    As with a pipeline, a command refused by Redis comes back as the exception in its place;
    a connection error raises.
    """

    def __init__(self, redis: Redis, scripts: Iterable[Any] = ()) -> None:
        self._redis = redis
        self._scripts = {script.sha: script for script in scripts}
        self._calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def queue(*args: Any, **kwargs: Any) -> ScriptBatch:
            self._calls.append((name, args, kwargs))
            return self

        return queue

    async def evalsha(self, sha: str, numkeys: int, *args: Any) -> ScriptBatch:
        """Queue a script call (`Script.__call__(..., client=batch)` awaits this)."""
        self._calls.append(("evalsha", (sha, numkeys, *args), {}))
        return self

    async def _run(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            return await getattr(self._redis, name)(*args, **kwargs)
        except NoScriptError:
            script = self._scripts.get(args[0]) if name == "evalsha" else None
            if script is None:
                raise
            await self._redis.script_load(script.script)
            return await self._redis.evalsha(*args)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send every queued call; their replies in order.

        Raises:
            the first connection error; with `raise_on_error`, also the first refusal.
        """
        calls, self._calls = self._calls, []
        replies = await asyncio.gather(
            *(self._run(name, args, kwargs) for name, args, kwargs in calls),
            return_exceptions=True,
        )
        from worker.connection import REDIS_DOWN  # connection imports this module

        for reply in replies:
            if isinstance(reply, BaseException) and (
                raise_on_error or isinstance(reply, REDIS_DOWN) or not isinstance(reply, Exception)
            ):
                raise reply
        return list(replies)

    async def __aenter__(self) -> ScriptBatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._calls = []


async def refresh_slots(redis: Any) -> None:
    """Have a cluster client ask the nodes for the slot map again, and find its keys with a
    live node (nothing for the other clients). For a read loop to call after a failed read.

    redis-py finds the keys of a command whose keys move (XREADGROUP: after STREAMS) by
    asking one node, COMMAND GETKEYS, before it picks the slot's node; that node is the
    client's default node, the first primary it learned of. When a failover kills that
    primary, every such command fails right there, before redis-py's own error handling could
    read the map again or choose another default node: a worker's ordered reads were seen
    failing for as long as a test waited (30 s, one failover in three), while its other
    commands went to the promoted replica.
    """
    if not is_cluster(redis):
        return
    with contextlib.suppress(Exception):  # the next read reports what is still wrong
        await redis.nodes_manager.initialize()
        primaries = {node.name for node in redis.get_primaries()}
        if redis.commands_parser.node.name not in primaries:
            await redis.commands_parser.initialize(redis.get_default_node())
