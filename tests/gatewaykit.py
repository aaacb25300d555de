"""Helpers for the gateway tests: the sandbox server in this event loop, requests, adapters.

Every HTTP adapter is opened the same way (``connect``) on a Stripe-speaking base URL, so a
scenario written once runs against each of them (``tests/integration/test_gateway_conformance.py``).
Adding an adapter is one entry in ``HTTP_ADAPTERS``.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from sandbox.faults import Faults
from sandbox.server import build_app
from shared.gateway.port import ChargeRequest, PaymentGateway, RefundRequest
from shared.gateway.sandbox import SandboxGateway
from shared.gateway.stripe_gateway import StripeGateway

API_KEY = "sk_test_billq"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
KEY = "acct-1:2026-03"


def charge(
    key: str = KEY, card: str = "pm_card_visa", amount: int = 1999, **kw: Any
) -> ChargeRequest:
    """A charge request with the tests' defaults; any field can be overridden."""
    return ChargeRequest(
        idempotency_key=key,
        account_id=kw.pop("account_id", 1),
        amount_cents=amount,
        currency=kw.pop("currency", "USD"),
        payment_method=card,
        customer=kw.pop("customer", "cus_billq1"),
        metadata=kw.pop("metadata", {"billq_job_id": "11"}),
    )


def refund(
    charge_id: str, amount: int = 1999, key: str = "billq_refund_1_1", **kw: Any
) -> RefundRequest:
    """A refund request of (part of) ``charge_id`` with the tests' defaults."""
    return RefundRequest(
        idempotency_key=key,
        charge_id=charge_id,
        amount_cents=amount,
        currency=kw.pop("currency", "USD"),
        metadata=kw.pop("metadata", {"billq_charge_id": "1"}),
    )


# -- the sandbox server, in this event loop ------------------------------------------------


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str] = field(default_factory=dict)
    peer: object = None  # the client's (host, port): one per connection it opened


@dataclass
class InFlight:
    """Requests the server is answering now, and the most it ever answered at once."""

    now: int = 0
    peak: int = 0
    total: int = 0


@contextlib.asynccontextmanager
async def sandbox(
    ledger: Path | str,
    *,
    seen: list[Seen] | None = None,
    in_flight: InFlight | None = None,
    **faults: Any,
) -> AsyncIterator[str]:
    """The sandbox gateway on a free port; ``seen`` collects the requests it answers,
    ``in_flight`` counts those it is answering at once."""
    app = build_app(ledger=str(ledger), faults=Faults(**faults))
    if seen is not None:
        app.middlewares.append(_recorder(seen))
    if in_flight is not None:
        app.middlewares.append(_counter(in_flight))
    async with _serve(app) as url:
        yield url


@contextlib.asynccontextmanager
async def stub(status: int, body: bytes, headers: dict[str, str]) -> AsyncIterator[str]:
    """A server answering every request with one fixed response (answers no sandbox gives)."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    async with _serve(app) as url:
        yield url


@contextlib.asynccontextmanager
async def _serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def _recorder(seen: list[Seen]) -> Any:
    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen.append(Seen(request.method, request.path, dict(request.headers), form, peer))
        return await handler(request)

    return record


def _counter(flight: InFlight) -> Any:
    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        flight.now += 1
        flight.total += 1
        flight.peak = max(flight.peak, flight.now)
        try:
            return await handler(request)
        finally:
            flight.now -= 1

    return count


async def all_intents(url: str) -> list[dict[str, Any]]:
    """Every payment intent the sandbox at ``url`` holds, newest first."""
    return await _all(url, "/v1/payment_intents")


async def all_refunds(url: str) -> list[dict[str, Any]]:
    """Every refund the sandbox at ``url`` holds, newest first."""
    return await _all(url, "/v1/refunds")


async def _all(url: str, path: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
        while True:
            page = (await http.get(path, params=params)).json()
            out.extend(page["data"])
            if not page["has_more"]:
                return out
            params["starting_after"] = page["data"][-1]["id"]


def prune_keys(ledger: Path) -> None:
    """Forget every idempotency key, as Stripe may after 24 h (the sandbox must be stopped)."""
    with contextlib.closing(sqlite3.connect(ledger)) as db, db:
        db.execute("DELETE FROM idempotency_keys")


# -- the HTTP adapters ---------------------------------------------------------------------

Opener = Callable[[str, str, float], PaymentGateway]  # (base URL, API key, timeout)

HTTP_ADAPTERS: dict[str, Opener] = {
    # The sandbox client's default transport is aiohttp's pool; httpx's own is kept equivalent.
    "sandbox-aiohttp": lambda url, key, timeout: SandboxGateway(url, key, timeout=timeout),
    "sandbox-httpcore": lambda url, key, timeout: SandboxGateway(
        url, key, timeout=timeout, transport=httpx.AsyncHTTPTransport()
    ),
    "stripe": lambda url, key, timeout: StripeGateway(url, key, timeout=timeout),
}


@contextlib.asynccontextmanager
async def connect(
    adapter: str, url: str, *, timeout: float = 5.0, api_key: str = API_KEY
) -> AsyncIterator[PaymentGateway]:
    """The named HTTP adapter on ``url``, closed afterwards."""
    gateway = HTTP_ADAPTERS[adapter](url, api_key, timeout)
    try:
        yield gateway
    finally:
        await gateway.aclose()
