"""Reading a Redis URL ourselves: credentials in any spelling, one-line errors, safe masking.

redis-py splits a URL with `urllib.parse`, which ends the host part at the first `/`, `?` or
`#`: a raw `#` in a password becomes a fragment, and the error that follows ("Port could not be
cast to integer value as 'pa'") shows a piece of the password. A path that is not a number is
silently read as database 0. So the URL is split here first, at the LAST `@` (passwords may hold
`@`), its userinfo percent-encoded for redis-py, and every other part checked, with messages
that never repeat the userinfo. Percent-encoded sequences in the userinfo are decoded, as
redis-py does; an `@` in the query must be percent-encoded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote

SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+cluster",
    "rediss+cluster",
    "redis+sentinel",
    "rediss+sentinel",
)

STANDALONE, CLUSTER, SENTINEL = "standalone", "cluster", "sentinel"
"""Topologies: one server (or a primary with replicas reached directly), a Redis Cluster
(`redis+cluster://host:port[,host:port...]`), a primary found through Sentinel
(`redis+sentinel://host:port[,host:port...]/service_name[/db]`)."""

MASK = "***"

SECRET_WORDS = ("password", "passwd", "pwd", "secret", "token", "credential", "apikey", "api_key")
"""Option and query keys whose values are never shown."""

_INT_QUERY = ("db", "ssl_min_version", "protocol", "max_connections", "health_check_interval")
_BOOL_FALSE = {"0", "f", "false", "n", "no"}


@dataclass(frozen=True, slots=True)
class RedisUrl:
    """A Redis URL split into its parts; `userinfo` as written (raw or percent-encoded)."""

    scheme: str
    userinfo: str | None
    location: str
    """Everything after the userinfo: host[:port][/db][?query], or the socket path."""

    @property
    def username(self) -> str | None:
        if self.userinfo is None or ":" not in self.userinfo:
            return None
        return unquote(self.userinfo.partition(":")[0]) or None

    @property
    def password(self) -> str | None:
        """The password, decoded; a userinfo without a colon counts as a bare password."""
        if self.userinfo is None:
            return None
        user, colon, password = self.userinfo.partition(":")
        return unquote(password if colon else user) or None

    @property
    def query(self) -> dict[str, str]:
        """The query's options, decoded; the first value of a repeated one."""
        _, _, query = self.location.partition("?")
        return {k: v[0] for k, v in parse_qs(query.partition("#")[0]).items()}

    @property
    def topology(self) -> str:
        """`standalone`, `cluster` or `sentinel`, from the scheme's `+` part."""
        _, plus, kind = self.scheme.partition("+")
        return kind if plus else STANDALONE

    @property
    def tls(self) -> bool:
        return self.scheme.startswith("rediss")

    @property
    def base_scheme(self) -> str:
        """`redis`, `rediss` or `unix`: the scheme without its topology."""
        return self.scheme.partition("+")[0]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The comma-separated host:port pairs of the authority (port 6379, or 26379 for
        sentinels, when left out)."""
        authority = re.split(r"[/?#]", self.location, maxsplit=1)[0]
        default = 26379 if self.topology == SENTINEL else 6379
        found = []
        for address in authority.split(","):
            if address.startswith("["):
                host, _, port = address[1:].partition("]")
                port = port.removeprefix(":")
            else:
                host, _, port = address.rpartition(":") if ":" in address else (address, "", "")
            found.append((host or "localhost", int(port) if port else default))
        return found

    @property
    def path_parts(self) -> list[str]:
        """The path after the authority, split at `/` (empty parts dropped)."""
        authority = re.split(r"[/?#]", self.location, maxsplit=1)[0]
        path = self.location[len(authority) :].partition("?")[0].partition("#")[0]
        return [part for part in path.split("/") if part]

    @property
    def service_name(self) -> str | None:
        """Sentinel: the name the sentinels monitor the primary under."""
        parts = self.path_parts
        return unquote(parts[0]) if self.topology == SENTINEL and parts else None

    @property
    def db(self) -> int:
        """The database number (the path after the host; after the service name, for Sentinel)."""
        parts = self.path_parts[1:] if self.topology == SENTINEL else self.path_parts
        return int(parts[0]) if parts and parts[0].isdigit() else 0

    def for_redis_py(self) -> str:
        """The URL with its userinfo percent-encoded, so that redis-py splits it right."""
        if self.userinfo is None:
            return f"{self.scheme}://{self.location}"
        user, colon, password = self.userinfo.partition(":")
        encoded = _encode(user) + (":" + _encode(password) if colon else "")
        return f"{self.scheme}://{encoded}@{self.location}"

    def masked(self) -> str:
        """The URL with its password and secret query options replaced by `***`."""
        location = mask_query(self.location)
        if self.userinfo is None:
            return f"{self.scheme}://{location}"
        user, colon, _ = self.userinfo.partition(":")
        shown = f"{user}:{MASK}" if colon else MASK
        return f"{self.scheme}://{shown}@{location}"


def _encode(part: str) -> str:
    return quote(unquote(part), safe="")


def split(url: str) -> RedisUrl:
    """Split at `://` and at the last `@`.

    Raises:
        ValueError: no scheme, or not one of redis, rediss, unix.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError(
            "must start with redis://, rediss:// or unix:// (or redis+cluster://, "
            "redis+sentinel://, with rediss+ for TLS)"
        )
    userinfo, at, location = rest.rpartition("@")
    return RedisUrl(scheme, userinfo if at else None, location)


def parse(url: str) -> RedisUrl:
    """Split and check a Redis URL; error messages never contain its userinfo.

    Raises:
        ValueError: what is wrong, naming the part (port, database, query option).
    """
    parsed = split(url)
    if parsed.topology != STANDALONE:
        _check_topology(parsed)
    elif parsed.scheme != "unix":
        _check_location(parsed.location)
    _check_query(parsed.query)
    return parsed


def _check_topology(parsed: RedisUrl) -> None:
    """Cluster and Sentinel URLs: every address checked, and the path they allow."""
    authority = re.split(r"[/?#]", parsed.location, maxsplit=1)[0]
    if not authority:
        raise ValueError(f"{parsed.scheme}:// needs at least one host:port")
    for address in authority.split(","):
        if not address:
            raise ValueError("an empty address in the comma-separated host list")
        _check_location(address)
    parts = parsed.path_parts
    if parsed.topology == CLUSTER:
        if parts and parts != ["0"]:
            raise ValueError("a Redis Cluster has only database 0: leave the path out")
        return
    if not parts:
        raise ValueError(
            "redis+sentinel:// needs the service name after the hosts: "
            "redis+sentinel://host:26379/mymaster[/db]"
        )
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError("after the Sentinel service name, only a database number may follow")


def check_addresses(addresses: list[str]) -> None:
    """Sentinel addresses given apart from a URL (`host[:port]`, `[v6]:port`), each checked.

    Raises:
        ValueError: none at all, an empty one, or a port that is not 1 to 65535.
    """
    if not addresses:
        raise ValueError("needs at least one host:port")
    for address in addresses:
        if not address:
            raise ValueError("an empty address in the comma-separated host list")
        if re.search(r"[/?#@,\s]", address):
            raise ValueError(f"{address!r} is not a host:port")
        _check_location(address)


def with_sentinels(data: RedisUrl, sentinels: list[str], service: str) -> RedisUrl:
    """The `redis+sentinel://` URL equivalent to a data-node URL plus sentinel settings.

    The data-node URL keeps what only it can say: TLS (`rediss://`), the credentials, the
    database and the query options; the sentinels and the service name come from the settings.
    """
    scheme = ("rediss" if data.tls else "redis") + "+sentinel"
    _, question, query = data.location.partition("?")
    location = f"{','.join(sentinels)}/{quote(service, safe='')}/{data.db}{question}{query}"
    return RedisUrl(scheme, data.userinfo, location)


def names_host(parsed: RedisUrl) -> bool:
    """Whether a `redis://` or `rediss://` URL names a host (`redis:///0` names none)."""
    return bool(re.split(r"[/?#]", parsed.location, maxsplit=1)[0])


def _check_location(location: str) -> None:
    authority = re.split(r"[/?#]", location, maxsplit=1)[0]
    path = location[len(authority) :].partition("?")[0].partition("#")[0]
    if authority.startswith("["):
        _, bracket, port_part = authority.partition("]")
        if not bracket:
            raise ValueError("an IPv6 host must be closed with ]")
        port = port_part.removeprefix(":") if port_part.startswith(":") else None
        if port_part and port is None:
            raise ValueError("unexpected text after the IPv6 host")
    else:
        _, colon, port = authority.partition(":")
        port = port if colon else None
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"the port must be a number from 1 to 65535, not {port!r}")
    database = path.strip("/")
    if database and not database.isdigit():
        raise ValueError(f"the database (the path after the host) must be a number, not {path!r}")


def _check_query(query: dict[str, str]) -> None:
    for name in _INT_QUERY:
        if name in query and not query[name].isdigit():
            raise ValueError(f"the URL option {name} must be a number")


def disables_tls_verification(parsed: RedisUrl) -> str | None:
    """The URL option that turns certificate or host name checks off, if any."""
    query = parsed.query
    if query.get("ssl_cert_reqs", "required").lower() in {"none", "optional"}:
        return f"ssl_cert_reqs={query['ssl_cert_reqs']}"
    if query.get("ssl_check_hostname", "true").lower() in _BOOL_FALSE:
        return f"ssl_check_hostname={query['ssl_check_hostname']}"
    return None


def enables_tls_verification(parsed: RedisUrl) -> str | None:
    """The URL option that asks for certificate checks, if any."""
    reqs = parsed.query.get("ssl_cert_reqs")
    return f"ssl_cert_reqs={reqs}" if reqs and reqs.lower() == "required" else None


_QUERY_SECRET = re.compile(
    r"(?P<key>[?&;][^=&#\s]*(?:" + "|".join(SECRET_WORDS) + r")[^=&#\s]*=)[^&#\s]*",
    re.IGNORECASE,
)


def mask_query(text: str) -> str:
    """Secret-looking `key=value` options of a URL query replaced by `***`."""
    return _QUERY_SECRET.sub(lambda m: m["key"] + MASK, text)


_URL = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<rest>\S*)")
_DSN_SECRET = re.compile(
    r"(?P<key>(?:^|(?<=\s))[A-Za-z_]*(?:" + "|".join(SECRET_WORDS) + r")[A-Za-z_]*)"
    r"\s*=\s*(?:'(?:[^'\\]|\\.)*'|\S+)",
    re.IGNORECASE,
)


def mask_url(url: str) -> str:
    """Any URL (the whole string) with credentials masked: userinfo and secret query options.

    The userinfo runs to the last `@`, so a raw `@`, `/`, `?`, `#` or space in a password is
    masked with the rest of it.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.-]*", scheme):
        return mask_text(url)
    return RedisUrl(scheme, *_userinfo(rest)).masked()


def _userinfo(rest: str) -> tuple[str | None, str]:
    userinfo, at, location = rest.rpartition("@")
    return (userinfo if at else None), location


def mask_text(text: str) -> str:
    """Credentials in free text masked: URLs (up to white space) and libpq `password=...`."""
    text = _DSN_SECRET.sub(lambda m: m["key"] + "=" + MASK, text)
    return _URL.sub(lambda m: mask_url(m[0]), text)


_DSN_PASSWORD = re.compile(
    r"(?:^|(?<=\s))password\s*=\s*(?:'(?P<quoted>(?:[^'\\]|\\.)*)'|(?P<bare>\S+))",
    re.IGNORECASE,
)


def passwords_in(text: str) -> list[str]:
    """The passwords written in a connection string: a URL's userinfo, or libpq `password=`."""
    scheme, sep, rest = text.partition("://")
    if sep and re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.-]*", scheme):
        userinfo, _ = _userinfo(rest)
        found = [] if userinfo is None else [RedisUrl(scheme, userinfo, "").password or ""]
    else:
        found = [
            re.sub(r"\\(.)", r"\1", m["quoted"]) if m["quoted"] is not None else m["bare"]
            for m in _DSN_PASSWORD.finditer(text)
        ]
    return [p for p in found if p]


def secret_forms(secret: str) -> set[str]:
    """The spellings a secret can take in text: as is, percent-encoded, percent-decoded."""
    return {secret, quote(secret, safe=""), quote(secret), unquote(secret)}
