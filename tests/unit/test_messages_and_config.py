"""The wire contract and the settings, without services."""

from __future__ import annotations

import contextlib
import datetime as dt

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.config import load_settings
from shared.errors import ConfigError, InvalidMessage
from shared.messages import ChargeMessage, json_schema, parse_message

pytestmark = pytest.mark.unit

GOOD = {
    "schema_version": 1,
    "job_id": 1,
    "account_id": 42,
    "period_start": "2026-03-01",
    "idempotency_key": "billq_42_2026-03-01",
}


def test_a_valid_message_round_trips() -> None:
    msg = parse_message(orjson.dumps(GOOD), max_bytes=4096)
    assert msg.period_start == dt.date(2026, 3, 1)
    assert parse_message(msg.to_bytes(), max_bytes=4096) == msg


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (orjson.dumps({**GOOD, "schema_version": 2}), "schema_version"),
        (orjson.dumps({**GOOD, "job_id": -1}), "job_id"),
        (orjson.dumps({**GOOD, "extra": 1}), "extra"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "idempotency_key"}), "idempotency"),
        (b"x" * 5000, "exceeds"),
    ],
)
def test_bad_bodies_raise_invalid_message_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage) as err:
        parse_message(body, max_bytes=4096)
    assert reason in str(err.value)


def _with_id(field: str, value: str) -> bytes:
    # orjson cannot encode these ids: the body is written by hand, as a foreign producer would.
    rest = orjson.dumps({k: v for k, v in GOOD.items() if k != field})
    return b'{"' + field.encode() + b'": ' + value.encode() + b", " + rest[1:]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("job_id", "9223372036854775808"),  # int64 max + 1: Postgres raises DataError
        ("account_id", "9223372036854775808"),
        ("account_id", "-9223372036854775809"),
        ("run_id", "18446744073709551615"),
    ],
)
def test_ids_outside_postgres_bigint_are_the_messages_fault(field: str, value: str) -> None:
    # Caught here, they are dead-lettered at once instead of retried forever as DataError.
    with pytest.raises(InvalidMessage, match=field):
        parse_message(_with_id(field, value), max_bytes=4096)
    largest = _with_id(field, "9223372036854775807")
    assert getattr(parse_message(largest, max_bytes=4096), field) == 2**63 - 1


@given(st.binary(max_size=300))
def test_any_bytes_either_parse_or_raise_invalid_message(body: bytes) -> None:
    with contextlib.suppress(InvalidMessage):
        parse_message(body, max_bytes=200)


def test_the_json_schema_names_the_contract_fields() -> None:
    schema = json_schema()
    assert {"schema_version", "job_id", "account_id", "period_start", "idempotency_key"} <= set(
        schema["properties"]
    )
    assert ChargeMessage.model_fields["schema_version"].default == 1


def test_settings_default_to_the_local_services() -> None:
    s = load_settings()
    assert s.amqp_urls == ["amqp://guest:guest@127.0.0.1:5672/"]
    assert s.database_url.get_secret_value() == "postgresql://postgres@127.0.0.1:5432/billq"
    assert s.retry_delays == [5, 30, 120, 600, 3600] and s.max_attempts == 8


def test_several_broker_urls_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLQ_AMQP_URL", "amqp://a:1@h1:5672/, amqp://a:1@h2:5673/")
    assert load_settings().amqp_urls == ["amqp://a:1@h1:5672/", "amqp://a:1@h2:5673/"]


@pytest.mark.parametrize(
    ("var", "value", "named"),
    [
        ("BILLQ_RETRY_DELAYS", "soon", "BILLQ_RETRY_DELAYS"),
        ("BILLQ_RETRY_DELAYS", "[]", "BILLQ_RETRY_DELAYS"),
        ("BILLQ_MAX_ATTEMPTS", "0", "BILLQ_MAX_ATTEMPTS"),
        ("BILLQ_AMQP_URL", "http://x", "BILLQ_AMQP_URL"),
        ("BILLQ_DATABASE_URL", "mysql://x", "BILLQ_DATABASE_URL"),
        ("BILLQ_GATEWAY", "paypal", "BILLQ_GATEWAY"),
        ("BILLQ_JOB_LEASE", "5", "BILLQ_JOB_LEASE"),
        ("BILLQ_JOB_LEASE", "4000", "consumer_timeout"),
        ("BILLQ_PREFETCH", "8", "BILLQ_CONCURRENCY"),
        ("BILLQ_PREFETCH", "70000", "BILLQ_PREFETCH"),
    ],
)
def test_a_bad_setting_is_one_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, named: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert named in str(err.value)
    assert "\n" not in str(err.value)


def test_the_prefetch_window_defaults_to_twice_the_charge_slots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings(concurrency=50).prefetch_window == 100
    monkeypatch.setenv("BILLQ_PREFETCH", "75")
    assert load_settings(concurrency=50).prefetch_window == 75


def test_retry_delay_repeats_the_last_tier() -> None:
    s = load_settings(retry_delays=[1, 2, 3])
    assert [s.retry_delay(a) for a in (1, 2, 3, 4, 9)] == [1, 2, 3, 3, 3]


def test_the_outbox_fast_encoding_equals_the_models_encoding() -> None:
    from distributor.outbox import encode_message

    row = {
        "id": 7,
        "account_id": 42,
        "period_start": dt.date(2026, 2, 28),
        "idempotency_key": "billq_42_2026-02-28",
        "run_id": 3,
    }
    fast = encode_message(row)  # type: ignore[arg-type]
    model = ChargeMessage(
        schema_version=1,
        job_id=7,
        account_id=42,
        period_start=dt.date(2026, 2, 28),
        idempotency_key="billq_42_2026-02-28",
        run_id=3,
    )
    assert fast == model.to_bytes()
    assert parse_message(fast, max_bytes=4096) == model


def test_the_published_json_schema_in_docs_is_current() -> None:
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "docs" / "charge-message.schema.json"
    assert json.loads(path.read_text()) == json_schema(), "run: billq schema > " + str(path.name)
