"""All billq settings: one typed object, built once at start-up.

Sources, highest first: CLI flags, ``BILLQ_*`` environment variables, a ``.env``
file, defaults (the local services).

Longer than most: every setting lives in this one object, each with its bounds and the
description ``--help`` and the README repeat, so that one place validates them all.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.errors import ConfigError

# RabbitMQ 3.10's default consumer_timeout: a delivery held longer closes the channel.
RABBITMQ_CONSUMER_TIMEOUT_S = 1800.0
# Retry tiers become queue TTLs in milliseconds, which AMQP carries as 32-bit integers.
MAX_RETRY_DELAY_S = (2**31 - 1) // 1000
# Dunning retries are days after the first decline; a year covers any sane schedule.
MAX_DUNNING_DAYS = 366
# RabbitMQ's own ceiling on a message body (max_message_size, 128 MiB).
MAX_AMQP_MESSAGE_BYTES = 128 * 1024 * 1024
MAX_STUCK_AFTER_S = 30 * 86400
# asyncpg refuses other values of these URL parameters with a client-side error.
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_SESSION_ATTRS = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")


def _check_port(host: str) -> None:
    """``host[:port]`` (an IPv6 address in brackets): a given port must be 1..65535."""
    if host.startswith("["):
        rest = host.partition("]")[2]
        if not rest:
            return
        port = rest.removeprefix(":")
    elif ":" in host:
        port = host.rpartition(":")[2]
    else:
        return
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535, got {port!r}")


def check_postgres_url(url: str) -> None:
    """Scheme, every host's port, and the URL parameters asyncpg checks itself.

    Raises:
        ValueError: naming what is wrong (never the password).
    """
    if not url.startswith(("postgresql://", "postgres://")):
        raise ValueError("must start with postgresql://")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"not a URL ({exc})") from None
    # A Postgres URL may list several hosts (host1:5432,host2:5433); check each port.
    hosts = parts.netloc.rpartition("@")[2]
    for host in hosts.split(","):
        if host:
            _check_port(host)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    if "port" in params:
        for port in params["port"].split(","):
            _check_port(f"h:{port}")
    if params.get("sslmode", "prefer") not in _SSLMODES:
        raise ValueError(f"sslmode must be one of {', '.join(_SSLMODES)}")
    if params.get("target_session_attrs", "any") not in _SESSION_ATTRS:
        raise ValueError(f"target_session_attrs must be one of {', '.join(_SESSION_ATTRS)}")


def check_amqp_url(url: str) -> None:
    """Scheme, host and port of one broker URL.

    Raises:
        ValueError: naming what is wrong (never the password).
    """
    if not url.startswith(("amqp://", "amqps://")):
        raise ValueError("each URL must start with amqp:// or amqps://")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"{_host_of(url)}: port must be a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError("each URL must name a host")
    if port == 0:
        raise ValueError(f"{_host_of(url)}: port must be a number from 1 to 65535")


def _host_of(url: str) -> str:
    """The host:port part without credentials, for an error message."""
    return url.split("://", 1)[-1].rpartition("@")[2].split("/", 1)[0]


class Settings(BaseSettings):
    """billq configuration (environment prefix ``BILLQ_``)."""

    model_config = SettingsConfigDict(
        env_prefix="BILLQ_", env_file=".env", extra="ignore", validate_default=True
    )

    amqp_url: SecretStr = Field(
        SecretStr("amqp://guest:guest@127.0.0.1:5672/"),
        description="RabbitMQ URL; several comma-separated URLs for a cluster (failover).",
    )
    database_url: SecretStr = Field(
        SecretStr("postgresql://postgres@127.0.0.1:5432/billq"), description="Postgres URL."
    )
    gateway: Literal["sandbox", "inprocess", "stripe"] = Field(
        "sandbox", description="Payment gateway adapter."
    )
    gateway_url: str = Field("http://127.0.0.1:12111", description="Sandbox / Stripe API base.")
    gateway_api_key: SecretStr = Field(SecretStr("sk_test_billq"), description="Gateway API key.")
    gateway_timeout: float = Field(
        10.0, gt=0, le=600, allow_inf_nan=False, description="Seconds for one gateway call."
    )
    job_lease: float = Field(
        120.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds a claimed job stays locked.",
    )
    shutdown_grace: float = Field(
        30.0, gt=0, le=3600, allow_inf_nan=False, description="Seconds to finish in-flight work."
    )
    queue_prefix: str = Field(
        "billq", pattern=r"^[A-Za-z0-9_.\-]{1,100}$", description="Exchange and queue prefix."
    )
    retry_delays: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0, 3600.0],
        description="Retry backoff tiers in seconds (JSON list); the last repeats.",
    )
    dunning_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [3.0, 5.0, 7.0],
        description="Days after the first decline to retry a soft decline (JSON list).",
    )
    max_attempts: int = Field(8, ge=1, le=100, description="Attempts before a job is dead.")
    delivery_limit: int = Field(
        20, ge=1, le=10000, description="Quorum queue redeliveries before the broker dead-letters."
    )
    concurrency: int = Field(
        256,
        ge=1,
        le=10000,
        description="Charges a worker has in flight at most; against a gateway that answers 429 "
        "the worker's adaptive limit runs below it (worker/ratelimit.py).",
    )
    prefetch: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Deliveries each lane's consumer holds unacked: charging, waiting for a "
        "charge slot or for their ack (default: twice BILLQ_CONCURRENCY, so the slots never "
        "wait for the broker's next delivery).",
    )
    priority_share: float = Field(
        0.25,
        gt=0,
        lt=1,
        allow_inf_nan=False,
        description="Share of a worker's BILLQ_CONCURRENCY slots the priority lane may hold "
        "while the bulk lane has work too (it goes first up to that share; either lane may use "
        "every slot while the other is idle).",
    )
    worker_batch_max: int = Field(
        256,
        ge=1,
        le=10000,
        description="Most deliveries a worker claims, or charges it records, in one statement.",
    )
    batch_wait_ms: float = Field(
        25.0,
        ge=0,
        le=1000,
        allow_inf_nan=False,
        description="How long a worker gathers deliveries into one claim statement.",
    )
    batch_size: int = Field(1000, ge=1, le=100000, description="Distributor batch size.")
    publish_timeout: float = Field(
        30.0, gt=0, le=600, allow_inf_nan=False, description="Seconds to wait for a confirm."
    )
    max_message_bytes: int = Field(
        16384, ge=256, le=MAX_AMQP_MESSAGE_BYTES, description="Larger bodies are dead-lettered."
    )
    catchup_min_gap: float = Field(
        86400.0,
        ge=0,
        le=366 * 86400,
        allow_inf_nan=False,
        description="Seconds of wall clock between two new periods billed to one account "
        "(catch-up pacing: an account behind by months is billed one period per gap).",
    )
    stuck_after: float = Field(
        600.0,
        gt=0,
        le=MAX_STUCK_AFTER_S,
        allow_inf_nan=False,
        description="Seconds after which a published job counts as stuck.",
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Worker /metrics, /healthz, /readyz port (off if unset)."
    )
    metrics_host: str = Field("0.0.0.0", description="Address the metrics port binds to.")
    max_rss_mb: float = Field(
        0,
        ge=0,
        le=1_048_576,
        allow_inf_nan=False,
        description="Worker recycles itself above this RSS (MB); 0 disables.",
    )
    max_messages: int = Field(
        0,
        ge=0,
        le=10**12,
        description="Worker recycles itself after this many messages; 0 disables.",
    )
    signing_keys: SecretStr | None = Field(
        None, description="Comma-separated HMAC keys; sign with the first, accept any."
    )
    pushgateway_url: str | None = Field(
        None, description="Prometheus Pushgateway for the distributor's run figures."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info")
    log_format: Literal["auto", "json", "console"] = Field("auto")
    # The worker's circuit breaker on the gateway (worker/breaker.py).
    breaker_window: int = Field(
        20, ge=0, le=10000, description="Recent gateway calls the breaker judges; 0 disables it."
    )
    breaker_failure_ratio: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Share of the window failing (5xx, timeouts, refused, 401) that opens it.",
    )
    breaker_probe_min_s: float = Field(
        1.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="First delay before probing an open breaker's gateway.",
    )
    breaker_probe_max_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="Longest delay between probes of an open breaker's gateway.",
    )
    breaker_hold_s: float = Field(
        # Long, because each return costs one redelivery of the broker's delivery limit;
        # below consumer_timeout (checked once a minute), which would close the channel.
        1200.0,
        gt=0,
        lt=1800,
        allow_inf_nan=False,
        description="Seconds an open breaker holds deliveries before returning them to the queue.",
    )
    # The worker's adaptive limit on a rate-limiting gateway (worker/ratelimit.py).
    rate_limit_wait_s: float = Field(
        45.0,
        ge=0,
        le=1800,
        allow_inf_nan=False,
        description="Seconds a charge the gateway rate-limits (429) may wait in the worker and be "
        "resent under its key, spending no attempt; then it takes the delayed-retry path. "
        "Capped at half of BILLQ_JOB_LEASE minus BILLQ_GATEWAY_TIMEOUT, so the job's lease "
        "outlives the wait; 0 sends a 429 straight to the delayed retry.",
    )
    gateway_max_rps: float = Field(
        0.0,
        ge=0,
        le=1_000_000,
        allow_inf_nan=False,
        description="Most gateway requests a second per worker (a token bucket), for a known "
        "account limit; 0 = none (the adaptive limit still reacts to 429s).",
    )
    dashboard_token: SecretStr | None = Field(
        None,
        description="Token the dashboard asks for (login or Bearer); required off loopback.",
    )
    api_tokens: SecretStr | None = Field(
        None,
        description="Comma-separated tokens `billq api` accepts (any of them: rotation); "
        "required off loopback.",
    )

    @field_validator("retry_delays", "dunning_schedule", mode="before")
    @classmethod
    def _parse_delays(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError("must be a JSON list of numbers, e.g. [5, 30, 120]") from exc
        return value

    @field_validator("retry_delays", "dunning_schedule")
    @classmethod
    def _check_delays(cls, value: list[float], info: ValidationInfo) -> list[float]:
        # NaN and infinity pass "> 0" checks and then break timers and TTLs far away.
        limit, unit = (
            (MAX_RETRY_DELAY_S, "seconds (a 32-bit millisecond TTL)")
            if info.field_name == "retry_delays"
            else (MAX_DUNNING_DAYS, "days")
        )
        if not value or not all(math.isfinite(d) and 0 < d <= limit for d in value):
            raise ValueError(
                f"must be a non-empty list of numbers above 0 and at most {limit} {unit}"
            )
        return value

    @field_validator("amqp_url")
    @classmethod
    def _check_amqp(cls, value: SecretStr) -> SecretStr:
        for url in value.get_secret_value().split(","):
            check_amqp_url(url.strip())
        return value

    @field_validator("database_url")
    @classmethod
    def _check_db(cls, value: SecretStr) -> SecretStr:
        check_postgres_url(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _timeouts_nest(self) -> Settings:
        # This check also bounds BILLQ_JOB_LEASE from above (its field only refuses NaN/inf).
        # A delivery held past consumer_timeout closes the channel; a lease shorter than a
        # gateway call would let a second worker take over a job still being charged.
        if not self.gateway_timeout < self.job_lease < RABBITMQ_CONSUMER_TIMEOUT_S:
            raise ValueError(
                "timeouts must nest: BILLQ_GATEWAY_TIMEOUT "
                f"({self.gateway_timeout:g}) < BILLQ_JOB_LEASE ({self.job_lease:g}) < "
                f"RabbitMQ consumer_timeout ({RABBITMQ_CONSUMER_TIMEOUT_S:g})"
            )
        if self.breaker_hold_s > RABBITMQ_CONSUMER_TIMEOUT_S - 120:
            raise ValueError(
                f"BILLQ_BREAKER_HOLD_S ({self.breaker_hold_s:g}) must stay 120 s below "
                f"RabbitMQ's consumer_timeout ({RABBITMQ_CONSUMER_TIMEOUT_S:g})"
            )
        if self.prefetch is not None and self.prefetch < self.concurrency:
            raise ValueError(
                f"BILLQ_PREFETCH ({self.prefetch}) must be at least BILLQ_CONCURRENCY "
                f"({self.concurrency}): a charge slot needs a delivery to charge"
            )
        return self

    @property
    def prefetch_window(self) -> int:
        """Each lane consumer's QoS window: the charge slots and the deliveries that wait for
        them, so a freed slot starts its next charge without a round trip to the broker."""
        return max(self.prefetch or 2 * self.concurrency, self.concurrency)

    @property
    def amqp_urls(self) -> list[str]:
        return [u.strip() for u in self.amqp_url.get_secret_value().split(",") if u.strip()]

    @property
    def signing_key_list(self) -> list[bytes]:
        if self.signing_keys is None:
            return []
        raw = self.signing_keys.get_secret_value().split(",")
        return [k.strip().encode() for k in raw if k.strip()]

    @property
    def api_token_list(self) -> list[str]:
        if self.api_tokens is None:
            return []
        return [t.strip() for t in self.api_tokens.get_secret_value().split(",") if t.strip()]

    @property
    def rate_limit_budget_s(self) -> float:
        """How long a rate-limited charge may wait in the worker: BILLQ_RATE_LIMIT_WAIT_S,
        capped so that the wait and one more call end well inside the job's lease."""
        return min(self.rate_limit_wait_s, (self.job_lease - self.gateway_timeout) / 2)

    def retry_delay(self, attempt: int) -> float:
        """Backoff tier for the retry after ``attempt`` (1-based); the last tier repeats."""
        return self.retry_delays[min(max(attempt, 1), len(self.retry_delays)) - 1]

    # Run hooks (issue 14): a signed POST when a run settles.
    run_webhook_url: str | None = Field(
        None, description="POST a signed event here when a run settles (run hooks); off if unset."
    )
    webhook_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key for the run hook's Billq-Signature header."
    )

    @field_validator("run_webhook_url", mode="before")
    @classmethod
    def _check_webhook_url(cls, value: Any) -> Any:
        if value == "":
            return None  # BILLQ_RUN_WEBHOOK_URL= turns hooks off
        if isinstance(value, str) and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _webhook_signed(self) -> Settings:
        # An unsigned hook could be forged by anyone who can reach the receiver.
        if self.run_webhook_url and not self.webhook_secret:
            raise ValueError("BILLQ_RUN_WEBHOOK_URL needs BILLQ_WEBHOOK_SECRET (events are signed)")
        return self


def load_settings(**overrides: Any) -> Settings:
    """Build the settings; a bad value raises ``ConfigError`` naming the setting.

    Raises:
        ConfigError: a setting is missing or invalid.
    """
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        name = f"BILLQ_{loc.upper()}" if loc else "settings"
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{name}: {msg}") from None
