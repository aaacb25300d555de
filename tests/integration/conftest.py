"""Fixtures of the gateway tests: the sandbox server in this event loop, on its own ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gatewaykit import Seen, sandbox


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite3"


@pytest.fixture
def seen() -> list[Seen]:
    """The requests the ``url`` sandbox answered, in order."""
    return []


@pytest.fixture
async def url(ledger: Path, seen: list[Seen]) -> AsyncIterator[str]:
    async with sandbox(ledger, seen=seen) as base:
        yield base
