"""The sandbox gateway over real HTTP: Stripe's wire format, idempotency, faults, the ledger.

The server runs in this event loop on a free port (``AppRunner`` + ``TCPSite`` on port 0);
one test runs it as a process through the CLI module and stops it with SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import testkit
from aiohttp import web

from sandbox import cli as sandbox_cmd
from sandbox.faults import Faults
from sandbox.server import build_app
from shared.errors import ConfigError, GatewayRejected, GatewayUnavailable, OutcomeUnknown
from shared.gateway import test_cards
from shared.gateway.inprocess import InProcessGateway
from shared.gateway.port import Charged, ChargeRequest, Declined
from shared.gateway.sandbox import SandboxGateway

pytestmark = pytest.mark.integration

API_KEY = "sk_test_billq"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@contextlib.asynccontextmanager
async def sandbox(ledger: Path | str, **faults: Any) -> AsyncIterator[str]:
    runner = web.AppRunner(build_app(ledger=str(ledger), faults=Faults(**faults)), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def client(
    url: str, *, timeout: float = 5.0, api_key: str = API_KEY, transport: str = "aiohttp"
) -> AsyncIterator[SandboxGateway]:
    # The default transport is aiohttp's pool; "httpcore" is httpx's own, kept equivalent.
    own = httpx.AsyncHTTPTransport() if transport == "httpcore" else None
    gateway = SandboxGateway(url, api_key, timeout=timeout, transport=own)
    try:
        yield gateway
    finally:
        await gateway.aclose()


def charge(
    key: str = "acct-1:2026-03", card: str = "pm_card_visa", amount: int = 1999, **kw: Any
) -> ChargeRequest:
    return ChargeRequest(
        idempotency_key=key,
        account_id=kw.pop("account_id", 1),
        amount_cents=amount,
        currency=kw.pop("currency", "USD"),
        payment_method=card,
        customer=kw.pop("customer", "cus_billq1"),
        metadata=kw.pop("metadata", {"billq_job_id": "11"}),
    )


async def all_intents(url: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
        while True:
            page = (await http.get("/v1/payment_intents", params=params)).json()
            out.extend(page["data"])
            if not page["has_more"]:
                return out
            params["starting_after"] = page["data"][-1]["id"]


async def raw_post(url: str, form: dict[str, str], key: str | None = None) -> httpx.Response:
    headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
    async with httpx.AsyncClient(base_url=url, headers=headers) as http:
        return await http.post("/v1/payment_intents", data=form)


TRANSPORTS = ["aiohttp", "httpcore"]

VISA_FORM = {
    "amount": "500",
    "currency": "usd",
    "payment_method": "pm_card_visa",
    "confirm": "true",
}


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite3"


@pytest.fixture
async def url(ledger: Path) -> AsyncIterator[str]:
    async with sandbox(ledger) as base:
        yield base


@pytest.fixture
async def gateway(url: str) -> AsyncIterator[SandboxGateway]:
    async with client(url) as gw:
        yield gw


# -- charging ------------------------------------------------------------------------------


async def test_a_visa_charge_succeeds_and_stores_a_stripe_shaped_intent(
    url: str, gateway: SandboxGateway
) -> None:
    outcome = await gateway.charge(charge())

    assert isinstance(outcome, Charged)
    assert outcome.charge_id.startswith("pi_")
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
        intent = (await http.get(f"/v1/payment_intents/{outcome.charge_id}")).json()
    assert intent["object"] == "payment_intent"
    assert (intent["amount"], intent["currency"], intent["status"]) == (1999, "usd", "succeeded")
    assert intent["customer"] == "cus_billq1"
    assert intent["payment_method"] == "pm_card_visa"
    assert intent["last_payment_error"] is None
    assert isinstance(intent["created"], int)
    assert intent["metadata"] == {
        "billq_job_id": "11",
        "billq_idempotency_key": "acct-1:2026-03",
        "billq_account_id": "1",
    }


async def test_a_pm_token_outside_the_table_succeeds(gateway: SandboxGateway) -> None:
    assert isinstance(await gateway.charge(charge(card="pm_card_mastercard")), Charged)


@pytest.mark.parametrize("card", sorted(test_cards.DECLINING_CARDS))
async def test_each_declining_card_is_declined_with_stripes_codes(
    card: str, url: str, gateway: SandboxGateway
) -> None:
    expected = test_cards.DECLINING_CARDS[card]

    outcome = await gateway.charge(charge(card=card))

    assert isinstance(outcome, Declined)
    assert (outcome.code, outcome.decline_code) == (expected.code, expected.decline_code)
    assert outcome.message == expected.message
    [intent] = await all_intents(url)
    assert intent["id"] == outcome.charge_id
    assert intent["status"] == "requires_payment_method"
    assert intent["last_payment_error"]["decline_code"] == expected.decline_code


async def test_a_decline_is_a_402_card_error_carrying_the_intent(url: str) -> None:
    form = {**VISA_FORM, "payment_method": "pm_card_chargeDeclinedInsufficientFunds"}

    response = await raw_post(url, form, key="k-402")

    assert response.status_code == 402
    error = response.json()["error"]
    assert (error["type"], error["code"], error["decline_code"]) == (
        "card_error",
        "card_declined",
        "insufficient_funds",
    )
    assert error["payment_intent"]["status"] == "requires_payment_method"


@pytest.mark.parametrize("card", ["pm_card_visa", *sorted(test_cards.DECLINING_CARDS)])
async def test_the_in_process_gateway_agrees_with_the_sandbox_on_every_card(
    card: str, gateway: SandboxGateway
) -> None:
    over_http = await gateway.charge(charge(card=card))
    in_process = await InProcessGateway().charge(charge(card=card))

    assert type(over_http) is type(in_process)
    if isinstance(over_http, Declined) and isinstance(in_process, Declined):
        assert (over_http.code, over_http.decline_code, over_http.message) == (
            in_process.code,
            in_process.decline_code,
            in_process.message,
        )


# -- idempotency ---------------------------------------------------------------------------


async def test_a_repeated_key_replays_the_same_charge_and_stores_one_intent(
    url: str, gateway: SandboxGateway
) -> None:
    first = await gateway.charge(charge())
    second = await gateway.charge(charge())

    assert isinstance(first, Charged)
    assert first == second
    assert [i["id"] for i in await all_intents(url)] == [first.charge_id]


async def test_a_replay_has_the_same_status_and_body_and_says_it_was_replayed(url: str) -> None:
    first = await raw_post(url, VISA_FORM, key="k-replay")
    second = await raw_post(url, VISA_FORM, key="k-replay")

    assert (first.status_code, second.status_code) == (200, 200)
    assert second.content == first.content
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"


async def test_a_repeated_key_replays_a_decline_without_charging_again(
    url: str, gateway: SandboxGateway
) -> None:
    first = await gateway.charge(charge(card="pm_card_chargeDeclined"))
    second = await gateway.charge(charge(card="pm_card_chargeDeclined"))

    assert isinstance(first, Declined)
    assert first == second
    assert len(await all_intents(url)) == 1


async def test_the_same_key_with_another_amount_is_rejected_and_charges_nothing(
    url: str, gateway: SandboxGateway
) -> None:
    await gateway.charge(charge(amount=1999))

    with pytest.raises(GatewayRejected, match="idempotency_error"):
        await gateway.charge(charge(amount=2999))
    [intent] = await all_intents(url)
    assert intent["amount"] == 1999


async def test_fifty_concurrent_requests_with_one_key_charge_once(tmp_path: Path) -> None:
    # Latency keeps all fifty in flight together.
    async with sandbox(tmp_path / "l.sqlite3", latency_ms=50) as base, client(base) as gw:
        outcomes = await asyncio.gather(*(gw.charge(charge()) for _ in range(50)))

        assert len(set(outcomes)) == 1
        assert isinstance(outcomes[0], Charged)
        assert [i["id"] for i in await all_intents(base)] == [outcomes[0].charge_id]


# -- invalid requests and authentication ---------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency"), [(0, "USD"), (-5, "USD"), (100_000_000, "USD"), (100, "XQZ")]
)
async def test_invalid_parameters_are_rejected_and_not_stored_for_the_key(
    amount: int, currency: str, url: str, gateway: SandboxGateway
) -> None:
    with pytest.raises(GatewayRejected, match="invalid_request_error"):
        await gateway.charge(charge(amount=amount, currency=currency))

    assert await all_intents(url) == []
    # Validation failures never started, so the key is still free (as with Stripe).
    assert isinstance(await gateway.charge(charge(amount=100)), Charged)


async def test_missing_amount_is_a_400_naming_the_parameter(url: str) -> None:
    response = await raw_post(url, {"currency": "usd", "payment_method": "pm_card_visa"})

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "amount")


async def test_an_unknown_payment_method_is_rejected_without_echoing_it(
    gateway: SandboxGateway,
) -> None:
    with pytest.raises(GatewayRejected) as caught:
        await gateway.charge(charge(card="tok_secret_card_4242"))

    assert "tok_secret_card_4242" not in str(caught.value)
    assert "No such PaymentMethod" in str(caught.value)


@pytest.mark.parametrize("api_key", ["sk_live_secret123", "rk_test_nope", "sk_test_"])
async def test_a_bad_api_key_is_rejected_without_echoing_it(url: str, api_key: str) -> None:
    async with client(url, api_key=api_key) as gw:
        with pytest.raises(GatewayRejected, match="authentication_error") as caught:
            await gw.charge(charge())
        with pytest.raises(GatewayRejected, match="authentication_error"):
            await gw.find_by_idempotency_key("acct-1:2026-03")

    assert api_key not in str(caught.value)
    assert await all_intents(url) == []


async def test_requests_without_a_key_get_a_401_and_healthz_needs_none(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        denied = await http.get("/v1/payment_intents")
        health = await http.get("/healthz")

    assert denied.status_code == 401
    assert denied.json()["error"]["type"] == "authentication_error"
    assert health.status_code == 200


# -- faults --------------------------------------------------------------------------------


async def test_fail_rate_one_answers_500_stores_nothing_and_a_later_retry_succeeds(
    ledger: Path,
) -> None:
    async with sandbox(ledger, fail_rate=1) as base:
        async with client(base) as gw:
            with pytest.raises(GatewayUnavailable, match="500"):
                await gw.charge(charge())
        assert await all_intents(base) == []

    async with sandbox(ledger, fail_rate=0) as base, client(base) as gw:
        outcome = await gw.charge(charge())
        assert isinstance(outcome, Charged)
        assert [i["id"] for i in await all_intents(base)] == [outcome.charge_id]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_timeout_rate_one_is_outcome_unknown_and_the_retry_gets_the_stored_charge(
    ledger: Path, transport: str
) -> None:
    async with sandbox(ledger, timeout_rate=1) as base:
        async with client(base, timeout=0.3, transport=transport) as gw:
            with pytest.raises(OutcomeUnknown):
                await gw.charge(charge())
        stopping = time.monotonic()
    # A silent request must not hold the server's shutdown.
    assert time.monotonic() - stopping < 3

    async with sandbox(ledger) as base, client(base) as gw:
        [stored] = await all_intents(base)
        assert stored["status"] == "succeeded"
        assert await gw.charge(charge()) == Charged(charge_id=stored["id"])
        assert len(await all_intents(base)) == 1


async def test_fault_rolls_follow_the_seed(tmp_path: Path) -> None:
    async def pattern(run: int) -> list[bool]:
        async with (
            sandbox(tmp_path / f"{run}.sqlite3", fail_rate=0.5, seed=7) as base,
            client(base) as gw,
        ):
            out = []
            for i in range(24):
                try:
                    await gw.charge(charge(key=f"k{i}"))
                    out.append(True)
                except GatewayUnavailable:
                    out.append(False)
            return out

    first, second = await pattern(1), await pattern(2)

    assert first == second
    assert True in first and False in first


async def test_latency_is_added_before_the_answer(tmp_path: Path) -> None:
    async with sandbox(tmp_path / "l.sqlite3", latency_ms=150) as base, client(base) as gw:
        started = time.monotonic()
        await gw.charge(charge())
        assert time.monotonic() - started >= 0.15


async def test_a_latency_spike_delays_the_answer_and_the_charge_still_lands_once(
    tmp_path: Path,
) -> None:
    async with (
        sandbox(tmp_path / "s.sqlite3", spike_rate=1, spike_ms=150) as base,
        client(base) as gw,
    ):
        started = time.monotonic()
        first = await gw.charge(charge())
        assert time.monotonic() - started >= 0.15
        assert await gw.charge(charge()) == first  # replayed, not charged again


@pytest.mark.parametrize(
    "faults",
    [
        {"fail_rate": 1.5},
        {"timeout_rate": -0.1},
        {"latency_ms": -1},
        {"spike_rate": 2},
        {"spike_ms": -5},
    ],
)
def test_build_app_refuses_impossible_faults(faults: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        build_app(ledger=":memory:", faults=Faults(**faults))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_connection_dropped_while_waiting_is_outcome_unknown(
    ledger: Path, transport: str
) -> None:
    async with contextlib.AsyncExitStack() as outlives_the_server:
        async with sandbox(ledger, timeout_rate=1) as base:
            gw = await outlives_the_server.enter_async_context(
                client(base, timeout=30, transport=transport)
            )
            pending = asyncio.create_task(gw.charge(charge()))

            async def stored() -> bool:  # the charge ran; its answer is being withheld
                return bool(await all_intents(base))

            await testkit.wait_until(stored, timeout=5, interval=0.02)
        # The server stopped and reset the connection: the charge ran, the client cannot know.
        with pytest.raises(OutcomeUnknown):
            await asyncio.wait_for(pending, 5)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_nobody_listening_is_gateway_unavailable(transport: str) -> None:
    async with client(f"http://127.0.0.1:{testkit.free_port()}", transport=transport) as gw:
        with pytest.raises(GatewayUnavailable):
            await gw.charge(charge())
        with pytest.raises(GatewayUnavailable):
            await gw.find_by_idempotency_key("k")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_both_transports_carry_charges_and_declines(url: str, transport: str) -> None:
    async with client(url, transport=transport) as gw:
        assert isinstance(await gw.charge(charge(key="a")), Charged)
        assert isinstance(await gw.charge(charge(key="b", card="pm_card_chargeDeclined")), Declined)
        assert await gw.charge(charge(key="a")) == await gw.find_by_idempotency_key("a")


# -- list, search, persistence -------------------------------------------------------------


async def test_list_pages_newest_first_with_limit_and_starting_after(
    url: str, gateway: SandboxGateway
) -> None:
    created = [await gateway.charge(charge(key=f"k{i}")) for i in range(7)]
    newest_first = [c.charge_id for c in reversed(created) if isinstance(c, Charged)]
    assert len(newest_first) == 7

    seen: list[str] = []
    more: list[bool] = []
    params: dict[str, Any] = {"limit": 3}
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
        while True:
            page = (await http.get("/v1/payment_intents", params=params)).json()
            assert page["object"] == "list"
            assert page["url"] == "/v1/payment_intents"
            seen += [i["id"] for i in page["data"]]
            more.append(page["has_more"])
            if not page["has_more"]:
                break
            params["starting_after"] = page["data"][-1]["id"]
        default = (await http.get("/v1/payment_intents")).json()
        before = await http.get(
            "/v1/payment_intents", params={"limit": 2, "ending_before": newest_first[4]}
        )
        too_big = await http.get("/v1/payment_intents", params={"limit": 101})
        unknown = await http.get("/v1/payment_intents", params={"starting_after": "pi_nope"})

    assert seen == newest_first
    assert more == [True, True, False]
    assert [i["id"] for i in default["data"]] == newest_first  # default limit 10 covers all
    assert [i["id"] for i in before.json()["data"]] == newest_first[2:4]
    assert (too_big.status_code, unknown.status_code) == (400, 400)


async def test_search_finds_intents_by_the_billq_key(url: str, gateway: SandboxGateway) -> None:
    ok = await gateway.charge(charge(key="acct-7:2026-03"))
    await gateway.charge(charge(key="acct-8:2026-03"))
    query = "metadata['billq_idempotency_key']:'acct-7:2026-03'"

    async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
        found = (await http.get("/v1/payment_intents/search", params={"query": query})).json()
        bad = await http.get("/v1/payment_intents/search", params={"query": "status:'x'"})

    assert found["object"] == "search_result"
    assert isinstance(ok, Charged)
    assert [i["id"] for i in found["data"]] == [ok.charge_id]
    assert bad.status_code == 400


async def test_find_by_idempotency_key_returns_charged_declined_or_none(
    gateway: SandboxGateway,
) -> None:
    charged = await gateway.charge(charge(key="it's-a-key"))
    declined = await gateway.charge(charge(key="k-d", card="pm_card_chargeDeclinedLostCard"))

    assert await gateway.find_by_idempotency_key("it's-a-key") == charged
    assert await gateway.find_by_idempotency_key("k-d") == declined
    assert await gateway.find_by_idempotency_key("never-used") is None


async def test_the_ledger_survives_a_restart(ledger: Path) -> None:
    async with sandbox(ledger) as base, client(base) as gw:
        first = await gw.charge(charge())
        declined = await gw.charge(charge(key="k-d", card="pm_card_chargeDeclined"))
        before = await all_intents(base)

    async with sandbox(ledger) as base, client(base) as gw:
        assert await all_intents(base) == before
        assert await gw.charge(charge()) == first
        assert await gw.charge(charge(key="k-d", card="pm_card_chargeDeclined")) == declined
        assert await gw.find_by_idempotency_key("acct-1:2026-03") == first

    with contextlib.closing(sqlite3.connect(ledger)) as db:
        assert db.execute("SELECT count(*) FROM payment_intents").fetchone() == (2,)
        assert db.execute("SELECT count(*) FROM idempotency_keys").fetchone() == (2,)


# -- the adapter's error mapping (no server: httpx.MockTransport) --------------------------


def _mock(respond: Any) -> SandboxGateway:
    return SandboxGateway("http://sandbox.test", API_KEY, transport=httpx.MockTransport(respond))


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (500, {}, GatewayUnavailable),
        (503, {}, GatewayUnavailable),
        (500, {"Idempotent-Replayed": "true"}, OutcomeUnknown),
        (429, {}, GatewayUnavailable),
        (409, {}, GatewayUnavailable),
        (400, {}, GatewayRejected),
        (401, {}, GatewayRejected),
        (404, {}, GatewayRejected),
    ],
)
async def test_http_statuses_map_to_the_error_tree(
    status: int, headers: dict[str, str], expected: type[Exception]
) -> None:
    body = {"error": {"type": "api_error", "message": "boom"}}
    gw = _mock(lambda request: httpx.Response(status, json=body, headers=headers))
    try:
        with pytest.raises(expected):
            await gw.charge(charge())
    finally:
        await gw.aclose()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (httpx.ConnectError("refused"), GatewayUnavailable),
        (httpx.ConnectTimeout("slow connect"), GatewayUnavailable),
        (httpx.ReadTimeout("slow answer"), OutcomeUnknown),
        (httpx.WriteTimeout("slow send"), OutcomeUnknown),
        (httpx.RemoteProtocolError("dropped"), OutcomeUnknown),
        (httpx.ReadError("reset"), OutcomeUnknown),
    ],
)
async def test_transport_failures_map_to_the_error_tree(
    error: Exception, expected: type[Exception]
) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        raise error

    gw = _mock(respond)
    try:
        with pytest.raises(expected):
            await gw.charge(charge())
    finally:
        await gw.aclose()


async def test_an_unreadable_2xx_is_outcome_unknown() -> None:
    gw = _mock(lambda request: httpx.Response(200, text="<html>proxy</html>"))
    try:
        with pytest.raises(OutcomeUnknown):
            await gw.charge(charge())
    finally:
        await gw.aclose()


async def test_error_messages_never_carry_the_card_or_the_api_key() -> None:
    card = "pm_card_very_secret_token"
    echo = {"error": {"type": "invalid_request_error", "message": f"bad {card} for {API_KEY}"}}
    gw = _mock(lambda request: httpx.Response(400, json=echo))
    try:
        with pytest.raises(GatewayRejected) as caught:
            await gw.charge(charge(card=card))
    finally:
        await gw.aclose()

    assert card not in str(caught.value)
    assert API_KEY not in str(caught.value)


async def test_the_request_is_stripes_form_with_the_key_and_billq_metadata() -> None:
    seen: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "pi_1", "status": "succeeded"})

    gw = _mock(respond)
    try:
        assert await gw.charge(charge(account_id=42)) == Charged("pi_1")
    finally:
        await gw.aclose()

    [request] = seen
    form = dict(httpx.QueryParams(request.content.decode()))
    assert request.url.path == "/v1/payment_intents"
    assert request.headers["Idempotency-Key"] == "acct-1:2026-03"
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert form == {
        "amount": "1999",
        "currency": "usd",
        "payment_method": "pm_card_visa",
        "confirm": "true",
        "off_session": "true",
        "customer": "cus_billq1",
        "metadata[billq_job_id]": "11",
        "metadata[billq_idempotency_key]": "acct-1:2026-03",
        "metadata[billq_account_id]": "42",
    }


# -- the command ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="billq")
    sandbox_cmd.register(parser.add_subparsers(dest="command"))
    return parser


def test_the_command_has_stripe_mock_like_defaults() -> None:
    args = _parser().parse_args(["sandbox-gateway"])

    assert (args.host, args.port, args.ledger) == ("127.0.0.1", 12111, "sandbox-ledger.sqlite3")
    assert (args.fail_rate, args.timeout_rate, args.latency_ms, args.seed) == (0, 0, 0, None)
    assert callable(args.handler)


@pytest.mark.parametrize(
    "flags",
    [["--fail-rate", "1.5"], ["--timeout-rate", "-0.1"], ["--fail-rate", "nan"], ["--port", "x"]],
)
def test_the_command_refuses_bad_values(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _parser().parse_args(["sandbox-gateway", *flags])

    assert exited.value.code == 2
    assert flags[0] in capsys.readouterr().err


_RUN_COMMAND = """
import argparse, sys
from sandbox import cli as sandbox_cmd
from shared.config import load_settings
from shared.logging import configure_logging
parser = argparse.ArgumentParser()
sandbox_cmd.register(parser.add_subparsers())
args = parser.parse_args(sys.argv[1:])
settings = load_settings()
configure_logging(settings)
sys.exit(args.handler(args, settings))
"""


def test_the_command_serves_until_sigterm_and_exits_zero(tmp_path: Path) -> None:
    port = testkit.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLQ_")}
    flags = ["--port", str(port), "--ledger", str(tmp_path / "ledger.sqlite3"), "--seed", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN_COMMAND, "sandbox-gateway", *flags],
        cwd=testkit.ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        testkit.wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/payment_intents", data=VISA_FORM, headers=AUTH
        )
        assert answer.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        testkit.stop_process(proc)
        assert proc.stdout is not None
        output = proc.stdout.read().decode()
        proc.stdout.close()
    assert "sandbox.started" in output
    with contextlib.closing(sqlite3.connect(tmp_path / "ledger.sqlite3")) as db:
        assert db.execute("SELECT count(*) FROM payment_intents").fetchone() == (1,)
