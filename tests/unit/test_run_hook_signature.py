"""The run hook signature (Stripe's scheme) and the settings that turn hooks on."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from shared import hooks
from shared.config import load_settings
from shared.errors import BadSignature, ConfigError

pytestmark = pytest.mark.unit

BODY = b'{"id":"evt_1"}'


def test_the_signature_is_an_hmac_of_the_timestamp_and_the_body() -> None:
    header = hooks.sign(BODY, b"k", 1700000000)
    mac = hmac.new(b"k", b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={mac}"
    hooks.verify(BODY, header, b"k", now=1700000100)


@pytest.mark.parametrize(
    ("body", "header", "now"),
    [
        (BODY + b" ", hooks.sign(BODY, b"k", 1700000000), 1700000000),  # tampered body
        (BODY, hooks.sign(BODY, b"k", 1700000000), 1700000000 + 301),  # replayed later
        (BODY, "v1=abc", 1700000000),  # no timestamp
        (BODY, "t=1700000000", 1700000000),  # no signature
    ],
)
def test_a_receiver_rejects_what_billq_did_not_sign_just_now(
    body: bytes, header: str, now: float
) -> None:
    with pytest.raises(BadSignature):
        hooks.verify(body, header, b"k", now=now)


def test_a_webhook_url_without_a_secret_is_refused_and_an_empty_one_turns_hooks_off() -> None:
    with pytest.raises(ConfigError, match="BILLQ_WEBHOOK_SECRET"):
        load_settings(run_webhook_url="https://example.test/hooks")
    with pytest.raises(ConfigError, match="BILLQ_RUN_WEBHOOK_URL"):
        load_settings(run_webhook_url="ftp://example.test", webhook_secret="s")
    assert load_settings(run_webhook_url="").run_webhook_url is None
