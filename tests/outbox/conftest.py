"""Fixtures of the outbox tests: a PostgreSQL database of their own, a fresh table per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from worker.outbox import migrate

ADMIN_DSN = os.environ.get(
    "SYNCWORKER_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
"""A server the suite may create databases on (trust auth locally and in CI)."""


@pytest.fixture(scope="session")
def outbox_dsn() -> Iterator[str]:
    """DSN of a fresh database for this session; dropped at the end."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        admin = psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.exit(f"no PostgreSQL server answers at {ADMIN_DSN}: {exc}", returncode=3)
    name = f"syncworker_outbox_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield make_conninfo(**{**conninfo_to_dict(ADMIN_DSN), "dbname": name})
        finally:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def table(outbox_dsn: str) -> str:
    """A fresh, migrated outbox table (its own advisory lock and NOTIFY channel)."""
    import psycopg

    name = f"outbox_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(outbox_dsn) as conn:
        migrate(conn, name)
    return name


@pytest.fixture
def pg(outbox_dsn: str) -> Iterator[Any]:
    """An autocommit connection for the test's own checks."""
    import psycopg

    with psycopg.connect(outbox_dsn, autocommit=True) as conn:
        yield conn
