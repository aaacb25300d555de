"""A TLS failure that configuration caused is told apart from a broker or database that
is merely away: the first ends the command, the second is retried."""

from __future__ import annotations

import ssl

import aio_pika
import pytest

from shared.amqp.connection import safe_url, tls_refusal
from shared.db.errors import classify
from shared.errors import ConfigError, DatabaseUnavailable

pytestmark = pytest.mark.unit


def _wrapped(err: BaseException) -> BaseException:
    """aiormq's shape: AMQPConnectionError(*err.args) raised from the ssl error."""
    try:
        raise aio_pika.exceptions.AMQPConnectionError(*err.args) from err
    except aio_pika.exceptions.AMQPConnectionError as exc:
        return exc


def _verify_failed() -> ssl.SSLCertVerificationError:
    err = ssl.SSLCertVerificationError(1, "certificate verify failed")
    err.reason = "CERTIFICATE_VERIFY_FAILED"
    err.verify_message = "Hostname mismatch"
    return err


def test_a_certificate_the_client_rejects_is_a_refusal_behind_aiormqs_wrapper() -> None:
    assert isinstance(tls_refusal(_wrapped(_verify_failed())), ssl.SSLCertVerificationError)


@pytest.mark.parametrize(
    "exc",
    [
        aio_pika.exceptions.AMQPConnectionError("Server connection reset"),
        _wrapped(ssl.SSLEOFError(8, "EOF occurred in violation of protocol")),
        ConnectionRefusedError(111, "Connection refused"),
    ],
)
def test_a_broker_going_away_mid_handshake_is_not_a_refusal(exc: BaseException) -> None:
    assert tls_refusal(exc) is None


def test_postgres_certificate_failures_are_config_errors_not_outages() -> None:
    err = classify(_verify_failed(), setting="BILLQ_DATABASE_URL")
    assert isinstance(err, ConfigError)
    assert "Hostname mismatch" in str(err)
    assert isinstance(classify(FileNotFoundError(2, "x")), ConfigError)
    assert isinstance(classify(ConnectionRefusedError(111, "refused")), DatabaseUnavailable)


def test_an_amqps_url_without_a_port_names_the_tls_port() -> None:
    assert (
        safe_url("amqps://u:p@broker.example/billq?cafile=/ca.pem") == "broker.example:5671/billq"
    )
