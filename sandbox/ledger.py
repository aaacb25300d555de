"""The sandbox's ledger: intents, refunds and idempotency records in SQLite, read on demand.

Nothing per intent stays in the process: a million-charge soak used to hold ≈ 9 KB per intent
in dicts (most of it the 4 KB buffer orjson allocates for each body), ≈ 9 GB for 1M. SQLite's
page cache (a few MB) serves the hot rows instead, and each read is an indexed point lookup of a
few microseconds, far below the cost of the HTTP request around it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

_SCHEMA = """
CREATE TABLE IF NOT EXISTS payment_intents (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    billq_key TEXT,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS payment_intents_billq_key ON payment_intents (billq_key, seq);
CREATE TABLE IF NOT EXISTS refunds (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    payment_intent TEXT NOT NULL,
    amount INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS refunds_payment_intent ON refunds (payment_intent, seq);
"""
_INSERT_INTENT = "INSERT INTO payment_intents (id, billq_key, body) VALUES (?, ?, ?)"
_INSERT_KEY = "INSERT INTO idempotency_keys (key, fingerprint, status, body) VALUES (?, ?, ?, ?)"
_KEY = "SELECT fingerprint, status, body FROM idempotency_keys WHERE key = ?"
_INTENT = "SELECT body FROM payment_intents WHERE id = ?"
_SEQ = "SELECT seq FROM payment_intents WHERE id = ?"
# Pages of the list endpoint, by creation order (seq); each asks for one row more than the page
# to learn whether there is more.
_NEWEST = "SELECT body FROM payment_intents ORDER BY seq DESC LIMIT ?"
_OLDER = "SELECT body FROM payment_intents WHERE seq < ? ORDER BY seq DESC LIMIT ?"
_NEWER = "SELECT body FROM payment_intents WHERE seq > ? ORDER BY seq LIMIT ?"
_BY_BILLQ_KEY = "SELECT body FROM payment_intents WHERE billq_key = ? ORDER BY seq DESC"
_ALL_NEWEST_FIRST = "SELECT body FROM payment_intents ORDER BY seq DESC"
_INSERT_REFUND = "INSERT INTO refunds (id, payment_intent, amount, body) VALUES (?, ?, ?, ?)"
_REFUNDED = "SELECT coalesce(sum(amount), 0) FROM refunds WHERE payment_intent = ?"
_REFUND_SEQ = "SELECT seq FROM refunds WHERE id = ?"
# A page of refunds, newest first, optionally of one intent and before a cursor (seq).
_REFUNDS = """
SELECT body FROM refunds
 WHERE (?1 IS NULL OR payment_intent = ?1) AND (?2 IS NULL OR seq < ?2)
 ORDER BY seq DESC LIMIT ?3
"""


class Ledger:
    """Intents and idempotency records, stored in SQLite and read back from it."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path)
        # WAL + NORMAL survives a crash of this process (not a power cut) and keeps each
        # commit to microseconds: benchmarks hit this thousands of times a second.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def key(self, key: str) -> tuple[str, int, bytes] | None:
        """The idempotency record of ``key``: (fingerprint, status, response body)."""
        row = self._db.execute(_KEY, (key,)).fetchone()
        return None if row is None else (row[0], row[1], bytes(row[2]))

    def intent(self, pi_id: str) -> bytes | None:
        row = self._db.execute(_INTENT, (pi_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def seq(self, pi_id: str) -> int | None:
        """The intent's place in creation order (a list cursor), None if unknown."""
        row = self._db.execute(_SEQ, (pi_id,)).fetchone()
        return None if row is None else int(row[0])

    def newest(self, limit: int, *, older_than: int | None = None) -> list[bytes]:
        """Up to ``limit`` intents newest first, all or only those created before a seq."""
        if older_than is None:
            rows = self._db.execute(_NEWEST, (limit,))
        else:
            rows = self._db.execute(_OLDER, (older_than, limit))
        return [bytes(body) for (body,) in rows]

    def oldest_newer_than(self, seq: int, limit: int) -> list[bytes]:
        """Up to ``limit`` intents created just after ``seq``, oldest first."""
        return [bytes(body) for (body,) in self._db.execute(_NEWER, (seq, limit))]

    def by_billq_key(self, billq_key: str) -> list[bytes]:
        """The intents carrying billq's idempotency key in their metadata, newest first."""
        return [bytes(body) for (body,) in self._db.execute(_BY_BILLQ_KEY, (billq_key,))]

    def all_newest_first(self) -> Iterator[bytes]:
        for (body,) in self._db.execute(_ALL_NEWEST_FIRST):
            yield bytes(body)

    def add(
        self,
        pi_id: str,
        billq_key: str | None,
        intent: bytes,
        key: str | None,
        fingerprint: str,
        status: int,
        response: bytes,
    ) -> None:
        # One transaction: an intent is never stored without the key that replays it.
        with self._db:
            self._db.execute(_INSERT_INTENT, (pi_id, billq_key, intent))
            if key is not None:
                self._db.execute(_INSERT_KEY, (key, fingerprint, status, response))

    def refunded(self, pi_id: str) -> int:
        """What the intent's refunds add up to (in the gateway's units)."""
        return int(self._db.execute(_REFUNDED, (pi_id,)).fetchone()[0])

    def refund_seq(self, re_id: str) -> int | None:
        row = self._db.execute(_REFUND_SEQ, (re_id,)).fetchone()
        return None if row is None else int(row[0])

    def refunds(
        self, limit: int, *, pi_id: str | None = None, older_than: int | None = None
    ) -> list[bytes]:
        """Up to ``limit`` refunds newest first: all, or one intent's, or before a seq."""
        rows = self._db.execute(_REFUNDS, (pi_id, older_than, limit))
        return [bytes(body) for (body,) in rows]

    def add_refund(
        self, re_id: str, pi_id: str, amount: int, body: bytes, key: str | None, fingerprint: str
    ) -> None:
        # One transaction: a refund is never stored without the key that replays it.
        with self._db:
            self._db.execute(_INSERT_REFUND, (re_id, pi_id, amount, body))
            if key is not None:
                self._db.execute(_INSERT_KEY, (key, fingerprint, 200, body))

    def close(self) -> None:
        self._db.close()
