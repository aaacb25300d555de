"""The sandbox gateway: a separate HTTP service speaking a subset of Stripe's PaymentIntents API.

It behaves like Stripe where billq depends on it: form-encoded requests, Bearer ``sk_test_``
keys, ``Idempotency-Key`` replay (same status and body, ``Idempotent-Replayed: true``),
``idempotency_error`` for a key reused with other parameters, Stripe-shaped errors, and the
test payment methods of ``shared.gateway.test_cards``. ``sandbox.faults.Faults`` are injected
from a seeded ``random.Random``, rolled on every POST::

    fail_rate     500 api_error before anything runs; nothing stored, a retry may succeed
    timeout_rate  the charge is stored, then no answer; a retry with the key replays it
    latency_ms    added before every POST answer
    spike_rate    share of POSTs delayed by a further spike_ms (latency spikes)
    rate_limit    POSTs a second (a fixed one-second window); the excess is answered 429
                  rate_limit with Retry-After (seconds to the next window), nothing run

Endpoints::

    POST /v1/payment_intents              create and confirm (the charge)
    GET  /v1/payment_intents              list, newest first: limit, starting_after, ending_before
    GET  /v1/payment_intents/search       query=metadata['KEY']:'VALUE', limit, page
    GET  /v1/payment_intents/{id}
    POST /v1/refunds                      refund a succeeded intent (payment_intent or charge),
                                          all it has left or ``amount``; more is refused
    GET  /v1/refunds                      list, newest first: limit, starting_after,
                                          payment_intent, charge
    GET  /healthz
    GET  /_sandbox/faults                 the faults now in force
    PUT  /_sandbox/faults                 change them at run time (JSON: fields of ``Faults``)
    GET  /_sandbox/stats                  what the faults did: ``rate_limited`` (429s answered)

``outage_status`` (set at run time) answers every /v1 request, reads included, with that
status: 503 plays a gateway that is down, 401 a rotated API key.

Longer than most modules: one aiohttp app that emulates Stripe's request handling (form
parsing, idempotency replay and fingerprinting, list cursors, search syntax) end to end; the
ledger and the faults live beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import math
import random
import re
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import orjson
import structlog
from aiohttp import web

from sandbox.faults import Faults
from sandbox.ledger import Ledger
from shared.errors import ConfigError
from shared.gateway import test_cards

log = structlog.get_logger(__name__)

BILLQ_KEY = "billq_idempotency_key"
HANG_S = 3600.0  # a "timed out" request stays silent this long at most
_HANG_POLL_S = 0.5  # how often a silent request checks whether its client has gone
_KNOWN_PARAMS = frozenset(
    {"amount", "currency", "customer", "payment_method", "confirm", "off_session", "description"}
)
_REFUND_PARAMS = frozenset({"payment_intent", "charge", "amount", "reason"})
_SEARCH = re.compile(
    r"""^\s*metadata\[(?P<q1>['"])(?P<field>[^'"]+)(?P=q1)\]\s*:\s*"""
    r"""(?P<q2>['"])(?P<value>(?:\\.|(?!(?P=q2)).)*)(?P=q2)\s*$"""
)


class _Execute(Protocol):
    def __call__(
        self, params: list[tuple[str, str]], key: str | None, fingerprint: str
    ) -> tuple[int, bytes]: ...


class _ApiError(Exception):
    """A Stripe-shaped error answer."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        error: dict[str, Any] = {"type": kind, "message": message}
        if code:
            error["code"] = code
        if param:
            error["param"] = param
        self.status = status
        self.body = orjson.dumps({"error": error})


_FAULT = _ApiError(500, "api_error", "An unknown error occurred (sandbox fault).").body
_LEDGER_FAILED = _ApiError(500, "api_error", "The sandbox ledger could not store this.").body
_RATE_LIMITED = _ApiError(
    429,
    "invalid_request_error",
    "Too many requests hit the API too quickly (sandbox rate limit).",
    "rate_limit",
).body
_BAD_KEY = _ApiError(
    400, "invalid_request_error", "Idempotency-Key must be 1 to 255 characters long."
).body


class _Sandbox:
    def __init__(self, ledger: str, faults: Faults) -> None:
        self._path = ledger
        self._set_faults(faults)
        self._rng = random.Random(faults.seed)
        self._ledger: Ledger | None = None
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # key → (lock, holders + waiters)
        self._closing = asyncio.Event()
        self._window = 0  # the second (int(time.monotonic())) POSTs are counted in
        self._window_posts = 0
        self.rate_limited = 0  # 429s answered, for tests (GET /_sandbox/stats)

    def _set_faults(self, faults: Faults) -> None:
        self.faults = faults
        self._fail_rate = faults.fail_rate
        self._timeout_rate = faults.timeout_rate
        self._latency_s = faults.latency_ms / 1000
        self._spike_rate = faults.spike_rate
        self._spike_s = faults.spike_ms / 1000
        self._outage = (
            _ApiError(401, "authentication_error", "Invalid API Key provided.")
            if faults.outage_status == 401
            else _ApiError(faults.outage_status, "api_error", "The sandbox is down (outage).")
        )

    @web.middleware
    async def outage(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """A wholesale outage answers every API request, reads included, with one status."""
        if self.faults.outage_status and request.path.startswith("/v1/"):
            return _respond(self._outage.status, self._outage.body)
        response: web.StreamResponse = await handler(request)
        return response

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(dataclasses.asdict(self.faults))

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"rate_limited": self.rate_limited})

    def _over_rate(self) -> float | None:
        """Seconds to the next window when this POST is one too many, else None."""
        now = time.monotonic()
        window = int(now)
        if window != self._window:
            self._window, self._window_posts = window, 0
        self._window_posts += 1
        if self._window_posts <= self.faults.rate_limit:
            return None
        self.rate_limited += 1
        return window + 1 - now

    async def put_faults(self, request: web.Request) -> web.Response:
        """Switch faults at run time (tests turn an outage on and off); the seed's sequence
        continues. Fields not given keep their value."""
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise TypeError("expected a JSON object")
            faults = dataclasses.replace(self.faults, **changes)
        except (ValueError, TypeError, ConfigError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self._set_faults(faults)
        log.info("sandbox.faults_changed", **dataclasses.asdict(faults))
        return web.json_response(dataclasses.asdict(faults))

    @property
    def ledger(self) -> Ledger:
        assert self._ledger is not None, "ledger is opened by the app's cleanup context"
        return self._ledger

    async def lifetime(self, app: web.Application) -> AsyncIterator[None]:
        try:
            self._ledger = Ledger(self._path)
        except sqlite3.Error as exc:
            raise ConfigError(f"sandbox ledger {self._path}: {exc}") from None
        yield
        self._ledger.close()

    async def on_shutdown(self, app: web.Application) -> None:
        # Silent requests end now, so shutdown does not wait out HANG_S.
        self._closing.set()

    async def healthz(self, request: web.Request) -> web.Response:
        return _respond(200, b'{"status":"ok"}')

    async def create_intent(self, request: web.Request) -> web.Response:
        return await self._post(request, self._execute)

    async def create_refund(self, request: web.Request) -> web.Response:
        return await self._post(request, self._execute_refund)

    async def _post(self, request: web.Request, execute: _Execute) -> web.Response:
        """A POST the Stripe way: authenticated, faults rolled, executed once per key."""
        try:
            _authenticate(request)
        except _ApiError as denied:
            return _respond(denied.status, denied.body)
        if self.faults.rate_limit and (wait := self._over_rate()) is not None:
            # Before the fault rolls, so a seed's sequence is the same with a limit or without.
            response = _respond(429, _RATE_LIMITED)
            response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return response
        # Both faults are rolled on every POST, so a seed gives one fault sequence.
        fail = self._rng.random() < self._fail_rate
        hang = self._rng.random() < self._timeout_rate
        if fail:
            await self._delay()
            return _respond(500, _FAULT)
        key = request.headers.get("Idempotency-Key")
        form = await request.post()
        params = [(k, v) for k, v in form.items() if isinstance(v, str)]
        replayed = False
        if key is None:
            status, body = execute(params, None, "")
        elif not 0 < len(key) <= 255:
            status, body = 400, _BAD_KEY
        else:
            async with self._key_lock(key):
                status, body, replayed = self._execute_once(key, params, execute)
        await self._delay()
        if hang:
            await self._stay_silent(request)
        return _respond(status, body, key=key, replayed=replayed)

    def _execute_once(
        self, key: str, params: list[tuple[str, str]], execute: _Execute
    ) -> tuple[int, bytes, bool]:
        # A refund's fingerprint names its endpoint: a charge's key reused for a refund is a
        # mismatch, as at Stripe (keys are per account, across endpoints).
        signed = params if execute == self._execute else [("/v1/refunds", ""), *params]
        fingerprint = hashlib.sha256(orjson.dumps(sorted(signed))).hexdigest()
        stored = self.ledger.key(key)
        if stored is None:
            status, body = execute(params, key, fingerprint)
            return status, body, False
        if stored[0] != fingerprint:
            mismatch = _ApiError(
                400,
                "idempotency_error",
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                "execute a different request.",
            )
            return mismatch.status, mismatch.body, False
        return stored[1], stored[2], True

    def _execute(
        self, params: list[tuple[str, str]], key: str | None, fingerprint: str
    ) -> tuple[int, bytes]:
        try:
            intent, decline = _confirm(params)
        except _ApiError as err:
            # Like Stripe, a request that fails validation never started: nothing is stored.
            return err.status, err.body
        body = orjson.dumps(intent)
        status = 200
        if decline is not None:
            status = 402
            error = {"type": "card_error", "code": decline.code, "message": decline.message}
            if decline.decline_code is not None:
                error["decline_code"] = decline.decline_code
            error_body = {
                "error": {**error, "charge": intent["latest_charge"], "payment_intent": intent}
            }
            response = orjson.dumps(error_body)
        else:
            response = body
        try:
            billq_key = intent["metadata"].get(BILLQ_KEY)
            self.ledger.add(intent["id"], billq_key, body, key, fingerprint, status, response)
        except sqlite3.Error:
            return 500, _LEDGER_FAILED
        return status, response

    def _execute_refund(
        self, params: list[tuple[str, str]], key: str | None, fingerprint: str
    ) -> tuple[int, bytes]:
        # No await from the remaining amount's check to the store: two refunds of one intent
        # (under different keys) cannot both pass the check, as at Stripe.
        try:
            refund = _refund(params, self.ledger)
        except _ApiError as err:
            return err.status, err.body
        body = orjson.dumps(refund)
        try:
            self.ledger.add_refund(
                refund["id"], refund["payment_intent"], refund["amount"], body, key, fingerprint
            )
        except sqlite3.Error:
            return 500, _LEDGER_FAILED
        return 200, body

    @contextlib.asynccontextmanager
    async def _key_lock(self, key: str) -> AsyncIterator[None]:
        # Concurrent requests with one key run one at a time: the first executes, the others
        # replay it. Execution does not await today, but this keeps the guarantee if it ever
        # does (a slower ledger, simulated processing). Dropped once nobody holds or waits.
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def _delay(self) -> None:
        delay = self._latency_s
        # Rolled only when spikes are on, so a seed's fault sequence is unchanged without them.
        if self._spike_rate > 0 and self._rng.random() < self._spike_rate:
            delay += self._spike_s
        if delay > 0:
            await asyncio.sleep(delay)

    async def _stay_silent(self, request: web.Request) -> None:
        # Until the client gives up (then there is nobody to answer) or the server stops.
        deadline = time.monotonic() + HANG_S
        while not self._closing.is_set() and time.monotonic() < deadline:
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), _HANG_POLL_S)
        if request.transport is not None:
            request.transport.abort()  # at shutdown the client hears a reset, never the answer

    async def get_intent(self, request: web.Request) -> web.Response:
        try:
            _authenticate(request)
            pi_id = request.match_info["id"]
            body = self.ledger.intent(pi_id)
            if body is None:
                raise _missing(pi_id, "id", 404)
        except _ApiError as err:
            return _respond(err.status, err.body)
        return _respond(200, body)

    async def list_intents(self, request: web.Request) -> web.Response:
        try:
            _authenticate(request)
            limit = _limit(request.query)
            after = request.query.get("starting_after")
            before = request.query.get("ending_before")
            if after and before:
                raise _invalid_error("Pass starting_after or ending_before, not both.")
            ledger = self.ledger
            if before:  # the `limit` intents just newer than `before`, still newest first
                newer = ledger.oldest_newer_than(_seq(ledger, before, "ending_before"), limit + 1)
                bodies, has_more = newer[:limit][::-1], len(newer) > limit
            else:
                older_than = _seq(ledger, after, "starting_after") if after else None
                older = ledger.newest(limit + 1, older_than=older_than)
                bodies, has_more = older[:limit], len(older) > limit
        except _ApiError as err:
            return _respond(err.status, err.body)
        data = b",".join(bodies)
        more = b"true" if has_more else b"false"
        page = b'{"object":"list","data":[%b],"has_more":%b,"url":"/v1/payment_intents"}'
        return _respond(200, page % (data, more))

    async def search_intents(self, request: web.Request) -> web.Response:
        try:
            _authenticate(request)
            limit = _limit(request.query)
            match = _SEARCH.match(request.query.get("query", ""))
            if match is None:
                raise _invalid_error(
                    "Only metadata['KEY']:'VALUE' queries are supported.", param="query"
                )
            page = request.query.get("page", "0")
            if not page.isdigit():
                raise _invalid_error("Invalid page.", param="page")
        except _ApiError as err:
            return _respond(err.status, err.body)
        field = match["field"]
        value = re.sub(r"\\(.)", r"\1", match["value"])
        ledger = self.ledger
        if field == BILLQ_KEY:
            bodies = ledger.by_billq_key(value)
        else:  # not indexed: only billq's own key is looked up in bulk
            bodies = [
                body
                for body in ledger.all_newest_first()
                if orjson.loads(body)["metadata"].get(field) == value
            ]
        offset = int(page)
        chunk, rest = bodies[offset : offset + limit], bodies[offset + limit :]
        result = {
            "object": "search_result",
            "data": [orjson.Fragment(body) for body in chunk],
            "has_more": bool(rest),
            "next_page": str(offset + limit) if rest else None,
            "url": "/v1/payment_intents/search",
        }
        return _respond(200, orjson.dumps(result))

    async def list_refunds(self, request: web.Request) -> web.Response:
        """Refunds newest first: limit, starting_after, payment_intent or charge filters."""
        try:
            _authenticate(request)
            limit = _limit(request.query)
            ledger = self.ledger
            pi_id = request.query.get("payment_intent") or _intent_of(
                ledger, request.query.get("charge")
            )
            after = request.query.get("starting_after")
            older_than = None
            if after:
                older_than = ledger.refund_seq(after)
                if older_than is None:
                    raise _invalid_error(f"No such refund: '{after}'", "starting_after")
            bodies = ledger.refunds(limit + 1, pi_id=pi_id, older_than=older_than)
        except _ApiError as err:
            return _respond(err.status, err.body)
        result = {
            "object": "list",
            "data": [orjson.Fragment(body) for body in bodies[:limit]],
            "has_more": len(bodies) > limit,
            "url": "/v1/refunds",
        }
        return _respond(200, orjson.dumps(result))


def _refund(params: list[tuple[str, str]], ledger: Ledger) -> dict[str, Any]:
    """Validate a refund against what its intent has left (no I/O, no storage).

    Raises:
        _ApiError: Stripe's answers for an unknown or unpaid intent, a bad amount, or more
            than the intent has left (``amount_too_large``; ``charge_already_refunded`` once
            nothing is left).
    """
    fields, metadata = _split(params, _REFUND_PARAMS)
    pi_id = fields.get("payment_intent") or _intent_of(ledger, fields.get("charge"))
    if pi_id is None:
        raise _invalid_error(
            "One of the following params should be provided for this request: "
            "payment_intent or charge.",
            code="parameter_missing",
        )
    stored = ledger.intent(pi_id)
    if stored is None:
        raise _missing(pi_id, "payment_intent", 400)
    intent = orjson.loads(stored)
    if intent["status"] != "succeeded":
        raise _invalid_error(
            f"This PaymentIntent ({pi_id}) does not have a successful charge to refund.",
            "payment_intent",
        )
    left = intent["amount"] - ledger.refunded(pi_id)
    if left <= 0:
        raise _invalid_error(
            f"Charge {intent['latest_charge']} has already been refunded.",
            code="charge_already_refunded",
        )
    amount = _amount(fields["amount"]) if "amount" in fields else left
    if amount > left:
        raise _invalid_error(
            f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left}).",
            "amount",
            "amount_too_large",
        )
    return {
        "id": "re_" + uuid.uuid4().hex[:24],
        "object": "refund",
        "amount": amount,
        "currency": intent["currency"],
        "charge": intent["latest_charge"],
        "payment_intent": pi_id,
        "status": "succeeded",
        "reason": fields.get("reason"),
        "metadata": metadata,
        "created": int(time.time()),
    }


def _intent_of(ledger: Ledger, charge_id: str | None) -> str | None:
    """The intent whose latest charge is ``charge_id`` (a scan: refunds by charge are rare)."""
    if charge_id is None:
        return None
    for body in ledger.all_newest_first():
        intent = orjson.loads(body)
        if intent.get("latest_charge") == charge_id:
            return str(intent["id"])
    raise _invalid_error(f"No such charge: '{charge_id}'", "charge", "resource_missing")


def _confirm(params: list[tuple[str, str]]) -> tuple[dict[str, Any], test_cards.CardDecline | None]:
    """Validate a create-and-confirm request and decide its outcome (no I/O, no storage)."""
    fields, metadata = _split(params)
    amount = _amount(fields.get("amount"))
    currency = fields.get("currency", "").lower()
    if currency not in test_cards.CURRENCIES:
        raise _invalid_error(
            f"Invalid currency: {currency or '(missing)'}.", "currency", "invalid_currency"
        )
    confirm = fields.get("confirm", "false") == "true"
    payment_method = fields.get("payment_method")
    if payment_method is not None and not test_cards.is_payment_method(payment_method):
        # Stripe echoes the token here; the sandbox does not, so it never reaches a log.
        raise _invalid_error("No such PaymentMethod.", "payment_method", "resource_missing")
    if confirm and payment_method is None:
        raise _invalid_error(
            "You cannot confirm this PaymentIntent because it's missing a payment method.",
            "payment_method",
            "parameter_missing",
        )
    decline = test_cards.outcome_for(payment_method) if confirm and payment_method else None
    if not confirm:
        status = "requires_confirmation" if payment_method else "requires_payment_method"
    else:
        status = "requires_payment_method" if decline else "succeeded"
    intent: dict[str, Any] = {
        "id": "pi_" + uuid.uuid4().hex[:24],
        "object": "payment_intent",
        "amount": amount,
        "amount_received": amount if status == "succeeded" else 0,
        "currency": currency,
        "status": status,
        "customer": fields.get("customer"),
        # Like Stripe: a declined method is detached and shown on last_payment_error.
        "payment_method": None if decline else payment_method,
        "metadata": metadata,
        "description": fields.get("description"),
        "created": int(time.time()),
        "livemode": False,
        "capture_method": "automatic",
        "confirmation_method": "automatic",
        "latest_charge": "ch_" + uuid.uuid4().hex[:24] if confirm else None,
        "last_payment_error": None,
    }
    if decline is not None:
        intent["last_payment_error"] = {
            "type": "card_error",
            "code": decline.code,
            "decline_code": decline.decline_code,
            "message": decline.message,
            "payment_method": {"id": payment_method, "object": "payment_method"},
        }
    return intent, decline


def _split(
    params: list[tuple[str, str]], known: frozenset[str] = _KNOWN_PARAMS
) -> tuple[dict[str, str], dict[str, str]]:
    """Top-level fields and ``metadata[KEY]`` entries; unknown parameters are refused."""
    fields: dict[str, str] = {}
    metadata: dict[str, str] = {}
    for name, value in params:
        if name.startswith("metadata[") and name.endswith("]"):
            metadata[name[9:-1]] = value
        elif name in known:
            fields[name] = value
        else:
            raise _invalid_error(f"Received unknown parameter: {name}", param=name)
    if len(metadata) > 50 or any(len(k) > 40 or len(v) > 500 for k, v in metadata.items()):
        raise _invalid_error("Metadata: at most 50 keys of 40 chars, values of 500.", "metadata")
    return fields, metadata


def _amount(text: str | None) -> int:
    if text is None:
        raise _invalid_error("Missing required param: amount.", "amount", "parameter_missing")
    if not text.isdigit() or not 1 <= int(text) <= test_cards.MAX_AMOUNT:
        raise _invalid_error(
            f"Invalid amount: must be an integer from 1 to {test_cards.MAX_AMOUNT}.",
            "amount",
            "parameter_invalid_integer",
        )
    return int(text)


def _authenticate(request: web.Request) -> None:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and key.startswith("sk_test_") and len(key) > 8:
        return
    # Never echo the key, even a wrong one.
    message = (
        "Invalid API Key provided."
        if scheme
        else "You did not provide an API key. Use 'Authorization: Bearer sk_test_...'."
    )
    raise _ApiError(401, "authentication_error", message)


def _limit(query: Mapping[str, str]) -> int:
    text = query.get("limit", "10")
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise _invalid_error("limit must be an integer from 1 to 100.", "limit")
    return int(text)


def _seq(ledger: Ledger, pi_id: str, param: str) -> int:
    seq = ledger.seq(pi_id)
    if seq is None:
        raise _missing(pi_id, param, 400)
    return seq


def _missing(pi_id: str, param: str, status: int) -> _ApiError:
    return _ApiError(
        status,
        "invalid_request_error",
        f"No such payment_intent: '{pi_id}'",
        "resource_missing",
        param,
    )


def _invalid_error(message: str, param: str | None = None, code: str | None = None) -> _ApiError:
    return _ApiError(400, "invalid_request_error", message, code, param)


def _respond(
    status: int, body: bytes, *, key: str | None = None, replayed: bool = False
) -> web.Response:
    headers = {"Request-Id": "req_" + uuid.uuid4().hex[:14]}
    if key is not None:
        headers["Idempotency-Key"] = key
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


def build_app(*, ledger: str, faults: Faults | None = None) -> web.Application:
    """The sandbox as an aiohttp app; the SQLite ledger opens when the app starts.

    Raises:
        ConfigError: at start-up, a ledger that cannot be opened.
    """
    sandbox = _Sandbox(ledger, faults or Faults())
    app = web.Application(middlewares=[sandbox.outage])
    app.cleanup_ctx.append(sandbox.lifetime)
    app.on_shutdown.append(sandbox.on_shutdown)
    app.router.add_get("/healthz", sandbox.healthz)
    app.router.add_get("/_sandbox/faults", sandbox.get_faults)
    app.router.add_put("/_sandbox/faults", sandbox.put_faults)
    app.router.add_get("/_sandbox/stats", sandbox.get_stats)
    app.router.add_post("/v1/payment_intents", sandbox.create_intent)
    app.router.add_get("/v1/payment_intents", sandbox.list_intents)
    # Registered before /{id}, which would otherwise take "search" for an id.
    app.router.add_get("/v1/payment_intents/search", sandbox.search_intents)
    app.router.add_get("/v1/payment_intents/{id}", sandbox.get_intent)
    app.router.add_post("/v1/refunds", sandbox.create_refund)
    app.router.add_get("/v1/refunds", sandbox.list_refunds)
    return app


def serve(host: str, port: int, *, ledger: str, faults: Faults) -> None:
    """Run the sandbox until SIGTERM or SIGINT (blocking).

    Raises:
        ConfigError: bad fault settings, an unusable ledger, or an address already in use.
    """
    from shared import lifecycle

    app = build_app(ledger=ledger, faults=faults)

    async def main(stop: asyncio.Event) -> int:
        # No access log: one line per request would cost more than the request itself.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, backlog=4096)
            try:
                await site.start()
            except OSError as exc:
                raise ConfigError(
                    f"sandbox-gateway: cannot listen on {host}:{port}: {exc}"
                ) from None
            bound = runner.addresses[0]
            log.info(
                "sandbox.started",
                url=f"http://{host}:{bound[1]}",
                ledger=ledger,
                **dataclasses.asdict(faults),
            )
            await stop.wait()
        finally:
            await runner.cleanup()
        return 0

    lifecycle.run(main)
