"""The one HTTP connection pool the HTTP gateway adapters send through (aiohttp).

A keep-alive pool sized to the worker's concurrency, so a charge never waits for a connection
(that wait would spend the call's timeout), with a timeout per phase so a read timeout (the
request went out) is told apart from a connect timeout (it never left).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping

import aiohttp


def keepalive_session(
    max_connections: int,
    timeout: float,
    *,
    headers: Mapping[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
) -> aiohttp.ClientSession:
    """A session for one event loop (create it on first use, inside the loop)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections, ssl=tls if tls else True),
        headers=headers,
        timeout=aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=timeout, sock_read=timeout
        ),
        skip_auto_headers=("User-Agent",),
    )
