"""A RabbitMQ node that speaks only TLS and a Postgres cluster with ``ssl = on``, both
throwaway (tests/chaos/services.py) and both demanding a client certificate."""

from __future__ import annotations

import shutil
from pathlib import Path

from services import ThrowawayPostgres, ThrowawayRabbit
from tlscerts import CertificateAuthority, Pair


class TlsRabbit(ThrowawayRabbit):
    """TLS-only: no plain-text listener at all (``listeners.tcp = none``); peers must show a
    certificate signed by the CA (``verify_peer`` + ``fail_if_no_peer_cert``)."""

    def __init__(self, ca: CertificateAuthority, server: Pair) -> None:
        super().__init__("tls")
        conf = (
            "loopback_users = none\n"
            "listeners.tcp = none\n"
            f"listeners.ssl.default = 127.0.0.1:{self.port}\n"
            f"ssl_options.cacertfile = {ca.cert}\n"
            f"ssl_options.certfile = {server.cert}\n"
            f"ssl_options.keyfile = {server.key}\n"
            "ssl_options.verify = verify_peer\n"
            "ssl_options.fail_if_no_peer_cert = true\n"
        )
        (self.root / f"{self.name}.conf").write_text(conf)

    def env(self) -> dict[str, str]:
        env = super().env()
        env.pop("RABBITMQ_NODE_PORT")  # the config file names the only listener
        return env

    def url(self, *, host: str = "127.0.0.1", **query: str) -> str:  # type: ignore[override]
        params = "&".join(f"{k}={v}" for k, v in query.items())
        return f"amqps://guest:guest@{host}:{self.port}/" + (f"?{params}" if params else "")


class TlsPostgres(ThrowawayPostgres):
    """``ssl = on`` and a pg_hba that accepts only TLS connections with a client certificate
    whose common name is the user (``clientcert=verify-full``)."""

    def __init__(self, ca: CertificateAuthority, server: Pair) -> None:
        super().__init__()
        tls = self.root / "tls"
        tls.mkdir()
        for src in (ca.cert, server.cert, server.key):
            shutil.copy(src, tls / src.name)
        for path in (tls, *tls.iterdir()):
            shutil.chown(path, "postgres", "postgres")
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all all 127.0.0.1/32 trust clientcert=verify-full\n"
            "hostnossl all all 0.0.0.0/0 reject\n"
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "ssl = on\n"
                f"ssl_ca_file = '{tls / ca.cert.name}'\n"
                f"ssl_cert_file = '{tls / server.cert.name}'\n"
                f"ssl_key_file = '{tls / server.key.name}'\n"
            )

    def tls_url(
        self, ca: Path, client: Pair | None, *, host: str = "127.0.0.1", db: str = "billq"
    ) -> str:
        query = f"sslmode=verify-full&sslrootcert={ca}"
        if client is not None:
            query += f"&sslcert={client.cert}&sslkey={client.key}"
        return f"postgresql://postgres@{host}:{self.port}/{db}?{query}"
