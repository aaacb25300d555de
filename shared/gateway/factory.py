"""Pick the payment gateway adapter the settings name."""

from __future__ import annotations

from shared.config import Settings
from shared.errors import ConfigError
from shared.gateway.port import PaymentGateway


def make_gateway(settings: Settings) -> PaymentGateway:
    """The gateway for ``BILLQ_GATEWAY``.

    Raises:
        ConfigError: the named adapter is not available.
    """
    # Imported on demand: the in-process gateway needs no HTTP client.
    if settings.gateway == "sandbox":
        from shared.gateway.sandbox import SandboxGateway

        return SandboxGateway(
            settings.gateway_url,
            settings.gateway_api_key.get_secret_value(),
            timeout=settings.gateway_timeout,
            # A keep-alive connection per charge in flight, and a few for lookups and probes.
            max_connections=settings.concurrency + 8,
        )
    if settings.gateway == "inprocess":
        from shared.gateway.inprocess import InProcessGateway

        return InProcessGateway(keep_charges=False)
    if settings.gateway == "stripe":
        # BILLQ_GATEWAY_URL defaults to the sandbox; for Stripe itself set it to
        # https://api.stripe.com (and BILLQ_GATEWAY_API_KEY to an sk_ key).
        from shared.gateway.stripe_gateway import StripeGateway

        return StripeGateway(
            settings.gateway_url,
            settings.gateway_api_key.get_secret_value(),
            timeout=settings.gateway_timeout,
            max_connections=settings.concurrency + 8,
        )
    raise ConfigError(f"BILLQ_GATEWAY={settings.gateway}: no such gateway adapter")
