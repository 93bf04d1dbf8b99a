"""The pure parts of `syncworker demo`: its worker.toml, its redis-cli lines, its accounting."""

from __future__ import annotations

import io
import tomllib
from collections import Counter

import pytest

from worker.examples import order_service, report
from worker.examples.checks import Accounting
from worker.examples.fleet import SETTINGS, worker_toml
from worker.examples.keys import redis_cli
from worker.examples.order_payment import Names, routes
from worker.settings import WorkerSettings


class TestWorkerToml:
    def test_reads_back_as_the_settings_and_routes(self) -> None:
        """The generated file parses to exactly the settings and routes it was made from."""
        names = Names.isolated("abc")
        text = worker_toml(SETTINGS, routes(names, sql=True))
        assert tomllib.loads(text) == {**SETTINGS, "routes": routes(names, sql=True)}

    def test_is_a_valid_worker_configuration(self) -> None:
        """The workers accept it: WorkerSettings validates every key and route."""
        loaded = tomllib.loads(worker_toml(SETTINGS, routes(Names.isolated("abc"), sql=False)))
        settings = WorkerSettings(**loaded)
        assert settings.claim_idle == 2.0 and len(settings.routes) == 2


class TestRedisCli:
    @pytest.mark.parametrize(
        ("url", "command"),
        [
            ("redis://localhost:6379/0", "redis-cli"),
            ("redis://127.0.0.1:40123/0", "redis-cli -p 40123"),
            ("redis://cache.internal:6380/2", "redis-cli -h cache.internal -p 6380 -n 2"),
            ("rediss://app:s3cret@cache:6379/0", "redis-cli -h cache --tls --user app --askpass"),
            ("unix:///run/redis.sock", "redis-cli -s /run/redis.sock"),
        ],
    )
    def test_reaches_the_url_without_printing_the_password(self, url: str, command: str) -> None:
        """Host, port, database and TLS come from the URL; a password becomes --askpass."""
        assert redis_cli(url) == command


def books(**changes: object) -> Accounting:
    base: dict[str, object] = {
        "published": ["1-0", "1-1", "2-0"],
        "dead": {"1-1": {}},
        "pending": set(),
        "last_read": "2-0",
        "versions_published": 2,
        "projection": {"applied": 2},
    }
    base.update(changes)
    return Accounting(**base)  # type: ignore[arg-type]


class TestAccounting:
    def test_all_settled(self) -> None:
        """Read, acknowledged and not dead-lettered counts as applied; nothing else is lost."""
        assert (books().applied, books().lost, books().twice) == (2, [], [])

    def test_pending_unread_or_missing_from_the_inbox_is_lost(self) -> None:
        """An entry still pending, never read, or absent from the SQL inbox is lost."""
        assert books(pending={"1-0"}).lost == ["1-0"]
        assert books(last_read="1-1").lost == ["2-0"]
        assert books(inbox={"1-0"}, inbox_rows=1).lost == ["2-0"]

    def test_effects_applied_twice_are_found(self) -> None:
        """A relayed event twice, an inbox entry also dead-lettered, or too many versions."""
        assert books(relayed=Counter({"e1": 2, "e2": 1})).twice == [
            "relay: 1 event ids forwarded twice"
        ]
        assert books(inbox={"1-0", "1-1", "2-0"}, inbox_rows=3).twice == [
            "SQL: 1 entries both applied and dead-lettered"
        ]
        assert books(projection={"applied": 3}).twice == [
            "projection: more versions applied than were published"
        ]


class TestAccountingReport:
    def test_a_lost_entry_fails_the_demo(self) -> None:
        """The accounting prints the lost entry and returns False, so the demo exits 1."""
        out = io.StringIO()
        assert report.accounting(out, books(pending={"2-0"})) is False
        assert "LOST: 2-0" in out.getvalue()
        assert "lost (neither applied nor dead-lettered)" in out.getvalue()

    def test_an_effect_applied_twice_fails_the_demo(self) -> None:
        """An event forwarded twice is printed and fails the accounting."""
        out = io.StringIO()
        assert report.accounting(out, books(relayed=Counter({"e1": 2}))) is False
        assert "APPLIED TWICE: relay: 1 event ids forwarded twice" in out.getvalue()

    def test_all_accounted_for_passes(self) -> None:
        """Nothing lost or twice: the accounting passes."""
        assert report.accounting(io.StringIO(), books()) is True


class TestOrderService:
    def test_plan_interleaves_orders_each_in_version_order(self) -> None:
        """The order service's steps cover every new order, each order's in version order."""
        service = order_service.OrderService(first=101, orders=12, seed=7)
        plan = service.plan()
        by_order: dict[str, list[int]] = {}
        for e in plan:
            by_order.setdefault(e.order_id, []).append(e.version)
        assert sorted(by_order) == [f"order-{n:05d}" for n in range(101, 113)]
        assert all(v == list(range(1, len(v) + 1)) for v in by_order.values())
        assert plan[0].order_id != plan[1].order_id  # interleaved, as concurrent orders are

    def test_an_order_missing_from_payments_fails_the_demo(self) -> None:
        """A committed order that did not reach payments (or an unpublished event) fails the
        accounting, so the demo exits 1."""
        good = order_service.Books(3, 7, 2, 7, 3)
        out = io.StringIO()
        assert report.order_service(out, good) is True
        assert "LOST" not in out.getvalue()
        for bad in (order_service.Books(3, 7, 2, 7, 2), order_service.Books(3, 7, 2, 6, 3)):
            out = io.StringIO()
            assert report.order_service(out, bad) is False
            assert "LOST: committed orders or events missing downstream" in out.getvalue()
