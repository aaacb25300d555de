"""Fixtures: a migrated template database per session, a clone and a queue prefix per test."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import hypothesis  # noqa: F401  # see below
import pytest
import testkit

from shared.config import Settings
from shared.db.migrations import migrate

# hypothesis is imported up front: its pytest plugin otherwise imports it lazily at session
# end, and CPython 3.11.7 can then fail the assertion rewriter's compile() with
# "AST constructor recursion depth mismatch" after tests that ran event loops in threads.


@pytest.fixture(scope="session", autouse=True)
def clean_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No developer's ``BILLQ_*`` variables or ``.env`` reach a test or its subprocesses.

    Settings come from the test alone: the variables are removed, and the session runs in an
    empty directory because pydantic-settings reads ``.env`` from the working directory
    (subprocesses inherit it; ``testkit.clean_env`` points their PYTHONPATH at this tree).
    Session-scoped so it also holds for the session fixtures (the template database).
    """
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("BILLQ_")]:
            patch.delenv(name)
        patch.chdir(tmp_path_factory.mktemp("cwd"))
        yield


@pytest.fixture(autouse=True)
def _in_process_commands_leave_logging_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """billq's entry points configure structlog once per process, with loggers cached on first
    use; a command a test runs in-process (``billq.main.main``) must not rebind the loggers that
    later tests capture with ``structlog.testing.capture_logs``."""
    import shared.logging

    monkeypatch.setattr(shared.logging, "configure_logging", lambda settings: None)


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    name = testkit.unique("billq_tpl")
    settings = testkit.make_settings(name, "unused")
    asyncio.run(migrate(settings))
    yield name
    asyncio.run(testkit.drop_database(name))


@pytest.fixture
async def database(template_db: str) -> AsyncIterator[str]:
    name = testkit.unique("billq_t")
    await testkit.clone_database(template_db, name)
    yield name
    await testkit.drop_database(name)


@pytest.fixture
async def settings(database: str) -> AsyncIterator[Settings]:
    s = testkit.make_settings(
        database,
        testkit.unique("bqt"),
        retry_delays=[1.0, 2.0],
        gateway_timeout=5.0,
        job_lease=30.0,
        shutdown_grace=10.0,
        # Tests bill successive months in seconds; pacing has its own tests.
        catchup_min_gap=0.0,
    )
    yield s
    await testkit.delete_topology(s)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    yield conn
    await conn.close()


@pytest.fixture
def gateway_url(tmp_path: Path) -> Iterator[str]:
    with testkit.sandbox_gateway(tmp_path) as url:
        yield url


@pytest.fixture
def tmp_env(settings: Settings, gateway_url: str) -> dict[str, Any]:
    return testkit.env_for(settings.model_copy(update={"gateway_url": gateway_url}))
