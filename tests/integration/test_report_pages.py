"""``/api/report/{id}``: a run's dead jobs in keyset pages (``limit``, ``after``), not all
of them in one answer (10,000 dead jobs took ≈ 700 ms under load)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from testkit import seed

from dashboard.server import State, build_app, templates
from shared.config import Settings
from shared.db.pool import create_pool

pytestmark = [
    pytest.mark.integration,
    # The dashboard's auth keeps its actor under a string key (aiohttp warns); in process,
    # where warnings are errors, that one is let through.
    pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning"),
]

DEAD = 250

# Run 1: 250 dead jobs between others of the run (every third job lives on); run 2: dead
# jobs of its own, which run 1's pages must not show.
JOBS = """
INSERT INTO billing_jobs (run_id, account_id, period_start, period_end, idempotency_key,
                          amount_cents, currency, state, attempts, finished_at, last_error)
SELECT r, i, make_date(2026, r, 1), make_date(2026, r + 1, 1), 'billq_' || i || '_' || r,
       1000, 'USD', CASE WHEN r = 2 OR i % 3 <> 0 THEN 'dead' ELSE 'succeeded' END, 1, now(),
       'gave up on ' || i
  FROM generate_series(1, $1) i CROSS JOIN generate_series(1, 2) r
 WHERE r = 1 OR i <= 5
"""


@pytest.fixture
async def client(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[TestClient[Any, Any]]:
    accounts = DEAD * 3 // 2
    await seed(db, accounts)
    await db.execute(
        "INSERT INTO billing_runs (id, as_of, state) VALUES (1, '2026-01-01T12:00:00Z',"
        " 'completed_with_failures'), (2, '2026-02-01T12:00:00Z', 'completed_with_failures')"
    )
    await db.execute(JOBS, accounts)
    dead = "SELECT count(*) FROM billing_jobs WHERE run_id = 1 AND state = 'dead'"
    assert await db.fetchval(dead) == DEAD
    pool = await create_pool(settings, max_size=2)
    state = State(settings, pool, read_only=True, finish_within_s=3600, templates=templates())
    async with TestClient(TestServer(build_app(state))) as c:
        yield c
    await state.close()


async def _get(client: TestClient[Any, Any], path: str, status: int = 200) -> dict[str, Any]:
    response = await client.get(path)
    body: dict[str, Any] = await response.json()
    assert response.status == status, body
    return body


async def test_dead_jobs_page_by_keyset_with_no_duplicates_or_gaps(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    pages: list[dict[str, Any]] = []
    path = "/api/report/1"
    while True:
        pages.append(await _get(client, path))
        if pages[-1]["dead_next"] is None:
            break
        path = f"/api/report/1?after={pages[-1]['dead_next']}"

    assert [len(p["dead"]) for p in pages] == [100, 100, 50]
    assert {p["dead_total"] for p in pages} == {DEAD}
    # Each page's cursor is its last job; the rest of the report is the same on every page.
    assert [p["dead_next"] for p in pages] == [p["dead"][-1]["job_id"] for p in pages[:2]] + [None]
    assert all(p["jobs"] == pages[0]["jobs"] and p["billed"] == pages[0]["billed"] for p in pages)
    seen = [d["job_id"] for p in pages for d in p["dead"]]
    expected = await db.fetch(
        "SELECT id, last_error FROM billing_jobs WHERE run_id = 1 AND state = 'dead' ORDER BY id"
    )
    assert seen == [r["id"] for r in expected]
    assert [d["reason"] for p in pages for d in p["dead"]] == [r["last_error"] for r in expected]


async def test_a_limit_sets_the_page_size_up_to_a_thousand(client: TestClient[Any, Any]) -> None:
    small = await _get(client, "/api/report/1?limit=7")
    whole = await _get(client, "/api/report/1?limit=1000")

    assert len(small["dead"]) == 7 and small["dead_next"] == small["dead"][-1]["job_id"]
    assert len(whole["dead"]) == DEAD and whole["dead_next"] is None
    assert whole["dead"][:7] == small["dead"]
    rest = await _get(client, f"/api/report/1?limit=1000&after={small['dead_next']}")
    assert small["dead"] + rest["dead"] == whole["dead"]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("limit=", "limit"),
        ("after=-1", "after"),
        ("after=abc", "after"),
        ("after=1.5", "after"),
        (f"after={2**63}", "after"),
    ],
)
async def test_a_bad_limit_or_cursor_is_one_clear_400(
    client: TestClient[Any, Any], query: str, param: str
) -> None:
    body = await _get(client, f"/api/report/1?{query}", status=400)

    assert set(body) == {"error"} and body["error"].startswith(f"{param} must be an integer")


async def test_a_run_id_past_int64_is_not_found(client: TestClient[Any, Any]) -> None:
    body = await _get(client, f"/api/report/{2**63}", status=404)
    assert "no billing run" in body["error"]
