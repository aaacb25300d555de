"""One-off charges' pure parts: the request, the keys, the wire message's kind."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from shared.billing import kinds
from shared.errors import InvalidRequest
from shared.messages import ChargeMessage, encode_job, parse_message
from shared.oneoff import check_key, parse

pytestmark = pytest.mark.unit


def test_the_gateway_key_is_derived_from_the_account_and_the_callers_key_only() -> None:
    key = kinds.oneoff_idempotency_key(42, "order-1001")
    assert key == kinds.oneoff_idempotency_key(42, "order-1001")
    assert key.startswith("billq_42_oneoff_") and len(key) == len("billq_42_oneoff_") + 32
    assert "order" not in key  # the caller's text never reaches the gateway
    assert key != kinds.oneoff_idempotency_key(43, "order-1001")
    assert key != kinds.oneoff_idempotency_key(42, "order-1002")


def test_the_request_hash_ignores_field_order_but_not_values_or_the_endpoint() -> None:
    a = kinds.request_hash("POST /v1/charges", {"amount": 5, "currency": "EUR"})
    assert a == kinds.request_hash("POST /v1/charges", {"currency": "EUR", "amount": 5})
    assert a != kinds.request_hash("POST /v1/charges", {"amount": 6, "currency": "EUR"})
    assert a != kinds.request_hash("POST /v1/refunds", {"amount": 5, "currency": "EUR"})


def test_a_charge_request_is_normalised_so_equivalent_bodies_are_the_same_request() -> None:
    one = parse({"account_id": 1, "amount": 500, "currency": "jpy"})
    two = parse({"currency": "JPY", "amount": 500, "account_id": 1, "description": ""})
    assert one == two and one.currency == "JPY" and one.description is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"amount": 5, "currency": "EUR"}, "account_id"),
        ({"account_id": True, "amount": 5, "currency": "EUR"}, "account_id"),
        ({"account_id": 2**63, "amount": 5, "currency": "EUR"}, "account_id"),
        ({"account_id": 1, "amount": 5.0, "currency": "EUR"}, "amount"),
        ({"account_id": 1, "amount": 100_000_000, "currency": "EUR"}, "amount"),
        ({"account_id": 1, "amount": 5}, "currency"),
        ({"account_id": 1, "amount": 5, "currency": 978}, "currency"),
        ({"account_id": 1, "amount": 5, "currency": "XXX"}, "currency"),
        ({"account_id": 1, "amount": 150, "currency": "ISK", "description": 5}, "description"),
        (
            {"account_id": 1, "amount": 5, "currency": "EUR", "description": "x" * 1001},
            "description",
        ),
    ],
)
def test_a_bad_field_is_refused_by_name(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse(body)
    assert refused.value.param == param and refused.value.status == 400


@pytest.mark.parametrize("key", [None, "", "  ", "x" * 256, "naïve", "tab\there"])
def test_an_idempotency_key_must_be_present_and_printable_ascii(key: str | None) -> None:
    with pytest.raises(InvalidRequest):
        check_key(key)


def test_a_one_off_message_carries_its_kind_and_a_period_message_keeps_its_old_shape() -> None:
    row = {
        "id": 7,
        "account_id": 42,
        "period_start": dt.date(2026, 12, 2),
        "idempotency_key": "billq_42_oneoff_" + "0" * 32,
        "run_id": None,
    }
    period = encode_job(row)
    assert b"kind" not in period
    assert parse_message(period, max_bytes=4096).kind == "period"
    oneoff = encode_job({**row, "kind": "oneoff"})
    parsed = parse_message(oneoff, max_bytes=4096)
    assert parsed.kind == "oneoff"
    assert parsed.to_bytes() == oneoff
    assert (
        ChargeMessage.model_validate({**parsed.model_dump(), "kind": "period"}).to_bytes() == period
    )


def test_the_audit_matches_one_off_charges_by_key_apart_from_the_same_days_period() -> None:
    from shared.billing.audit import Recorded, Taken, compare

    day = "2026-12-02"
    one = kinds.oneoff_idempotency_key(1, "a")
    two = kinds.oneoff_idempotency_key(1, "b")
    taken = [
        Taken("pi_p", 1, day, f"billq_1_{day}", 1000, "USD"),
        Taken("pi_1", 1, None, one, 500, "USD", kind="oneoff"),
        Taken("pi_2", 1, None, two, 700, "USD", kind="oneoff"),
    ]
    recorded = [
        Recorded("pi_p", 1, day, f"billq_1_{day}", 10),
        Recorded("pi_1", 1, day, one, 11, kind="oneoff"),
    ]
    found = compare(taken, recorded)
    assert found.checked == 3 and not found.double_taken and not found.recorded_not_taken
    assert [(x["kind"], x["charge_id"], x["period_start"]) for x in found.taken_not_recorded] == [
        ("oneoff", "pi_2", None)
    ]
    assert compare(taken[:2], recorded).clean
