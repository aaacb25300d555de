"""``SandboxGateway``: the HTTP adapter for the sandbox (Stripe's PaymentIntents wire format).

Every failure is classified here, at the edge, by what it says about the charge::

    2xx succeeded                    Charged
    402 card_error                   Declined (a business outcome, not an exception)
    5xx with Idempotent-Replayed     OutcomeUnknown      the stored first answer was a 5xx
    5xx, 409                         GatewayUnavailable  nothing ran; retry with the same key
    429                              GatewayRateLimited  nothing ran; its Retry-After carried
    connect error / connect timeout  GatewayUnavailable  the request never left
    read/write timeout, dropped      OutcomeUnknown      it may have run; retry with the same key
    401, 403, unusable URL           GatewayMisconfigured  the gateway refused billq itself
    400, 404, other                  GatewayRejected     permanent (invalid request)

No exception message carries the payment method or the API key.

Longer than most: the whole wire protocol of one gateway (charges, refunds, search and their
classification) lives in one adapter, as the port asks.

Requests go straight through one aiohttp session (HTTP/1.1 keep-alive pool sized to the
worker's concurrency, created on first use). Measured against the sandbox at 64 concurrent
charges on a 2-core machine: ≈ 590 µs CPU per charge this way, ≈ 1,380 µs through an
``httpx.AsyncClient`` over the same aiohttp pool (httpx's request/response models), ≈ 9,800
µs through httpx's own httpcore pool (it scans every connection per request,
encode/httpx#3215). An ``httpx`` transport can still be injected (``MockTransport`` in tests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn, Protocol

import aiohttp
import httpx
import orjson

from shared.errors import (
    GatewayMisconfigured,
    GatewayRateLimited,
    GatewayRejected,
    GatewayUnavailable,
    OutcomeUnknown,
    RefundRefused,
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

INTENTS = "/v1/payment_intents"
REFUNDS = "/v1/refunds"
# Stripe's codes for a refund of more than the charge has left.
REFUND_REFUSED = frozenset({"amount_too_large", "charge_already_refunded"})
BILLQ_KEY = "billq_idempotency_key"
BILLQ_ACCOUNT = "billq_account_id"


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: Mapping[str, str]
    content: bytes


class _NotSent(Exception):
    """The request never left (connection refused, connect or pool timeout)."""


class _Unanswered(Exception):
    """Sent, or partly sent, with no answer (read timeout, reset): it may have run."""


class _BadUrl(Exception):
    """The URL cannot be requested."""


class SandboxGateway:
    """Charges through the sandbox gateway (or anything speaking Stripe's PaymentIntents)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        max_connections: int = 1000,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._api_key = api_key
        self._base = base_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._send: _Send = (
            _HttpxSend(self._base, self._auth, timeout, transport)
            if transport is not None
            else _AiohttpSend(self._auth, timeout, max_connections)
        )

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        """Create and confirm a PaymentIntent once per idempotency key.

        Raises:
            GatewayRateLimited: 429, nothing was executed (with the answer's Retry-After).
            GatewayUnavailable: nothing was executed (5xx, 409, connection refused).
            OutcomeUnknown: the charge may have run (timeout, dropped, replayed 5xx).
            GatewayMisconfigured: the gateway refused the key (401/403), or an unusable URL.
            GatewayRejected: invalid request or idempotency mismatch.
        """
        form = {
            "amount": str(_amount(request)),
            "currency": request.currency.lower(),
            "payment_method": request.payment_method,
            "confirm": "true",
            "off_session": "true",  # billing runs charge saved cards without the customer
        }
        if request.customer is not None:
            form["customer"] = request.customer
        # billq's keys last: lookups by them must not be shadowed by caller metadata.
        metadata = {
            **request.metadata,
            BILLQ_KEY: request.idempotency_key,
            BILLQ_ACCOUNT: str(request.account_id),
        }
        form.update({f"metadata[{k}]": v for k, v in metadata.items()})
        answer = await self._post(INTENTS, form, request.idempotency_key)
        return self._outcome(answer, request.payment_method)

    async def refund(self, request: RefundRequest) -> Refunded:
        """Refund (part of) a PaymentIntent once per idempotency key (Stripe's Refund API).

        Raises:
            GatewayRateLimited: 429, nothing was executed (with the answer's Retry-After).
            GatewayUnavailable: nothing was executed (5xx, 409, connection refused).
            OutcomeUnknown: the refund may have run (timeout, dropped, replayed 5xx).
            RefundRefused: more than the intent has left to refund.
            GatewayMisconfigured: the gateway refused the key (401/403), or an unusable URL.
            GatewayRejected: invalid request (unknown intent, bad amount) or key mismatch.
        """
        try:
            amount = to_gateway_units(request.amount_cents, request.currency)
        except ValueError as exc:
            raise GatewayRejected(f"gateway 400 invalid_request_error: {exc}") from None
        form = {"payment_intent": request.charge_id, "amount": str(amount)}
        metadata = {**request.metadata, BILLQ_KEY: request.idempotency_key}
        form.update({f"metadata[{k}]": v for k, v in metadata.items()})
        answer = await self._post(REFUNDS, form, request.idempotency_key)
        if 200 <= answer.status < 300:
            refund = _json(answer.content)
            if refund is None or not isinstance(refund.get("id"), str):
                raise OutcomeUnknown(f"gateway answered {answer.status} with an unreadable body")
            if refund.get("status") != "succeeded":
                raise GatewayRejected(f"gateway left the refund in status {refund.get('status')!r}")
            return Refunded(
                refund_id=refund["id"],
                amount_cents=from_gateway_units(int(refund["amount"]), request.currency),
            )
        error = (_json(answer.content) or {}).get("error") or {}
        if answer.status == 400 and error.get("code") in REFUND_REFUSED:
            message = self._scrub(str(error.get("message") or ""), "")
            raise RefundRefused(f"gateway 400 {error.get('code')}: {message}")
        self._raise_for(answer, "")

    async def list_refunds(self, since: datetime | None) -> AsyncIterator[GatewayRefund]:
        """Succeeded refunds, newest first; raises as ``list_charges`` does."""
        async for refunds in self._pages(REFUNDS):
            for r in refunds:
                currency = str(r.get("currency") or "")
                refund = gateway_refund(
                    r["id"],
                    str(r.get("payment_intent") or r.get("charge") or ""),
                    int(r.get("created") or 0),
                    from_gateway_units(int(r.get("amount") or 0), currency),
                    currency,
                    (r.get("metadata") or {}).get(BILLQ_KEY),
                )
                if since is not None and refund.created < since:
                    return
                if r.get("status") == "succeeded":
                    yield refund

    async def find_refund(self, charge_id: str, idempotency_key: str) -> Refunded | None:
        """The succeeded refund of intent ``charge_id`` carrying this billq key, or None:
        the intent's refunds (``payment_intent`` filter) matched on the metadata, as at
        Stripe, which has no search over refunds.

        Raises:
            GatewayUnavailable: the listing could not be answered now.
            GatewayMisconfigured: the gateway refused the key (401/403), or an unusable URL.
            GatewayRejected: the listing was refused (an unknown intent).
        """
        async for refunds in self._pages(REFUNDS, {"payment_intent": charge_id}):
            for r in refunds:
                if (r.get("metadata") or {}).get(BILLQ_KEY) == idempotency_key and r.get(
                    "status"
                ) == "succeeded":
                    currency = str(r.get("currency") or "")
                    amount = from_gateway_units(int(r.get("amount") or 0), currency)
                    return Refunded(refund_id=str(r["id"]), amount_cents=amount)
        return None

    async def list_charges(self, since: datetime | None) -> AsyncIterator[GatewayCharge]:
        """Succeeded intents, newest first, paging with ``starting_after``.

        Raises:
            GatewayUnavailable: a page could not be read now.
            GatewayMisconfigured: the gateway refused the key (401/403), or an unusable URL.
            GatewayRejected: the listing was refused.
        """
        async for intents in self._pages(INTENTS):
            for intent in intents:
                charge = gateway_charge(
                    intent["id"],
                    int(intent.get("created") or 0),
                    # Back to billq's ISO minor units, so audit compares like with like.
                    from_gateway_units(
                        int(intent.get("amount") or 0), str(intent.get("currency") or "")
                    ),
                    str(intent.get("currency") or ""),
                    dict(intent.get("metadata") or {}),
                )
                if since is not None and charge.created < since:
                    return  # newest first: the rest are older still
                if intent.get("status") == "succeeded":
                    yield charge

    async def _post(self, path: str, form: Mapping[str, str], key: str) -> _Answer:
        """A POST under an idempotency key, its transport failures classified."""
        try:
            return await self._send.request(
                "POST", self._base + path, data=form, headers={"Idempotency-Key": key}
            )
        except _NotSent as exc:
            raise GatewayUnavailable(f"gateway unreachable: {exc}") from exc
        except _BadUrl as exc:
            raise GatewayMisconfigured(f"gateway URL unusable: {exc}") from exc
        except _Unanswered as exc:
            # Sent, or partly sent, with no answer: the gateway may have run it.
            raise OutcomeUnknown(
                f"no answer from the gateway ({exc}); retry with the same idempotency key"
            ) from exc

    async def _pages(
        self, path: str, filters: Mapping[str, str] | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The objects of a Stripe list, a page at a time, newest first (``starting_after``)."""
        params = {**(filters or {}), "limit": "100"}
        while True:
            page = await self._get(path, params, "listing")
            items: list[dict[str, Any]] = page.get("data") or []
            yield items
            if not page.get("has_more") or not items:
                return
            params = {**(filters or {}), "limit": "100", "starting_after": items[-1]["id"]}

    async def _get(self, path: str, params: Mapping[str, str], what: str) -> dict[str, Any]:
        """A read's JSON answer, its failures classified."""
        try:
            answer = await self._send.request("GET", self._base + path, params=params)
        except _BadUrl as exc:
            raise GatewayMisconfigured(f"gateway URL unusable: {exc}") from exc
        except (_NotSent, _Unanswered) as exc:
            # A read changes nothing: whatever went wrong, asking again is safe.
            raise GatewayUnavailable(f"gateway {what} failed: {exc}") from exc
        if answer.status != 200:
            self._raise_for(answer, "")
        page = _json(answer.content)
        if page is None:
            raise GatewayUnavailable(f"gateway {what} answered 200 with an unreadable body")
        return page

    async def find_by_idempotency_key(self, idempotency_key: str) -> ChargeOutcome | None:
        """The charge carrying this billq key in its metadata, or None.

        Raises:
            GatewayUnavailable: the search could not be answered now.
            GatewayMisconfigured: the gateway refused the key (401/403), or an unusable URL.
            GatewayRejected: the search was refused (invalid query).
        """
        escaped = idempotency_key.replace("\\", "\\\\").replace("'", "\\'")
        query = {"query": f"metadata['{BILLQ_KEY}']:'{escaped}'", "limit": "100"}
        page = await self._get(f"{INTENTS}/search", query, "search")
        intents: list[dict[str, Any]] = page.get("data") or []
        # Succeeded wins over an earlier decline under the same key; otherwise the newest.
        for intent in intents:
            if intent.get("status") == "succeeded":
                return Charged(charge_id=intent["id"])
        for intent in intents:
            error = intent.get("last_payment_error")
            if error:
                return Declined(
                    code=str(error.get("code") or "card_declined"),
                    decline_code=error.get("decline_code"),
                    message=self._scrub(str(error.get("message") or ""), ""),
                    charge_id=intent["id"],
                )
        return None

    async def aclose(self) -> None:
        await self._send.aclose()

    def _outcome(self, answer: _Answer, payment_method: str) -> ChargeOutcome:
        status = answer.status
        if 200 <= status < 300:
            intent = _json(answer.content)
            if intent is None or not isinstance(intent.get("id"), str):
                # A 2xx means it ran, but we cannot tell how: reconcile by the key.
                raise OutcomeUnknown(f"gateway answered {status} with an unreadable body")
            if intent.get("status") == "succeeded":
                return Charged(charge_id=intent["id"])
            raise GatewayRejected(f"gateway left the intent in status {intent.get('status')!r}")
        if status == 402:
            error = (_json(answer.content) or {}).get("error") or {}
            if error.get("type") == "card_error":
                intent = error.get("payment_intent") or {}
                return Declined(
                    code=str(error.get("code") or "card_declined"),
                    decline_code=error.get("decline_code"),
                    message=self._scrub(str(error.get("message") or ""), payment_method),
                    charge_id=intent.get("id"),
                )
        self._raise_for(answer, payment_method)

    def _raise_for(self, answer: _Answer, payment_method: str) -> NoReturn:
        status = answer.status
        if status >= 500:
            if answer.headers.get("Idempotent-Replayed") == "true":
                # The gateway stored its first answer, a 5xx: the charge may have run.
                raise OutcomeUnknown(f"gateway replayed a {status} for this key")
            raise GatewayUnavailable(f"gateway answered {status}")
        if status == 429:
            # Too many requests: nothing ran, and the gateway is up (not a breaker failure).
            wait = retry_after_s(answer.headers.get("Retry-After"))
            raise GatewayRateLimited(f"gateway answered {status} (rate limited)", wait)
        if status == 409:
            # The same key is executing concurrently. Nothing ran.
            raise GatewayUnavailable(f"gateway answered {status}")
        error = (_json(answer.content) or {}).get("error") or {}
        kind = error.get("type") or "error"
        message = self._scrub(str(error.get("message") or "no message"), payment_method)
        if status in (401, 403):
            # Our key or its permissions, not the charge: the worker's breaker holds the work.
            raise GatewayMisconfigured(f"gateway {status} {kind}: {message}")
        raise GatewayRejected(f"gateway {status} {kind}: {message}")

    def _scrub(self, message: str, payment_method: str) -> str:
        # Stripe echoes tokens in some messages; they must not reach logs or dead letters.
        for secret in (self._api_key, payment_method):
            if secret:
                message = message.replace(secret, "***")
        return message


def _json(content: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None (a proxy's HTML error page, a truncated body)."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


class _Send(Protocol):
    async def request(
        self,
        method: str,
        url: str,
        *,
        data: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> _Answer:
        """The answer; raises _NotSent, _Unanswered or _BadUrl."""
        ...

    async def aclose(self) -> None: ...


class _AiohttpSend:
    """One aiohttp session: its keep-alive pool is sized to the worker's concurrency, so a
    charge never waits for a connection (that wait would spend the call's timeout)."""

    def __init__(self, auth: Mapping[str, str], timeout: float, max_connections: int) -> None:
        self._auth = dict(auth)
        self._limit = max_connections
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Created on first use: an aiohttp session belongs to the running event loop.
        if self._session is None:
            self._session = keepalive_session(self._limit, self._timeout, headers=self._auth)
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        data: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> _Answer:
        try:
            async with self._open().request(
                method, url, data=data, params=params, headers=headers, allow_redirects=False
            ) as response:
                return _Answer(response.status, response.headers, await response.read())
        except aiohttp.ConnectionTimeoutError as exc:  # connecting, or waiting for the pool
            raise _NotSent(type(exc).__name__) from exc
        except aiohttp.ClientConnectorError as exc:
            raise _NotSent(type(exc).__name__) from exc
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
            raise _BadUrl(str(exc)) from exc
        except TimeoutError as exc:  # a read timeout: the request went out
            raise _Unanswered("ReadTimeout") from exc
        except aiohttp.ClientError as exc:
            raise _Unanswered(type(exc).__name__) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _HttpxSend:
    """Through an injected httpx transport (``httpx.MockTransport`` in tests)."""

    def __init__(
        self,
        base: str,
        auth: Mapping[str, str],
        timeout: float,
        transport: httpx.AsyncBaseTransport,
    ) -> None:
        self._client = httpx.AsyncClient(
            headers=dict(auth), timeout=httpx.Timeout(timeout), transport=transport
        )

    async def request(
        self,
        method: str,
        url: str,
        *,
        data: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> _Answer:
        try:
            response = await self._client.request(
                method,
                url,
                data=dict(data) if data else None,
                params=dict(params) if params else None,
                headers=dict(headers) if headers else None,
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise _NotSent(type(exc).__name__) from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise _BadUrl(str(exc)) from exc
        except httpx.TransportError as exc:
            raise _Unanswered(type(exc).__name__) from exc
        return _Answer(response.status_code, response.headers, response.content)

    async def aclose(self) -> None:
        await self._client.aclose()


def _amount(request: ChargeRequest) -> int:
    """billq's ISO minor units as the gateway counts them (see shared.gateway.amounts)."""
    try:
        return to_gateway_units(request.amount_cents, request.currency)
    except ValueError as exc:
        raise GatewayRejected(f"gateway 400 invalid_request_error: Invalid amount: {exc}") from None
