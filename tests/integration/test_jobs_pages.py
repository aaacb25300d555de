"""`billq jobs --before ID` and the dashboard's `/jobs?before=`: keyset pages, newest first."""

from __future__ import annotations

import json

import asyncpg
import pytest
import testkit
from testkit import distribute, seed

pytestmark = pytest.mark.integration


async def test_jobs_pages_by_keyset_list_every_job_once_newest_first(
    db: asyncpg.Connection, tmp_env: dict[str, str]
) -> None:
    await seed(db, 25)
    distribute(tmp_env)
    seen: list[int] = []
    before: list[str] = []
    while True:
        out = testkit.billq("jobs", "--limit", "10", "--json", *before, env=tmp_env).stdout
        page = [int(j["id"]) for j in json.loads(out)]
        if not page:
            break
        seen += page
        before = ["--before", str(page[-1])]
    expected = [
        int(r["id"]) for r in await db.fetch("SELECT id FROM billing_jobs ORDER BY id DESC")
    ]
    assert seen == expected and len(seen) == 25
