"""The API in-process against the test's database and broker, and its OpenAPI contract."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jsonschema
from aiohttp.test_utils import TestClient, TestServer

from api.server import State, build_app
from shared.config import Settings
from shared.db.pool import create_pool

OPENAPI = json.loads((Path(__file__).resolve().parents[1] / "api" / "openapi.json").read_text())


@asynccontextmanager
async def api_client(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    pool = await create_pool(settings, min_size=1, max_size=4)
    state = State(settings, pool)
    async with TestClient(TestServer(build_app(state))) as client:
        try:
            yield client
        finally:
            await state.close()


def response_schema(path: str, method: str, status: int) -> dict[str, Any]:
    """The JSON schema the document gives this answer (refs resolved against the document)."""
    answer = OPENAPI["paths"][path][method]["responses"][str(status)]
    schema = answer["content"]["application/json"]["schema"]
    return {**schema, "components": OPENAPI["components"]}


def check(path: str, method: str, status: int, body: Any) -> None:
    """Raise unless ``body`` is what the OpenAPI document promises for this answer."""
    jsonschema.Draft202012Validator(
        response_schema(path, method, status), format_checker=jsonschema.FormatChecker()
    ).validate(body)
