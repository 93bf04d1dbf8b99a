"""How long liveness tolerates work in flight without progress, and the default handler timeout."""

from __future__ import annotations

import pytest

from worker.ops.health import progress_deadline
from worker.settings import WorkerSettings


class TestProgressDeadline:
    @pytest.mark.parametrize(
        ("values", "expected"),
        [
            ({"handler_timeout": 300.0}, 300.0 + 60.0),
            ({"handler_timeout": 5.0, "progress_timeout": 2.0}, 2.0),
            ({"handler_timeout": 0.0}, None),
            ({"handler_timeout": 0.0, "progress_timeout": 7.0}, 7.0),
        ],
    )
    def test_the_deadline_follows_the_handler_timeout(
        self, values: dict[str, float], expected: float | None
    ) -> None:
        """Derived from handler_timeout plus the read loop's margin, unless set explicitly."""
        settings = WorkerSettings(redis_url="redis://127.0.0.1:1/0", **values)  # type: ignore[arg-type]
        assert progress_deadline(settings) == expected

    def test_handler_calls_are_bounded_by_default(self) -> None:
        """A handler call that never returns becomes a failure after 300 s by default."""
        assert WorkerSettings(redis_url="redis://127.0.0.1:1/0").handler_timeout == 300.0  # type: ignore[arg-type]
