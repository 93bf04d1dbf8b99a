"""Fixtures of the handler tests: a PostgreSQL database of their own, created and dropped."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

ADMIN_DSN = os.environ.get(
    "SYNCWORKER_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
"""A server the suite may create databases on (trust auth locally and in CI)."""


def _with_database(dsn: str, database: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    params["dbname"] = database
    return make_conninfo(**params)


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN of a fresh database for this session; dropped at the end."""
    try:
        import psycopg
        from psycopg import sql
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -e '.[postgres]' to run SQL tests")
    try:
        admin = psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(
            f"no PostgreSQL server answers at {ADMIN_DSN} and the suite does not start one "
            f"(.ci/run does: pg_ctlcluster <version> main start): {exc}"
        )
    name = f"syncworker_test_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield _with_database(ADMIN_DSN, name)
        finally:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
