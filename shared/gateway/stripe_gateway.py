"""``StripeGateway``: the payment gateway port on Stripe's official SDK (``stripe``, async client).

One charge is one PaymentIntent created with ``confirm=true`` and ``off_session=true``
(billing runs charge saved cards without the customer), the billq idempotency key sent as
Stripe's ``Idempotency-Key`` and stored in the intent's metadata (``billq_idempotency_key``,
``billq_account_id``) so ``find_by_idempotency_key`` can search for it once Stripe has pruned
the key (after 24 h; see ``shared.gateway.pruned_keys``).

The API base is ``BILLQ_GATEWAY_URL``: ``https://api.stripe.com`` for Stripe itself, the
sandbox gateway (Stripe's wire format) in development and tests, so the tests run this code.

Longer than most: one adapter per gateway is the rule, and charges, refunds, the key search
and their classification share the SDK client and the error table below.

Every SDK failure is classified here, with the same meaning as ``SandboxGateway``::

    intent succeeded                        Charged
    CardError (402)                         Declined (code, decline_code, the intent's id)
    5xx with Idempotent-Replayed: true      OutcomeUnknown      the stored first answer was a 5xx
    5xx, 409                                GatewayUnavailable  nothing ran; retry with the same key
    RateLimitError (429)                    GatewayRateLimited  nothing ran; its Retry-After carried
    connection refused / connect timeout    GatewayUnavailable  the request never left
    read/write timeout, dropped connection  OutcomeUnknown      it may have run; retry with the key
    a 2xx the SDK cannot read               OutcomeUnknown      it ran, but how is unknown
    Authentication-, Permission-,
    InvalidRequest-, IdempotencyError       GatewayRejected     permanent (auth, invalid request)

The SDK retries nothing (``max_network_retries=0``): retries are the worker's, with backoff and
attempt counting. No exception message carries the payment method or the API key.

The SDK sends through one aiohttp session (``stripe.AIOHTTPClient`` with our connector): an
HTTP/1.1 keep-alive pool sized to the worker's concurrency, created on first use. Measured
against the sandbox at 64 concurrent charges on a 2-core machine: ≈ 580 µs CPU per charge
this way, ≈ 5,000 µs through the SDK's default ``HTTPXClient`` (httpx's httpcore pool; with
its pool raised to the concurrency it stays ≈ 4,800 µs), ≈ 360 µs for ``SandboxGateway``
without the SDK's objects.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING

import aiohttp
import stripe

from shared.errors import (
    BillqError,
    GatewayMisconfigured,
    GatewayRateLimited,
    GatewayRejected,
    GatewayUnavailable,
    OutcomeUnknown,
    RefundRefused,
    TransientError,
)
from shared.gateway.amounts import from_gateway_units, to_gateway_units
from shared.gateway.http_pool import keepalive_session, retry_after_s
from shared.gateway.port import (
    Charged,
    ChargeOutcome,
    ChargeRequest,
    Declined,
    GatewayCharge,
    GatewayRefund,
    Refunded,
    RefundRequest,
    gateway_charge,
    gateway_refund,
)

if TYPE_CHECKING:
    from stripe.params import (
        PaymentIntentCreateParams,
        PaymentIntentListParams,
        RefundCreateParams,
        RefundListParams,
    )

STRIPE_API = "https://api.stripe.com"
BILLQ_KEY = "billq_idempotency_key"
BILLQ_ACCOUNT = "billq_account_id"
# Stripe's codes for a refund of more than the charge has left.
REFUND_REFUSED = frozenset({"amount_too_large", "charge_already_refunded"})
SEARCH_LIMIT = 100  # Stripe's maximum page; one key never has more intents than that

# No client telemetry: the SDK would otherwise persist a machine id under the home directory
# (~/.config/stripe) and send it with request timings. The flag is process-wide.
stripe.enable_telemetry = False

# The request never reached the gateway: nothing can have been charged. (Connecting, or
# waiting for a pooled connection, timed out; or the connection was refused.)
_NEVER_SENT = (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError)
# The configured URL cannot be used at all: retrying cannot help.
_BAD_URL = (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)
_PERMANENT = (
    stripe.AuthenticationError,
    stripe.PermissionError,
    stripe.InvalidRequestError,
    stripe.IdempotencyError,
)


class StripeGateway:
    """Charges through Stripe's PaymentIntents with the official SDK's async client."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        max_connections: int = 1000,  # the keep-alive pool: the worker passes concurrency + 8
        timeout: float = 10.0,
    ) -> None:
        self._http = _AiohttpClient(timeout=timeout, max_connections=max_connections)
        self._api_key = api_key
        self._client = stripe.StripeClient(
            api_key,
            # The SDK joins base and path ("/v1/..."): a trailing slash would double it.
            base_addresses={"api": base_url.rstrip("/")},
            http_client=self._http,
            max_network_retries=0,
        )

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        """Create and confirm a PaymentIntent once per idempotency key.

        Raises:
            GatewayRateLimited: 429, nothing was executed (with the answer's Retry-After).
            GatewayUnavailable: nothing was executed (5xx, 409, connection refused).
            OutcomeUnknown: the charge may have run (timeout, dropped, replayed 5xx).
            GatewayRejected: invalid request, idempotency mismatch or authentication failure.
        """
        # billq's keys last: lookups by them must not be shadowed by caller metadata.
        metadata = {
            **request.metadata,
            BILLQ_KEY: request.idempotency_key,
            BILLQ_ACCOUNT: str(request.account_id),
        }
        params: PaymentIntentCreateParams = {
            "amount": _amount(request),
            "currency": request.currency.lower(),
            "payment_method": request.payment_method,
            "confirm": True,
            "off_session": True,
            "metadata": metadata,
        }
        if request.customer is not None:
            params["customer"] = request.customer
        try:
            intent = await self._client.v1.payment_intents.create_async(
                params=params, options={"idempotency_key": request.idempotency_key}
            )
        except stripe.StripeError as exc:
            mapped = map_stripe_error(exc, secrets=(self._api_key, request.payment_method))
            if isinstance(mapped, Declined):
                return mapped
            raise mapped from exc
        # Read defensively: a 2xx body without these fields is not a PaymentIntent.
        intent_id = getattr(intent, "id", None)
        status = getattr(intent, "status", None)
        if not isinstance(intent_id, str):
            # A 2xx means it ran, but we cannot tell how: reconcile by the key.
            raise OutcomeUnknown("gateway answered 2xx without a payment intent id")
        if status == "succeeded":
            return Charged(charge_id=intent_id)
        # E.g. "processing" (asynchronous payment methods) or "requires_action": not a charge
        # billq can record, and not one a retry with the same key would change.
        raise GatewayRejected(f"gateway left the intent in status {status!r}")

    async def find_by_idempotency_key(self, idempotency_key: str) -> ChargeOutcome | None:
        """The intent carrying this billq key in its metadata, or None.

        Stripe's search is eventually consistent (usually under a minute behind), so this
        answers for keys whose charge is not brand new: what ``pruned_keys`` asks about.

        Raises:
            GatewayUnavailable: the search could not be answered now.
            GatewayRejected: the search was refused (authentication, invalid query).
        """
        escaped = idempotency_key.replace("\\", "\\\\").replace("'", "\\'")
        try:
            page = await self._client.v1.payment_intents.search_async(
                params={
                    "query": f"metadata['{BILLQ_KEY}']:'{escaped}'",
                    "limit": SEARCH_LIMIT,
                }
            )
        except stripe.StripeError as exc:
            raise self._read_failure(exc, "search") from exc
        intents = list(page.data)
        # Succeeded wins over an earlier decline under the same key; otherwise the newest.
        for intent in intents:
            if intent.status == "succeeded":
                return Charged(charge_id=intent.id)
        for intent in intents:
            error = intent.last_payment_error
            if error is not None:
                return Declined(
                    code=error.code or "card_declined",
                    decline_code=error.decline_code,
                    message=_scrub(error.message or "", (self._api_key,)),
                    charge_id=intent.id,
                )
        return None

    async def list_charges(self, since: datetime | None) -> AsyncIterator[GatewayCharge]:
        """Succeeded intents, newest first (``created[gte]`` narrows the listing at Stripe).

        Raises:
            GatewayUnavailable: a page could not be read now.
            GatewayRejected: the listing was refused.
        """
        params: PaymentIntentListParams = {"limit": 100}
        if since is not None:
            params["created"] = {"gte": int(since.timestamp())}
        while True:
            try:
                page = await self._client.v1.payment_intents.list_async(params=params)
            except stripe.StripeError as exc:
                raise self._read_failure(exc, "listing") from exc
            intents = list(page.data)
            for intent in intents:
                charge = gateway_charge(
                    intent.id,
                    int(intent.created or 0),
                    # Back to billq's ISO minor units, so audit compares like with like.
                    from_gateway_units(int(intent.amount or 0), str(intent.currency or "")),
                    str(intent.currency or ""),
                    # A StripeObject is not a mapping (no .items()): to_dict() is its dict.
                    {str(k): str(v) for k, v in intent.metadata.to_dict().items()}
                    if intent.metadata
                    else {},
                )
                if since is not None and charge.created < since:
                    return
                if intent.status == "succeeded":
                    yield charge
            if not page.has_more or not intents:
                return
            params["starting_after"] = intents[-1].id

    async def refund(self, request: RefundRequest) -> Refunded:
        """Refund (part of) a PaymentIntent once per idempotency key (Stripe's Refund API).

        Raises:
            GatewayRateLimited: 429, nothing was executed (with the answer's Retry-After).
            GatewayUnavailable: nothing was executed (5xx, 409, connection refused).
            OutcomeUnknown: the refund may have run (timeout, dropped, replayed 5xx).
            RefundRefused: more than the intent has left to refund.
            GatewayRejected: invalid request, idempotency mismatch or authentication failure.
        """
        try:
            amount = to_gateway_units(request.amount_cents, request.currency)
        except ValueError as exc:
            raise GatewayRejected(f"gateway 400 invalid_request_error: {exc}") from None
        params: RefundCreateParams = {
            "payment_intent": request.charge_id,
            "amount": amount,
            "metadata": {**request.metadata, BILLQ_KEY: request.idempotency_key},
        }
        try:
            refund = await self._client.v1.refunds.create_async(
                params=params, options={"idempotency_key": request.idempotency_key}
            )
        except stripe.StripeError as exc:
            if isinstance(exc, stripe.InvalidRequestError) and exc.code in REFUND_REFUSED:
                message = _scrub(exc.user_message or "", (self._api_key,))
                raise RefundRefused(f"gateway 400 {exc.code}: {message}") from exc
            mapped = map_stripe_error(exc, secrets=(self._api_key,))
            if isinstance(mapped, Declined):
                raise GatewayRejected("gateway answered a refund with a card error") from exc
            raise mapped from exc
        refund_id = getattr(refund, "id", None)
        if not isinstance(refund_id, str):
            raise OutcomeUnknown("gateway answered 2xx without a refund id")
        if refund.status != "succeeded":
            # "pending" (some payment methods refund asynchronously): not one billq can record.
            raise GatewayRejected(f"gateway left the refund in status {refund.status!r}")
        return Refunded(
            refund_id=refund_id,
            amount_cents=from_gateway_units(int(refund.amount), request.currency),
        )

    async def list_refunds(self, since: datetime | None) -> AsyncIterator[GatewayRefund]:
        """Succeeded refunds, newest first (``created[gte]`` narrows the listing at Stripe).

        Raises:
            GatewayUnavailable: a page could not be read now.
            GatewayRejected: the listing was refused.
        """
        params: RefundListParams = {"limit": 100}
        if since is not None:
            params["created"] = {"gte": int(since.timestamp())}
        async for refunds in self._refund_pages(params, "listing"):
            for r in refunds:
                currency = str(r.currency or "")
                intent = r.payment_intent
                metadata = r.metadata.to_dict() if r.metadata else {}
                refund = gateway_refund(
                    r.id,
                    str(intent if isinstance(intent, str) else getattr(intent, "id", "")),
                    int(r.created or 0),
                    from_gateway_units(int(r.amount or 0), currency),
                    currency,
                    metadata.get(BILLQ_KEY),
                )
                if since is not None and refund.created < since:
                    return
                if r.status == "succeeded":
                    yield refund

    async def find_refund(self, charge_id: str, idempotency_key: str) -> Refunded | None:
        """The succeeded refund of PaymentIntent ``charge_id`` carrying this billq key, or None.

        Stripe has no search over refunds; its refund list takes a ``payment_intent`` filter
        and is read-after-write consistent (unlike the search ``find_by_idempotency_key``
        uses), so a refund made a moment ago is found. The key is matched on the metadata.

        Raises:
            GatewayUnavailable: a page could not be read now.
            GatewayRejected: the listing was refused (authentication, an unknown intent).
        """
        params: RefundListParams = {"payment_intent": charge_id, "limit": 100}
        async for refunds in self._refund_pages(params, "refund lookup"):
            for r in refunds:
                metadata = r.metadata.to_dict() if r.metadata else {}
                if metadata.get(BILLQ_KEY) == idempotency_key and r.status == "succeeded":
                    amount = from_gateway_units(int(r.amount or 0), str(r.currency or ""))
                    return Refunded(refund_id=r.id, amount_cents=amount)
        return None

    async def _refund_pages(
        self, params: RefundListParams, what: str
    ) -> AsyncIterator[list[stripe.Refund]]:
        """Stripe's refund list a page at a time, newest first (``starting_after``)."""
        while True:
            try:
                page = await self._client.v1.refunds.list_async(params=params)
            except stripe.StripeError as exc:
                raise self._read_failure(exc, what) from exc
            refunds = list(page.data)
            yield refunds
            if not page.has_more or not refunds:
                return
            params["starting_after"] = refunds[-1].id

    def _read_failure(self, exc: stripe.StripeError, what: str) -> BillqError:
        """A failed read (a search, a listing): it changes nothing, so asking again is safe
        whatever went wrong."""
        mapped = map_stripe_error(exc, secrets=(self._api_key,))
        if isinstance(mapped, TransientError):
            return GatewayUnavailable(f"gateway {what} failed: {mapped}")
        if isinstance(mapped, Declined):
            return GatewayRejected(f"gateway answered a {what} with a card error")
        return mapped

    async def aclose(self) -> None:
        await self._http.close_async()


def map_stripe_error(
    exc: stripe.StripeError, *, secrets: tuple[str, ...] = ()
) -> Declined | BillqError:
    """What a failed create-and-confirm call says about the charge (see the module table).

    ``secrets`` (the API key, the payment method) are masked in every message.
    """
    if isinstance(exc, stripe.CardError):
        error = exc.error
        intent = error.payment_intent if error is not None else None
        return Declined(
            code=exc.code or "card_declined",
            decline_code=error.decline_code if error is not None else None,
            message=_scrub(exc.user_message or "", secrets),
            charge_id=intent.id if intent is not None else None,
        )
    if isinstance(exc, stripe.APIConnectionError):
        # stripe's AIOHTTPClient wraps every aiohttp failure in APIConnectionError; the
        # exception it came from (its __cause__) says whether the request went out.
        cause = exc.__cause__
        name = type(cause).__name__ if cause is not None else "unknown"
        if isinstance(cause, _BAD_URL):
            return GatewayMisconfigured(f"gateway URL unusable: {name}")
        if isinstance(cause, _NEVER_SENT):
            return GatewayUnavailable(f"gateway unreachable: {name}")
        if isinstance(cause, TimeoutError):
            name = "ReadTimeout"  # aiohttp's SocketTimeoutError: named as the sandbox's is
        # Sent, or partly sent, with no answer: the gateway may have charged.
        return OutcomeUnknown(
            f"no answer from the gateway ({name}); retry with the same idempotency key"
        )
    if isinstance(exc, stripe.RateLimitError):
        # Nothing ran, and the gateway is up: the worker waits and resends (not a breaker failure).
        wait = retry_after_s(_header(exc, "retry-after"))
        return GatewayRateLimited(f"gateway answered {exc.http_status} (rate limited)", wait)
    status = exc.http_status
    if isinstance(exc, _PERMANENT):
        error = exc.error
        kind = (error.type if error is not None else None) or type(exc).__name__
        message = _scrub(exc.user_message or "no message", secrets)
        if status in (401, 403):
            # Our key or its permissions, not the charge: the worker's breaker holds the work.
            return GatewayMisconfigured(f"gateway {status} {kind}: {message}")
        return GatewayRejected(f"gateway {status} {kind}: {message}")
    # APIError, and whatever else the SDK may raise: judge by the status.
    if status is None or 200 <= status < 300:
        # An answer the SDK could not read (e.g. a proxy's page): it may have run.
        return OutcomeUnknown(f"gateway answered {status} with an unreadable body")
    if status >= 500:
        if _replayed(exc):
            # The gateway stored its first answer, a 5xx: the charge may have run.
            return OutcomeUnknown(f"gateway replayed a {status} for this key")
        return GatewayUnavailable(f"gateway answered {status}")
    if status == 409:
        # The same key is executing concurrently: nothing ran for this request.
        return GatewayUnavailable(f"gateway answered {status}")
    message = _scrub(exc.user_message or "no message", secrets)
    return GatewayRejected(f"gateway {status} {type(exc).__name__}: {message}")


def _replayed(exc: stripe.StripeError) -> bool:
    """Whether the answer carried ``Idempotent-Replayed: true``."""
    return str(_header(exc, "idempotent-replayed")).lower() == "true"


def _header(exc: stripe.StripeError, name: str) -> str | None:
    """A response header of a failed call (``name`` in lower case), or None.

    For an error answer whose body it cannot parse, stripe-python passes the response headers
    in the ``json_body`` slot (``_APIRequestor._interpret_response``), so both are read.
    """
    for headers in (exc.headers, exc.json_body):
        if isinstance(headers, Mapping):
            for key, value in headers.items():
                if isinstance(key, str) and key.lower() == name:
                    return str(value)
    return None


def _scrub(message: str, secrets: tuple[str, ...]) -> str:
    # Stripe echoes tokens in some messages; they must not reach logs or dead letters.
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message


class _AiohttpClient(stripe.AIOHTTPClient):
    """stripe's aiohttp client on billq's pool (``shared.gateway.http_pool``): keep-alive
    connections sized to the worker's concurrency, timeouts per phase."""

    def __init__(self, *, timeout: float, max_connections: int) -> None:
        # timeout=None: the SDK would pass a total timeout per request, which hides the phase.
        super().__init__(timeout=None)
        self._opened: aiohttp.ClientSession | None = None
        self._limit = max_connections
        self._phase_timeout = timeout

    @property
    def _session(self) -> aiohttp.ClientSession:
        # Created on first use: an aiohttp session belongs to the running event loop. TLS is
        # verified against the SDK's own CA bundle, as its default client does.
        if self._opened is None:
            tls = ssl.create_default_context(cafile=stripe.ca_bundle_path)
            self._opened = keepalive_session(self._limit, self._phase_timeout, tls=tls)
        return self._opened

    async def close_async(self) -> None:
        # Only a session that was opened: the SDK's own would open one just to close it.
        if self._opened is not None:
            await self._opened.close()
            self._opened = None


def _amount(request: ChargeRequest) -> int:
    """billq's ISO minor units as the gateway counts them (see shared.gateway.amounts)."""
    try:
        return to_gateway_units(request.amount_cents, request.currency)
    except ValueError as exc:
        raise GatewayRejected(f"gateway 400 invalid_request_error: Invalid amount: {exc}") from None
