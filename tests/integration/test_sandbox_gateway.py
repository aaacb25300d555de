"""The sandbox gateway over real HTTP: what only the server does (its raw answers, faults,
listing, search, its ledger, its command) and the sandbox client's transport mapping.

What every adapter must do is in ``test_gateway_conformance.py``. The server runs in this event
loop on a free port; one test runs it as a process through the CLI module and stops it with
SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
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
from gatewaykit import API_KEY, AUTH, all_intents, charge, sandbox

from sandbox import cli as sandbox_cmd
from sandbox.faults import Faults
from sandbox.server import build_app
from shared.errors import ConfigError, GatewayUnavailable, OutcomeUnknown
from shared.gateway.port import Charged
from shared.gateway.sandbox import SandboxGateway

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def client(url: str) -> AsyncIterator[SandboxGateway]:
    gateway = SandboxGateway(url, API_KEY, timeout=5.0)
    try:
        yield gateway
    finally:
        await gateway.aclose()


async def raw_post(url: str, form: dict[str, str], key: str | None = None) -> httpx.Response:
    headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
    async with httpx.AsyncClient(base_url=url, headers=headers) as http:
        return await http.post("/v1/payment_intents", data=form)


VISA_FORM = {
    "amount": "500",
    "currency": "usd",
    "payment_method": "pm_card_visa",
    "confirm": "true",
}


@pytest.fixture
async def gateway(url: str) -> AsyncIterator[SandboxGateway]:
    async with client(url) as gw:
        yield gw


# -- charging ------------------------------------------------------------------------------


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


# -- idempotency ---------------------------------------------------------------------------


async def test_a_replay_has_the_same_status_and_body_and_says_it_was_replayed(url: str) -> None:
    first = await raw_post(url, VISA_FORM, key="k-replay")
    second = await raw_post(url, VISA_FORM, key="k-replay")

    assert (first.status_code, second.status_code) == (200, 200)
    assert second.content == first.content
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"


# -- invalid requests and authentication ---------------------------------------------------


async def test_missing_amount_is_a_400_naming_the_parameter(url: str) -> None:
    response = await raw_post(url, {"currency": "usd", "payment_method": "pm_card_visa"})

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "amount")


async def test_requests_without_a_key_get_a_401_and_healthz_needs_none(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        denied = await http.get("/v1/payment_intents")
        health = await http.get("/healthz")

    assert denied.status_code == 401
    assert denied.json()["error"]["type"] == "authentication_error"
    assert health.status_code == 200


# -- faults --------------------------------------------------------------------------------


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


async def test_the_ledger_serves_reads_from_its_file_and_keeps_no_intent_in_memory(
    ledger: Path,
) -> None:
    # Two servers on one file: what one stores after the other started is there for the other
    # to replay, get, list and search. A ledger that kept its intents in process memory (a
    # million-charge soak held ≈ 9 GB that way) would only know its own.
    async with sandbox(ledger) as first_url, sandbox(ledger) as second_url:
        async with client(first_url) as first:
            charged = await first.charge(charge())
        async with client(second_url) as second:
            assert await second.charge(charge()) == charged
            assert await second.find_by_idempotency_key("acct-1:2026-03") == charged
        assert [i["id"] for i in await all_intents(second_url)] == [charged.charge_id]


# -- the adapter's error mapping (no server: httpx.MockTransport) --------------------------


def _mock(respond: Any) -> SandboxGateway:
    return SandboxGateway("http://sandbox.test", API_KEY, transport=httpx.MockTransport(respond))


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
    flags = ["--port", str(port), "--ledger", str(tmp_path / "ledger.sqlite3"), "--seed", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN_COMMAND, "sandbox-gateway", *flags],
        env=testkit.clean_env(),
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
