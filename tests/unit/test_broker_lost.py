"""Which failures make the distributor start its pass again on the next broker."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest

from shared.amqp.connection import broker_lost
from shared.errors import BrokerUnavailable

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "exc",
    [
        aio_pika.exceptions.AMQPConnectionError("Server connection reset"),
        aio_pika.exceptions.ChannelInvalidStateError("channel closed"),
        ConnectionResetError(104, "Connection reset by peer"),
        asyncio.IncompleteReadError(b"", 8),
        RuntimeError('<Connection: "amqp://guest:******@127.0.0.1:5672/"> closed'),
        BrokerUnavailable("no broker answered"),
    ],
)
def test_a_lost_broker_connection_is_recognised(exc: BaseException) -> None:
    assert broker_lost(exc)


@pytest.mark.parametrize(
    "exc",
    [
        aio_pika.exceptions.ProbableAuthenticationError("ACCESS_REFUSED"),
        RuntimeError("something else went wrong"),
        ValueError("bad data"),
    ],
)
def test_other_failures_are_not_taken_for_a_lost_broker(exc: BaseException) -> None:
    assert not broker_lost(exc)
