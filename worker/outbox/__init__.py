"""The producer side: a transactional outbox in PostgreSQL, relayed to Redis streams.

A service writes its events as rows of the outbox table in the same transaction as the change
they describe (`add`), so an event exists if and only if its transaction committed. The relay
(`syncworker outbox run`, or `Relay`) appends committed rows to their streams and deletes them.
Needs the `postgres` extra (psycopg 3).
"""

from worker.outbox.producer import add, insert_sql
from worker.outbox.relay import Relay, RelayOptions
from worker.outbox.schema import TABLE, migrate
from worker.outbox.stats import OutboxStats

__all__ = ["TABLE", "OutboxStats", "Relay", "RelayOptions", "add", "insert_sql", "migrate"]
