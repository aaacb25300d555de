"""``SandboxGateway``: the HTTP adapter for the sandbox (Stripe's PaymentIntents wire format).

Every failure is classified here, at the edge, by what it says about the charge::

    2xx succeeded                    Charged
    402 card_error                   Declined (a business outcome, not an exception)
    5xx with Idempotent-Replayed     OutcomeUnknown      the stored first answer was a 5xx
    5xx, 409, 429                    GatewayUnavailable  nothing ran; retry with the same key
    connect error / connect timeout  GatewayUnavailable  the request never left
    read/write timeout, dropped      OutcomeUnknown      it may have run; retry with the same key
    400, 401, 403, 404, other        GatewayRejected     permanent (invalid request, auth)

No exception message carries the payment method or the API key.

The client is an ``httpx.AsyncClient`` (transports injectable, e.g. ``MockTransport``);
by default it sends through ``AiohttpTransport``. httpcore's own pool scans every connection
on each request (encode/httpx#3215): measured against the sandbox at 64 concurrent calls it
managed ~200-340 requests/s and fell to ~150/s at 500, against ~1,700 charges/s through
aiohttp's pool on the same machine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, NoReturn

import aiohttp
import httpx
import orjson

from shared.errors import GatewayRejected, GatewayUnavailable, OutcomeUnknown
from shared.gateway.amounts import from_gateway_units, to_gateway_units
from shared.gateway.port import (
    Charged,
    ChargeOutcome,
    ChargeRequest,
    Declined,
    GatewayCharge,
    gateway_charge,
)

INTENTS = "/v1/payment_intents"
BILLQ_KEY = "billq_idempotency_key"
BILLQ_ACCOUNT = "billq_account_id"


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
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(timeout),
            # Sized for a worker's whole concurrency: waiting for a pooled connection would
            # spend the call's timeout before the request is even sent.
            transport=transport or AiohttpTransport(max_connections=max_connections),
        )

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        """Create and confirm a PaymentIntent once per idempotency key.

        Raises:
            GatewayUnavailable: nothing was executed (5xx, 409, 429, connection refused).
            OutcomeUnknown: the charge may have run (timeout, dropped, replayed 5xx).
            GatewayRejected: invalid request, idempotency mismatch or authentication failure.
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
        try:
            response = await self._client.post(
                INTENTS, data=form, headers={"Idempotency-Key": request.idempotency_key}
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise GatewayUnavailable(f"gateway unreachable: {type(exc).__name__}") from exc
        except httpx.UnsupportedProtocol as exc:
            raise GatewayRejected(f"gateway URL unusable: {exc}") from exc
        except httpx.TransportError as exc:
            # Sent, or partly sent, with no answer: the gateway may have charged.
            raise OutcomeUnknown(
                f"no answer from the gateway ({type(exc).__name__}); "
                "retry with the same idempotency key"
            ) from exc
        return self._outcome(response, request.payment_method)

    async def list_charges(self, since: datetime | None) -> AsyncIterator[GatewayCharge]:
        """Succeeded intents, newest first, paging with ``starting_after``.

        Raises:
            GatewayUnavailable: a page could not be read now.
            GatewayRejected: the listing was refused.
        """
        params = {"limit": "100"}
        while True:
            try:
                response = await self._client.get(INTENTS, params=params)
            except httpx.UnsupportedProtocol as exc:
                raise GatewayRejected(f"gateway URL unusable: {exc}") from exc
            except httpx.TransportError as exc:
                raise GatewayUnavailable(f"gateway listing failed: {type(exc).__name__}") from exc
            if response.status_code != 200:
                self._raise_for(response, "")
            page = _json(response)
            if page is None:
                raise GatewayUnavailable("gateway listing answered 200 with an unreadable body")
            intents: list[dict[str, Any]] = page.get("data") or []
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
            if not page.get("has_more") or not intents:
                return
            params = {"limit": "100", "starting_after": intents[-1]["id"]}

    async def find_by_idempotency_key(self, idempotency_key: str) -> ChargeOutcome | None:
        """The charge carrying this billq key in its metadata, or None.

        Raises:
            GatewayUnavailable: the search could not be answered now.
            GatewayRejected: the search was refused (authentication, invalid query).
        """
        escaped = idempotency_key.replace("\\", "\\\\").replace("'", "\\'")
        try:
            response = await self._client.get(
                f"{INTENTS}/search",
                params={"query": f"metadata['{BILLQ_KEY}']:'{escaped}'", "limit": "100"},
            )
        except httpx.UnsupportedProtocol as exc:
            raise GatewayRejected(f"gateway URL unusable: {exc}") from exc
        except httpx.TransportError as exc:
            # A search changes nothing: whatever went wrong, asking again is safe.
            raise GatewayUnavailable(f"gateway search failed: {type(exc).__name__}") from exc
        if response.status_code != 200:
            self._raise_for(response, "")
        page = _json(response)
        if page is None:
            raise GatewayUnavailable("gateway search answered 200 with an unreadable body")
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
        await self._client.aclose()

    def _outcome(self, response: httpx.Response, payment_method: str) -> ChargeOutcome:
        status = response.status_code
        if 200 <= status < 300:
            intent = _json(response)
            if intent is None or not isinstance(intent.get("id"), str):
                # A 2xx means it ran, but we cannot tell how: reconcile by the key.
                raise OutcomeUnknown(f"gateway answered {status} with an unreadable body")
            if intent.get("status") == "succeeded":
                return Charged(charge_id=intent["id"])
            raise GatewayRejected(f"gateway left the intent in status {intent.get('status')!r}")
        if status == 402:
            error = (_json(response) or {}).get("error") or {}
            if error.get("type") == "card_error":
                intent = error.get("payment_intent") or {}
                return Declined(
                    code=str(error.get("code") or "card_declined"),
                    decline_code=error.get("decline_code"),
                    message=self._scrub(str(error.get("message") or ""), payment_method),
                    charge_id=intent.get("id"),
                )
        self._raise_for(response, payment_method)

    def _raise_for(self, response: httpx.Response, payment_method: str) -> NoReturn:
        status = response.status_code
        if status >= 500:
            if response.headers.get("Idempotent-Replayed") == "true":
                # The gateway stored its first answer, a 5xx: the charge may have run.
                raise OutcomeUnknown(f"gateway replayed a {status} for this key")
            raise GatewayUnavailable(f"gateway answered {status}")
        if status in (409, 429):
            # 429 rate limit; 409 the same key is executing concurrently. Nothing ran.
            raise GatewayUnavailable(f"gateway answered {status}")
        error = (_json(response) or {}).get("error") or {}
        kind = error.get("type") or "error"
        message = self._scrub(str(error.get("message") or "no message"), payment_method)
        raise GatewayRejected(f"gateway {status} {kind}: {message}")

    def _scrub(self, message: str, payment_method: str) -> str:
        # Stripe echoes tokens in some messages; they must not reach logs or dead letters.
        for secret in (self._api_key, payment_method):
            if secret:
                message = message.replace(secret, "***")
        return message


def _json(response: httpx.Response) -> dict[str, Any] | None:
    """The body as a JSON object, or None (a proxy's HTML error page, a truncated body)."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx's transport interface over an aiohttp connection pool.

    aiohttp failures are raised as the httpx exceptions that say the same about the request
    (connect errors and timeouts: never sent; read timeouts, resets: maybe executed).
    """

    def __init__(self, *, max_connections: int = 1000) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Created on first use: an aiohttp session belongs to the running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                # httpx decodes bodies by their Content-Encoding; decoding twice would fail.
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        limits = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=limits.get("pool"),  # waiting for a pooled connection, and connecting
            sock_connect=limits.get("connect"),
            sock_read=limits.get("read"),
        )
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        try:
            async with self._open().request(
                request.method,
                str(request.url),
                headers=headers,
                data=await request.aread(),
                allow_redirects=False,
                timeout=timeout,
            ) as response:
                content = await response.read()
                return httpx.Response(
                    response.status,
                    headers=list(response.raw_headers),
                    content=content,
                    request=request,
                )
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc), request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
            raise httpx.UnsupportedProtocol(str(exc), request=request) from exc
        except TimeoutError as exc:  # a read timeout: the request went out
            raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _amount(request: ChargeRequest) -> int:
    """billq's ISO minor units as the gateway counts them (see shared.gateway.amounts)."""
    try:
        return to_gateway_units(request.amount_cents, request.currency)
    except ValueError as exc:
        raise GatewayRejected(f"gateway 400 invalid_request_error: Invalid amount: {exc}") from None
