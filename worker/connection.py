"""Redis clients built from settings; what a failed call means.

Everything about talking to Redis that several loops share lives here: which errors are
worth repeating (`REDIS_DOWN`), one reconnect back-off (`Reconnect`) instead of one per loop,
and `text` for the bytes redis-py hands back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    BusyLoadingError,
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker import redis_url, topology
from worker.errors import EffectNotReplicated
from worker.redis_url import mask_url as mask_url  # where callers have always found it
from worker.runtime.stats import Stats
from worker.settings import WorkerSettings

log = structlog.get_logger("worker.connection")

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
"""Errors after which a Redis call is worth repeating once the server answers again."""

LOGIN_REFUSED = (AuthenticationError, AuthenticationWrongNumberOfArgsError)
"""The server answered and refused the credentials. redis-py makes these ConnectionErrors, so
catch them before `REDIS_DOWN`: the commands report them as a refusal (exit 1), not as an
unreachable server (exit 2)."""

REFUSED_FOR_NOW = ("OOM", "BUSY", "LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")
"""Error codes of a server that refuses a command for now (out of memory, a long script, a
replica during failover...): the same command succeeds once the server recovers, so the
entry it was for is not to blame."""


_REFUSED_CLASSES = (
    EffectNotReplicated,  # the effect's replicas did not confirm it in time
    OutOfMemoryError,
    ReadOnlyError,
    TryAgainError,
    ClusterDownError,
    BusyLoadingError,
)


def refused_for_now(exc: BaseException) -> bool:
    """Whether `exc` is Redis refusing a command for a reason of its own, not of the command.

    redis-py strips the code of the errors it maps to classes (OutOfMemoryError, ...) and keeps
    it in `status_code`; unmapped ones (BUSY) keep it at the start of the message.
    LOADING is mapped to BusyLoadingError, a connection error (so in REDIS_DOWN as well).
    """
    if isinstance(exc, _REFUSED_CLASSES):
        return True
    if not isinstance(exc, ResponseError):
        return False
    code = getattr(exc, "status_code", None) or str(exc).partition(" ")[0]
    return code in REFUSED_FOR_NOW


class RedisRefused(Exception):
    """Redis refused some of a flush's commands for now; they were queued again."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


def text(value: Any) -> str:
    """A Redis reply (bytes, str or number) as text; bytes are expected to be UTF-8."""
    return value.decode() if isinstance(value, bytes) else str(value)


class Reconnect:
    """Capped exponential back-off for one loop's Redis calls.

    Every loop that talks to Redis keeps turning through an outage; this is the one place
    that decides how long it waits, counts each failure under `operation`, and logs an outage
    once when it starts and once when it ends, instead of once per attempt.

    Args:
        operation: the label of `syncworker_redis_errors_total` and of the log lines.
        stats: where failures are counted.
        first: seconds before the first retry; doubled after each failure up to `cap`.
    """

    def __init__(
        self, operation: str, stats: Stats, *, first: float = 0.1, cap: float = 5.0
    ) -> None:
        self.operation = operation
        self.stats = stats
        self.first = first
        self.cap = cap
        self.delay = first
        self.down = False

    def failed(self, exc: BaseException) -> float:
        """Count a failure and return the seconds to wait before the next attempt."""
        self.stats.redis_errors[self.operation] += 1
        delay = self.delay
        if not self.down:
            cause = exc.cause if isinstance(exc, RedisRefused) else exc
            log.warning(
                "redis.unavailable",
                operation=self.operation,
                error_type=type(cause).__name__,
                error=str(cause),
                retry_in_s=delay,
            )
            self.down = True
        self.delay = min(delay * 2, self.cap)
        return delay

    async def pause(self, exc: BaseException) -> None:
        """`failed`, then sleep for the delay it returned."""
        await asyncio.sleep(self.failed(exc))

    def succeeded(self) -> None:
        """Redis answered: end the outage, if there was one, and start over from `first`."""
        if self.down:
            log.info("redis.available", operation=self.operation)
            self.down = False
        self.delay = self.first


_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # redis[hiredis] brings it; without it, redis-py's own packer
    _hiredis_pack = None


class _HiredisPacking(AbstractConnection):
    """Serialises commands with hiredis, as redis-py's synchronous client already does.

    redis-py's asyncio connections pack every argument in Python, re-joining a growing
    buffer each time: 0.6 µs per entry id of an XACK, more than the rest of an ack costs.
    hiredis does it in C for 0.08 µs. Arguments hiredis does not take (bool, None, lists...)
    go to redis-py's packer, so that they fail with redis-py's own DataError.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])  # "XINFO GROUPS" is two words
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            assert _hiredis_pack is not None  # the class is only used when it is
            return [_hiredis_pack(args)]
        except TypeError:
            return super().pack_command(*args)


class _FastConnection(_HiredisPacking, Connection):
    pass


class _FastSSLConnection(_HiredisPacking, SSLConnection):
    pass


class _FastUnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    pass


_FAST_CLASSES: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _FastConnection,
    SSLConnection: _FastSSLConnection,
    UnixDomainSocketConnection: _FastUnixConnection,
}


def connect(settings: WorkerSettings, *, blocking_reads: bool = False) -> Redis:
    """A client for `settings.redis_url` (or the sentinels of the settings) that returns bytes.

    A `redis+cluster://` or `redis+sentinel://` URL, or `redis_sentinels`, gives a client of
    that topology (`worker.topology`); it offers the commands the runtime uses under the same
    names.

    Args:
        blocking_reads: allow for XREADGROUP BLOCK in the socket timeout, so that a read
            that waits for data is not mistaken for a dead connection.
    """
    timeout = settings.redis_timeout + (settings.block if blocking_reads else 0.0)
    options: dict[str, Any] = {
        "decode_responses": False,
        "socket_timeout": timeout,
        "socket_connect_timeout": settings.redis_timeout,
        "health_check_interval": 30,
    }
    if settings.redis_username:
        options["username"] = settings.redis_username
    if settings.redis_password is not None:
        options["password"] = settings.redis_password.get_secret_value()
    parsed = settings.connection_url
    if parsed.tls:
        options.update(_tls_options(settings))
    if parsed.topology == redis_url.SENTINEL:
        return topology.client(parsed, options, _sentinel_options(settings, parsed))
    if parsed.topology != redis_url.STANDALONE:
        other = topology.client(parsed, options)
        if _hiredis_pack is not None and topology.is_cluster(other):
            _pack_cluster_with_hiredis(other)
        return other
    # Userinfo percent-encoded, so that a raw # / ? @ in a password reaches the server whole.
    url = parsed.for_redis_py()
    client = Redis.from_url(url, **options)
    pool = client.connection_pool
    if _hiredis_pack is not None:
        # The URL's scheme chose the class (TCP, TLS or a Unix socket); keep that choice.
        # Connections are made on first use, so every one of them is of the faster kind.
        pool.connection_class = _FAST_CLASSES.get(pool.connection_class, pool.connection_class)
    return client


def _sentinel_options(settings: WorkerSettings, parsed: redis_url.RedisUrl) -> dict[str, Any]:
    """The sentinels' own credentials and TLS: Sentinel processes usually have a password
    (or ACL user) of their own, and may or may not speak TLS when the data nodes do."""
    options: dict[str, Any] = {}
    if settings.redis_sentinel_username:
        options["username"] = settings.redis_sentinel_username
    if settings.redis_sentinel_password is not None:
        options["password"] = settings.redis_sentinel_password.get_secret_value()
    tls = parsed.tls if settings.redis_sentinel_tls is None else settings.redis_sentinel_tls
    if tls:
        options["ssl"] = True
        options.update(_tls_options(settings))
    return options


def _pack_cluster_with_hiredis(cluster: Any) -> None:
    """Make the connections of a `RedisCluster` pack commands with hiredis too.

    The cluster client does not use a connection pool: each node makes its connections from
    its own `connection_class`, taken from the client's `connection_kwargs` (the same dict
    the client keeps for the nodes it learns of later, after a failover or a resharding).
    Connections are made on first use, so every one of them is of the faster kind. Without
    this a worker on a cluster spent a tenth of its time in redis-py's packer
    (docs/performance.md, "Redis Cluster").
    """
    kwargs = cluster.connection_kwargs
    plain = kwargs.get("connection_class", Connection)
    fast = _FAST_CLASSES.get(plain, plain)
    kwargs["connection_class"] = fast
    for node in cluster.nodes_manager.startup_nodes.values():
        node.connection_class = _FAST_CLASSES.get(node.connection_class, node.connection_class)


def _tls_options(settings: WorkerSettings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "ssl_cert_reqs": "required" if settings.redis_tls_verify else "none",
    }
    if not settings.redis_tls_verify:
        options["ssl_check_hostname"] = False
    if settings.redis_tls_ca_file:
        options["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
    if settings.redis_tls_cert_file:
        options["ssl_certfile"] = str(settings.redis_tls_cert_file)
    if settings.redis_tls_key_file:
        options["ssl_keyfile"] = str(settings.redis_tls_key_file)
    return options


async def tolerate(operation: str, stats: Stats, step: Callable[[], Awaitable[None]]) -> bool:
    """Run one turn of a background loop's Redis work; log and count what Redis refused.

    Background loops (heartbeat, retries, takeover) try again on their next turn anyway, so an
    outage or a refusal only costs that turn. NOGROUP is left to the read loop, which
    recreates the group; nothing is pending in a new one.

    Returns:
        True if the turn ran to its end; False if Redis was unreachable or refused it.
    """
    try:
        await step()
    except REDIS_DOWN as exc:
        stats.redis_errors[operation] += 1
        log.warning("redis.unavailable", operation=operation, error=str(exc))
        return False
    except ResponseError as exc:
        if "NOGROUP" not in str(exc):
            stats.redis_errors[operation] += 1
            log.error("redis.refused", operation=operation, error=str(exc))
        return False
    return True
