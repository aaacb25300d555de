"""The pipeline over TLS for real: a RabbitMQ node with only a TLS listener and a Postgres
cluster with ``ssl = on``, both demanding client certificates from a CA the test makes.

Every refusal (wrong CA, wrong host name, plain text against TLS, no client certificate)
must end the command with one clear line and a non-zero exit, never fall back to plain
text. Module-scoped services: the broker boots once (~6 s) for all tests here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import testkit
from harness import Pipeline, Result, assert_invariants
from services import stop_all
from tlscerts import CertificateAuthority, Pair
from tlsservices import TlsPostgres, TlsRabbit

from shared.config import Settings

pytestmark = [pytest.mark.tls, pytest.mark.integration]


@dataclass
class Tls:
    ca: CertificateAuthority
    other_ca: CertificateAuthority
    rabbit: TlsRabbit
    pg: TlsPostgres
    amqp_client: Pair
    pg_client: Pair

    def amqp_url(self, *, host: str = "127.0.0.1", ca: Path | None = None) -> str:
        return self.rabbit.url(
            host=host,
            cafile=str(ca or self.ca.cert),
            certfile=str(self.amqp_client.cert),
            keyfile=str(self.amqp_client.key),
        )

    def db_url(self, *, host: str = "127.0.0.1", ca: Path | None = None) -> str:
        return self.pg.tls_url(ca or self.ca.cert, self.pg_client, host=host)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    root = tmp_path_factory.mktemp("tls")
    ca = CertificateAuthority(root / "ca")
    other = CertificateAuthority(root / "other", "impostor-ca")
    # The servers' certificates name 127.0.0.1 only: "localhost" is the wrong host name.
    server = ca.issue("server", ips=("127.0.0.1",))
    rabbit, pg = TlsRabbit(ca, server), TlsPostgres(ca, server)
    try:
        pg.start()
        rabbit.start()
        setup = Tls(
            ca,
            other,
            rabbit,
            pg,
            amqp_client=ca.issue("guest", client=True),
            # Postgres maps the certificate's common name to the user (clientcert=verify-full).
            pg_client=ca.issue("postgres", client=True),
        )
        # Migrated once, over TLS: each test may then run alone.
        testkit.billq("migrate", env={**os.environ, "BILLQ_DATABASE_URL": setup.db_url()})
        yield setup
    finally:
        stop_all(rabbit, pg)


async def test_the_whole_pipeline_runs_over_tls_with_client_certificates(
    settings: Settings, tls: Tls, tmp_path: Path
) -> None:
    n = 60
    result = Result("TLS: amqps + verify-full, client certificates", 0, n)
    with testkit.sandbox_gateway(tmp_path, "--latency-ms", "5") as gw:
        p = Pipeline(settings, tls.db_url(), tls.amqp_url(), gw, tmp_path)
        await p.seed(n)
        worker = p.start_worker("--concurrency", "8")
        out = p.billq("distribute", "--as-of", testkit.AS_OF)
        assert out.returncode == 0, out.stderr
        start = time.monotonic()
        await p.settle(n, timeout=90)
        # Every session the pipeline holds is TLS and authenticated by the client certificate.
        conn = await asyncpg.connect(tls.db_url())
        try:
            sessions = await conn.fetch(
                "SELECT s.ssl, s.client_dn FROM pg_stat_ssl s "
                "JOIN pg_stat_activity a USING (pid) WHERE a.datname = 'billq'"
            )
        finally:
            await conn.close()
        assert len(sessions) > 1, sessions  # the worker's pool and this connection
        assert all(s["ssl"] and s["client_dn"] == "/CN=postgres" for s in sessions), sessions
        assert worker.poll() is None, "the worker died"
        reconciled = p.billq("reconcile")
        assert reconciled.returncode == 0, reconciled.stderr
        p.stop_workers()
        result.settle_s = round(time.monotonic() - start, 1)
        await p.count_money(result)
    assert_invariants(result)


def _refusals(tls: Tls) -> dict[str, tuple[dict[str, str], tuple[str, ...], int, str]]:
    """case → (environment change, command, exit code, what the one line must say)."""
    plain = f"amqp://guest:guest@127.0.0.1:{tls.rabbit.port}/"
    no_client_cert = tls.rabbit.url(cafile=str(tls.ca.cert))
    db_disable = f"postgresql://postgres@127.0.0.1:{tls.pg.port}/billq?sslmode=disable"
    return {
        "amqp wrong CA": (
            {"BILLQ_AMQP_URL": tls.amqp_url(ca=tls.other_ca.cert)},
            ("topology",),
            2,
            "CERTIFICATE_VERIFY_FAILED",
        ),
        "amqp wrong host name": (
            {"BILLQ_AMQP_URL": tls.amqp_url(host="localhost")},
            ("topology",),
            2,
            "Hostname mismatch",
        ),
        "amqp no client certificate": (
            {"BILLQ_AMQP_URL": no_client_cert},
            ("topology",),
            2,
            "CERTIFICATE_REQUIRED",
        ),
        "plain amqp against the TLS-only listener": (
            {"BILLQ_AMQP_URL": plain},
            ("topology",),
            1,
            "no broker answered",
        ),
        "a worker given the wrong CA exits instead of retrying": (
            {"BILLQ_AMQP_URL": tls.amqp_url(ca=tls.other_ca.cert)},
            ("worker",),
            2,
            "CERTIFICATE_VERIFY_FAILED",
        ),
        "postgres wrong CA": (
            {"BILLQ_DATABASE_URL": tls.db_url(ca=tls.other_ca.cert)},
            ("migrate",),
            2,
            "TLS certificate verification failed",
        ),
        "postgres wrong host name": (
            {"BILLQ_DATABASE_URL": tls.db_url(host="localhost")},
            ("migrate",),
            2,
            "Hostname mismatch",
        ),
        "postgres without a client certificate": (
            {"BILLQ_DATABASE_URL": tls.pg.tls_url(tls.ca.cert, None)},
            ("migrate",),
            2,
            "requires a valid client certificate",
        ),
        "postgres plain text": (
            {"BILLQ_DATABASE_URL": db_disable},
            ("migrate",),
            2,
            "no encryption",
        ),
        "postgres CA file missing": (
            {"BILLQ_DATABASE_URL": tls.db_url(ca=tls.ca.root / "missing.pem")},
            ("migrate",),
            2,
            "sslrootcert",
        ),
    }


CASES = [
    "amqp wrong CA",
    "amqp wrong host name",
    "amqp no client certificate",
    "plain amqp against the TLS-only listener",
    "a worker given the wrong CA exits instead of retrying",
    "postgres wrong CA",
    "postgres wrong host name",
    "postgres without a client certificate",
    "postgres plain text",
    "postgres CA file missing",
]


@pytest.mark.parametrize("case", CASES)
def test_a_tls_refusal_is_one_clear_line_and_a_non_zero_exit(
    settings: Settings, tls: Tls, case: str
) -> None:
    change, command, code, says = _refusals(tls)[case]
    if case == "amqp no client certificate":
        # TLS 1.3: the client's handshake is done before the broker checks its certificate;
        # the broker's alert may arrive as a closed socket (a broker that does not answer).
        code, says = -1, "BILLQ_AMQP_URL"
    env = testkit.env_for(settings)
    env.update({"BILLQ_AMQP_URL": tls.amqp_url(), "BILLQ_DATABASE_URL": tls.db_url()} | change)
    out = testkit.billq(*command, env=env, timeout=60, check=False)
    # Structured log events (a worker logs its start) aside, the error is one line.
    lines = [line for line in out.stderr.strip().splitlines() if not line.startswith("{")]
    assert out.returncode in ((1, 2) if code == -1 else (code,)), (out.returncode, out.stderr)
    assert len(lines) == 1, out.stderr
    assert says in lines[0], lines[0]
    assert "guest:guest" not in out.stderr  # the URL's password never shows
