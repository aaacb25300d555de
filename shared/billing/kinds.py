"""Job kinds and the one-off charge's identity (pure, no I/O).

A job is one of:

- ``period``: a billing period of an account, created by a distribution run; unique per
  (account, period, dunning attempt), its key ``billq_{account}_{YYYY-MM-DD}[_dN]``;
- ``oneoff``: a one-off charge an application asked for (``POST /v1/charges``,
  ``billq charge``); unique by its key ``billq_{account}_oneoff_{caller key hash}``; it never
  advances the account's billing period or touches its dunning;
- ``refund``: reserved for refund jobs.

The caller's ``Idempotency-Key`` names the request; the gateway key is derived from it and
the account only (never from the clock or a row id), so every retry, replay and restored
database sends the gateway the same key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

PERIOD = "period"
ONEOFF = "oneoff"
REFUND = "refund"
JOB_KINDS = (PERIOD, ONEOFF, REFUND)

MAX_CALLER_KEY = 255  # Stripe's limit for an Idempotency-Key


def caller_key_hash(caller_key: str) -> str:
    """128 bits of SHA-256 of the caller's key: short, and no caller text in gateway keys."""
    return hashlib.sha256(caller_key.encode()).hexdigest()[:32]


def oneoff_idempotency_key(account_id: int, caller_key: str) -> str:
    """The gateway idempotency key of a one-off charge."""
    return f"billq_{account_id}_oneoff_{caller_key_hash(caller_key)}"


def request_hash(endpoint: str, fields: Mapping[str, object]) -> str:
    """What "the same request" means for a replay: the endpoint and the validated fields,
    canonically encoded (key order and JSON spacing do not matter, values do)."""
    canonical = json.dumps(
        {"endpoint": endpoint, "fields": dict(fields)}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
