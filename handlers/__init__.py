"""Built-in handler plugins that keep services in sync: Redis projections, stream relays and a
PostgreSQL sink, plus `handlers.idempotent` for plugin authors.

Delivery is at least once; each of these makes its *effect* exactly once. The Redis plugins
write their effect, a guard (entity version or a per-message marker) and, by default, the
acknowledgement in one Lua script; the SQL sink writes its effect and an inbox row in one
transaction. Each is registered as an entry point of `syncworker.handlers`.
"""
