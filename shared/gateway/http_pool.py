"""The one HTTP connection pool the HTTP gateway adapters send through (aiohttp).

A keep-alive pool sized to the worker's concurrency, so a charge never waits for a connection
(that wait would spend the call's timeout), with a timeout per phase so a read timeout (the
request went out) is told apart from a connect timeout (it never left). Beside it, the one
header both adapters read the same way: a 429's ``Retry-After``.
"""

from __future__ import annotations

import math
import ssl
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

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


# A Retry-After beyond this is not trusted as is (a misconfigured proxy): it is capped here,
# and the worker's own wait budget bounds it further.
MAX_RETRY_AFTER_S = 3600.0


def retry_after_s(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delay-seconds or an HTTP date), or None
    when absent or unreadable; never negative, at most ``MAX_RETRY_AFTER_S``."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(text).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
