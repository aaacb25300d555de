"""The distributor pushes its run figures when BILLQ_PUSHGATEWAY_URL is set."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import asyncpg
import pytest
import testkit
from testkit import seed

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture
def pushgateway() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    received: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            received.append((self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", received
    server.shutdown()
    server.server_close()


async def test_distribute_pushes_due_published_and_duration(
    db: asyncpg.Connection,
    tmp_env: dict[str, str],
    pushgateway: tuple[str, list[tuple[str, str]]],
) -> None:
    url, received = pushgateway
    await seed(db, 7)
    out = await asyncio.to_thread(
        testkit.billq,
        "distribute",
        "--as-of",
        testkit.AS_OF,
        "--json",
        env={**tmp_env, "BILLQ_PUSHGATEWAY_URL": url},
    )
    summary = json.loads(out.stdout)
    [(path, body)] = received
    assert path == "/metrics/job/billq_distributor"
    assert "billq_run_due 7.0" in body and "billq_run_published 7.0" in body
    assert f"billq_run_id {float(summary['run_id'])}" in body
    assert "billq_run_duration_seconds" in body
