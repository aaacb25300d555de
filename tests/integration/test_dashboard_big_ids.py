"""Ids past int64 in the dashboard's paths and filters: a clear 4xx naming the parameter,
never a 500 (Postgres' bigint cannot hold them, so nothing has such an id)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from dashboard.server import State, build_app, templates
from shared.config import Settings
from shared.db.pool import create_pool

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning"),
]

BIG = 2**63


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    pool = await create_pool(settings, max_size=2)
    state = State(settings, pool, read_only=True, finish_within_s=3600, templates=templates())
    async with TestClient(TestServer(build_app(state))) as c:
        yield c
    await state.close()


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"/runs/{BIG}", 404),
        (f"/live/runs/{BIG}", 404),
        (f"/accounts/{BIG}", 404),
        (f"/api/runs/{BIG}", 404),
        (f"/api/report/{BIG}", 404),
        (f"/api/accounts/{BIG}", 404),
        (f"/jobs?run={BIG}", 400),
        (f"/jobs?account={BIG}", 400),
        (f"/api/jobs?account={BIG}", 400),
        (f"/api/status?run={BIG}", 400),
    ],
)
async def test_an_id_past_int64_is_a_clear_client_error(
    client: TestClient[Any, Any], path: str, status: int
) -> None:
    response = await client.get(path)
    text = await response.text()
    assert response.status == status, text
    # The answer names the id (not found) or the largest id there can be (a bad filter).
    assert str(BIG if status == 404 else BIG - 1) in text, text
    if path.startswith("/api/") and status == 404:
        assert set(await response.json()) == {"error"}
