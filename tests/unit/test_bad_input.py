"""Bad input, without services: settings, URLs, import rows, CSV cells, money formats."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from billq.accounts import read_rows, validate
from billq.output import csv_cell, money
from shared.billing.accounts import parse_row
from shared.billing.money import format_amount, minor_units
from shared.config import MAX_RETRY_DELAY_S, Settings, load_settings
from shared.errors import ConfigError, ImportRejected, InvalidField
from shared.gateway.amounts import check_chargeable, from_gateway_units, to_gateway_units

pytestmark = pytest.mark.unit

TODAY = dt.date(2026, 11, 25)
HEADER = (
    "id,name,email,amount_cents,currency,billing_interval,billing_anchor_day,"
    "next_billing_at,payment_method,gateway_customer"
)
GOOD: dict[str, Any] = {
    "id": "1",
    "name": "Ada",
    "email": "ada@example.com",
    "amount_cents": "1500",
    "currency": "USD",
    "billing_interval": "month",
    "billing_anchor_day": "1",
    "payment_method": "pm_card_visa",
}


# --- settings ---------------------------------------------------------------------------

NUMERIC = [
    name
    for name, field in Settings.model_fields.items()
    if field.annotation in (int, float, int | None)
]


@pytest.mark.parametrize("name", NUMERIC)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e30"])
def test_every_numeric_setting_refuses_non_finite_and_huge_values(name: str, value: str) -> None:
    # Named first, or (BILLQ_JOB_LEASE, bounded by the timeouts that must nest) in the rule.
    with pytest.raises(ConfigError, match=f"BILLQ_{name.upper()}\\b"):
        load_settings(**{name: value})


@pytest.mark.parametrize("name", ["retry_delays", "dunning_schedule"])
@pytest.mark.parametrize("value", ["[NaN]", "[Infinity]", "[1e30]", "[-Infinity]", "[0]", "[]"])
def test_delay_lists_refuse_non_finite_and_out_of_range_values(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^BILLQ_{name.upper()}: must be a non-empty list"):
        load_settings(**{name: value})


def test_retry_delays_fit_a_32_bit_millisecond_ttl() -> None:
    assert MAX_RETRY_DELAY_S * 1000 <= 2**31 - 1
    assert load_settings(retry_delays=f"[{MAX_RETRY_DELAY_S}]").retry_delays == [MAX_RETRY_DELAY_S]
    with pytest.raises(ConfigError, match="32-bit"):
        load_settings(retry_delays=f"[{MAX_RETRY_DELAY_S + 1}]")


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("postgresql://u:pw@127.0.0.1:abc/db", "port must be a number from 1 to 65535, got 'abc'"),
        ("postgresql://u:pw@127.0.0.1:99999/db", "got '99999'"),
        ("postgresql://u:pw@127.0.0.1:0/db", "got '0'"),
        ("postgresql://u:pw@h1:5432,h2:x/db", "got 'x'"),
        ("postgresql://u:pw@h/db?port=70000", "got '70000'"),
        ("postgresql://u:pw@127.0.0.1/db?sslmode=bogus", "sslmode must be one of"),
        ("postgresql://u:pw@h/db?target_session_attrs=x", "target_session_attrs must be"),
        ("postgresql://u:pw@[::1/db", "not a URL"),
        ("mysql://u:pw@h/db", "must start with postgresql://"),
    ],
)
def test_bad_database_urls_name_the_setting_and_never_the_password(url: str, needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(database_url=url)
    assert str(caught.value).startswith("BILLQ_DATABASE_URL: ")
    assert needle in str(caught.value)
    assert "pw" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:pw@127.0.0.1:5432/db?sslmode=require&application_name=x",
        "postgresql://u@h1:5432,h2:5433/db",
        "postgresql://u@[::1]:5432/db",
        "postgres://u@host/db",
    ],
)
def test_good_database_urls_pass(url: str) -> None:
    assert load_settings(database_url=url).database_url.get_secret_value() == url


@pytest.mark.parametrize(
    "url",
    [
        "amqp://g:pw@127.0.0.1:abc/",
        "amqp://g:pw@127.0.0.1:99999/",
        "amqp://g:pw@127.0.0.1:5672/,amqp://g:pw@h2:0/",
    ],
)
def test_bad_amqp_ports_name_the_setting(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^BILLQ_AMQP_URL: .*port must be a number") as caught:
        load_settings(amqp_url=url)
    assert "pw" not in str(caught.value)


# --- import rows --------------------------------------------------------------------------


def field_error(row: dict[str, Any]) -> InvalidField:
    with pytest.raises(InvalidField) as caught:
        parse_row(row, today=TODAY)
    return caught.value


@pytest.mark.parametrize(
    ("change", "column", "needle"),
    [
        ({"id": str(2**63)}, "id", "must be 1..9223372036854775807"),
        ({"id": "1" * 40}, "id", "must be an integer"),
        ({"name": "a\x00b"}, "name", "NUL"),
        ({"name": "\ud800"}, "name", "surrogate"),
        ({"name": ["a"]}, "name", "got a list"),
        ({"payment_method": {"a": 1}}, "payment_method", "got an object"),
        ({"email": True}, "email", "got a boolean"),
        ({"amount_cents": 12.5}, "amount_cents", "whole number"),
        ({"amount_cents": "12.50"}, "amount_cents", "USD has 2 decimals"),
        ({"amount_cents": "12.50", "currency": "JPY"}, "amount_cents", "JPY has 0 decimals"),
        ({"amount_cents": "0"}, "amount_cents", "between 1 and"),
        ({"currency": "XXX"}, "currency", "ISO 4217"),
        ({"plan": "gold"}, "plan", "unknown column"),
        ({"next_billing_at": "0001-01-01"}, "next_billing_at", "out of range"),
        ({"next_billing_at": "9999-12-01"}, "next_billing_at", "out of range"),
        ({"next_billing_at": "9999-12-31T23:00:00-05:00"}, "next_billing_at", "ISO 8601"),
        ({"next_billing_at": "2026-10-31"}, "next_billing_at", "not on billing_anchor_day 1"),
        ({"status": "deleted"}, "status", "must be one of"),
    ],
)
def test_every_bad_field_names_its_column(change: dict[str, Any], column: str, needle: str) -> None:
    err = field_error({**GOOD, **change})
    assert err.column == column
    assert needle in err.reason


@pytest.mark.parametrize(
    ("anchor", "date"),
    [
        (31, "2026-02-28"),
        (31, "2028-02-29"),
        (30, "2026-04-30"),
        (1, "2026-10-01"),
        (15, "2027-01-15"),
    ],
)
def test_next_billing_at_on_the_anchor_or_a_short_months_last_day_is_accepted(
    anchor: int, date: str
) -> None:
    row = parse_row(
        {**GOOD, "billing_anchor_day": str(anchor), "next_billing_at": date}, today=TODAY
    )
    assert row.next_billing_at.date().isoformat() == date


def test_a_status_column_is_remembered_only_when_given() -> None:
    assert not parse_row(GOOD, today=TODAY).status_given
    assert parse_row({**GOOD, "status": "cancelled"}, today=TODAY).status_given


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_quoted_multi_line_csv_field_keeps_its_newline_and_lines_stay_right(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "a.csv",
        f'{HEADER}\n1,"Ada\nLovelace",ada@example.com,100,USD,month,1,,pm_card_visa,\n'
        "2,Bob,bob@example.com,100,JPY,month,1,2026-13-01,pm_card_visa,\n",
    )
    rows = read_rows(path)
    assert [n for n, _ in rows] == [2, 4]
    good, errors = validate(rows, TODAY)
    assert good[0].name == "Ada\nLovelace"
    assert errors == ["line 4, column next_billing_at: '2026-13-01' is not ISO 8601"]


def test_extra_csv_columns_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ImportRejected, match=r"line 1, column 11: unknown column 'plan'"):
        read_rows(write(tmp_path, "a.csv", HEADER + ",plan\n"))
    path = write(tmp_path, "b.csv", f"{HEADER}\n1,A,a@b.co,1,USD,month,1,,pm_x,,surplus\n")
    _, errors = validate(read_rows(path), TODAY)
    assert errors == [
        "line 2, column 11: a field beyond the header's 10 columns (extra columns are refused)"
    ]


def test_jsonl_errors_name_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "a.jsonl", '{"id": \n[1]\n\n{"id": "1", "name": null}\n')
    _, errors = validate(read_rows(path), TODAY)
    assert errors == [
        "line 1, column 8: not JSON (Expecting value)",
        "line 2, column 1: not a JSON object",
        "line 4, column name: missing name, email, amount_cents, currency, billing_interval, "
        "billing_anchor_day, payment_method",
    ]


@pytest.mark.parametrize(
    ("amount", "currency", "needle"),
    [
        (100, "IQD", "currency"),
        (5124, "KWD", "must end in 0"),
        (550, "MGA", "multiple of 100"),
        (99_999_999, "ISK", "outside the gateway's range"),
    ],
)
def test_import_refuses_what_the_gateway_cannot_charge(
    amount: int, currency: str, needle: str, tmp_path: Path
) -> None:
    path = write(
        tmp_path, "a.csv", f"{HEADER}\n1,A,a@b.co,{amount},{currency},month,1,,pm_card_visa,\n"
    )
    _, errors = validate(read_rows(path), TODAY)
    assert len(errors) == 1 and errors[0].startswith("line 2, column ")
    assert needle in errors[0]


# --- output and money ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=HYPERLINK(1)", "'=HYPERLINK(1)"),
        ("+33 6 12", "'+33 6 12"),
        ("-cmd", "'-cmd"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("-5", "-5"),
        ("12.50", "12.50"),
        ("-0.5e3", "-0.5e3"),
        ("Ada", "Ada"),
        (-5, -5),
        (None, None),
    ],
)
def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(
    value: object, expected: object
) -> None:
    assert csv_cell(value) == expected


@pytest.mark.parametrize(
    ("minor", "currency", "shown"),
    [
        (465830, "JPY", "465,830 JPY"),
        (489733, "KWD", "489.733 KWD"),
        (123456, "USD", "1,234.56 USD"),
        (5, "EUR", "0.05 EUR"),
        (1000, "ISK", "1,000 ISK"),
    ],
)
def test_amounts_are_shown_in_each_currencys_minor_units(
    minor: int, currency: str, shown: str
) -> None:
    assert format_amount(minor, currency) == shown
    assert money(minor, currency) == shown


@pytest.mark.parametrize(
    ("minor", "currency", "sent"),
    [
        (500, "JPY", 500),  # zero-decimal: the whole amount
        (1999, "USD", 1999),
        (5120, "KWD", 5120),  # three-decimal: thousandths, last digit 0
        (5, "ISK", 500),  # ISO 0 decimals, Stripe keeps two
        (500, "MGA", 5),  # ISO 2 decimals, Stripe zero-decimal
        (1000, "UGX", 1000),
    ],
)
def test_gateway_amounts_follow_stripes_units(minor: int, currency: str, sent: int) -> None:
    assert to_gateway_units(minor, currency) == sent
    assert check_chargeable(minor, currency) == sent
    assert from_gateway_units(sent, currency) == minor  # what audit reads back


def test_minor_units_cover_zero_two_and_three_decimal_currencies() -> None:
    assert [minor_units(c) for c in ("JPY", "KRW", "VND", "USD", "KWD", "BHD", "TND")] == [
        0,
        0,
        0,
        2,
        3,
        3,
        3,
    ]


def test_unreadable_records_are_row_errors_by_line(tmp_path: Path) -> None:
    huge, deep = '{"id": ' + "9" * 5000 + "}", "[" * 100_000
    _, errors = validate(read_rows(write(tmp_path, "a.jsonl", f"{huge}\n{deep}\n")), TODAY)
    assert [e.split(":")[0] for e in errors] == ["line 1", "line 2"]
    assert "nested too deeply" in errors[1]
    path = write(tmp_path, "a.csv", f'{HEADER}\n1,"{"x" * 200_000}"\n')
    _, errors = validate(read_rows(path), TODAY)
    assert errors == ["line 2: not CSV (field larger than field limit (131072))"]
