"""Events of both schema versions reach PaymentSync in the newest shape."""

from test_payments import run


def test_a_version_2_event_is_recorded():
    result, hashes = run({"order_id": "o-2", "amount": "12.50", "currency": "EUR"}, 2)
    assert result.outcome == "ok"
    assert hashes["payment:o-2"] == {"amount_cents": 1250, "currency": "EUR", "status": "settled"}


def test_an_unknown_version_is_dead_lettered():
    result, hashes = run({"order_id": "o-3", "amount": "1", "currency": "EUR"}, 3)
    assert result.outcome == "dead_letter"
    assert "schema version 3 of OrderCompleted has no model" in str(result.error)
