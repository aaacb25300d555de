"""All billq settings: one typed object, built once at start-up.

Sources, highest first: CLI flags, ``BILLQ_*`` environment variables, a ``.env``
file, defaults (the local services).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.errors import ConfigError

# RabbitMQ 3.10's default consumer_timeout: a delivery held longer closes the channel.
RABBITMQ_CONSUMER_TIMEOUT_S = 1800.0


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
    gateway_timeout: float = Field(10.0, gt=0, description="Seconds for one gateway call.")
    job_lease: float = Field(120.0, gt=0, description="Seconds a claimed job stays locked.")
    shutdown_grace: float = Field(30.0, gt=0, description="Seconds to finish in-flight work.")
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
        20, ge=1, description="Quorum queue redeliveries before the broker dead-letters."
    )
    concurrency: int = Field(
        64, ge=1, le=10000, description="Charges a worker has in flight (its prefetch window)."
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
        description="How long a worker gathers deliveries into one claim statement.",
    )
    batch_size: int = Field(1000, ge=1, le=100000, description="Distributor batch size.")
    publish_timeout: float = Field(30.0, gt=0, description="Seconds to wait for a confirm.")
    max_message_bytes: int = Field(16384, ge=256, description="Larger bodies are dead-lettered.")
    catchup_min_gap: float = Field(
        86400.0,
        ge=0,
        le=366 * 86400,
        description="Seconds of wall clock between two new periods billed to one account "
        "(catch-up pacing: an account behind by months is billed one period per gap).",
    )
    stuck_after: float = Field(
        600.0, gt=0, description="Seconds after which a published job counts as stuck."
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Worker /metrics, /healthz, /readyz port (off if unset)."
    )
    metrics_host: str = Field("0.0.0.0", description="Address the metrics port binds to.")
    max_rss_mb: float = Field(
        0, ge=0, description="Worker recycles itself above this RSS (MB); 0 disables."
    )
    max_messages: int = Field(
        0, ge=0, description="Worker recycles itself after this many messages; 0 disables."
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
        1.0, gt=0, description="First delay before probing an open breaker's gateway."
    )
    breaker_probe_max_s: float = Field(
        30.0, gt=0, description="Longest delay between probes of an open breaker's gateway."
    )
    breaker_hold_s: float = Field(
        # Long, because each return costs one redelivery of the broker's delivery limit;
        # below consumer_timeout (checked once a minute), which would close the channel.
        1200.0,
        gt=0,
        description="Seconds an open breaker holds deliveries before returning them to the queue.",
    )
    dashboard_token: SecretStr | None = Field(
        None,
        description="Token the dashboard asks for (login or Bearer); required off loopback.",
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
    def _check_delays(cls, value: list[float]) -> list[float]:
        if not value or any(d <= 0 for d in value):
            raise ValueError("must be a non-empty list of positive numbers")
        return value

    @field_validator("amqp_url")
    @classmethod
    def _check_amqp(cls, value: SecretStr) -> SecretStr:
        for url in value.get_secret_value().split(","):
            if not url.strip().startswith(("amqp://", "amqps://")):
                raise ValueError("each URL must start with amqp:// or amqps://")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_db(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql://")
        return value

    @model_validator(mode="after")
    def _timeouts_nest(self) -> Settings:
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
        return self

    @property
    def amqp_urls(self) -> list[str]:
        return [u.strip() for u in self.amqp_url.get_secret_value().split(",") if u.strip()]

    @property
    def signing_key_list(self) -> list[bytes]:
        if self.signing_keys is None:
            return []
        raw = self.signing_keys.get_secret_value().split(",")
        return [k.strip().encode() for k in raw if k.strip()]

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
        raise ConfigError(f"{name}: {err['msg']}") from None
