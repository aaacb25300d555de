"""The wire contract between distributor and worker: one versioned, frozen model."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import InvalidMessage

SCHEMA_VERSION = 1
MESSAGE_TYPE = "billq.charge.v1"
CONTENT_TYPE = "application/json"
# Postgres bigint: an id outside it fails every statement (DataError), retried forever.
# Caught at parse time instead, where it is the message's fault: dead-lettered.
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
# AMQP header on a retry or republished copy: the job's attempts value it may claim from.
HANDOFF_HEADER = "x-billq-handoff"


class ChargeMessage(BaseModel):
    """Charge one account for one billing period (the job lives in Postgres)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)

    schema_version: Literal[1] = Field(1, description="Wire format version.")
    job_id: int = Field(gt=0, le=INT64_MAX, description="billing_jobs.id")
    account_id: int = Field(
        ge=INT64_MIN, le=INT64_MAX, description="accounts.id (the integrator's id)"
    )
    period_start: dt.date = Field(description="First day of the period billed (UTC).")
    idempotency_key: str = Field(
        min_length=1, max_length=255, description="billq_{account_id}_{YYYY-MM-DD}"
    )
    run_id: int | None = Field(
        None, gt=0, le=INT64_MAX, description="billing_runs.id that created the job."
    )
    # Added with one-off charges: absent on period messages, so they stay byte-identical to
    # what workers without job kinds accept (those dead-letter a one-off, never charge it).
    kind: Literal["period", "oneoff", "refund"] = Field(
        default="period", description="billing_jobs.kind: what the job charges for."
    )

    def to_bytes(self) -> bytes:
        data = self.model_dump(mode="json")
        if data["kind"] == "period":
            del data["kind"]  # see ``kind``: period messages keep their old shape
        return orjson.dumps(data)


def encode_charge(
    job_id: int,
    account_id: int,
    period_start: dt.date,
    idempotency_key: str,
    run_id: int | None,
    kind: str = "period",
) -> bytes:
    """``ChargeMessage(...).to_bytes()`` without building the model: the distributor's hot
    path encodes rows that already satisfy the contract (a test checks both agree)."""
    body: dict[str, object] = {
        "schema_version": SCHEMA_VERSION,
        "job_id": job_id,
        "account_id": account_id,
        "period_start": period_start,
        "idempotency_key": idempotency_key,
        "run_id": run_id,
    }
    if kind != "period":
        body["kind"] = kind
    return orjson.dumps(body)


def encode_job(row: Any) -> bytes:
    """A billing_jobs row (id, account_id, period_start, idempotency_key, run_id and, when
    selected, kind) as its message body."""
    return encode_charge(
        row["id"],
        row["account_id"],
        row["period_start"],
        row["idempotency_key"],
        row["run_id"],
        row.get("kind") or "period",
    )


def parse_message(body: bytes, *, max_bytes: int) -> ChargeMessage:
    """Decode and validate a body; size is checked before any parsing.

    Raises:
        InvalidMessage: too large, not JSON, or not the schema.
    """
    if len(body) > max_bytes:
        raise InvalidMessage(f"body of {len(body)} bytes exceeds {max_bytes}", body)
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidMessage("body is not JSON", body) from None
    if not isinstance(data, dict):
        raise InvalidMessage("body is not a JSON object", body)
    try:
        return ChargeMessage.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise InvalidMessage(f"schema violation at {where}: {err['msg']}", body) from None


def json_schema() -> dict[str, Any]:
    schema = ChargeMessage.model_json_schema()
    schema["$id"] = "https://billq.dev/schemas/charge-message-v1.json"
    return schema
