"""The sandbox's ledger: intents, refunds and idempotency records, in memory and in SQLite."""

from __future__ import annotations

import sqlite3
from collections import defaultdict

_SCHEMA = """
CREATE TABLE IF NOT EXISTS payment_intents (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    billq_key TEXT,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS refunds (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    payment_intent TEXT NOT NULL,
    amount INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    body BLOB NOT NULL
);
"""
_LOAD_INTENTS = "SELECT id, billq_key, body FROM payment_intents ORDER BY seq"
_LOAD_KEYS = "SELECT key, fingerprint, status, body FROM idempotency_keys"
_INSERT_INTENT = "INSERT INTO payment_intents (id, billq_key, body) VALUES (?, ?, ?)"
_LOAD_REFUNDS = "SELECT id, payment_intent, amount, body FROM refunds ORDER BY seq"
_INSERT_REFUND = "INSERT INTO refunds (id, payment_intent, amount, body) VALUES (?, ?, ?, ?)"
_INSERT_KEY = "INSERT INTO idempotency_keys (key, fingerprint, status, body) VALUES (?, ?, ?, ?)"


class Ledger:
    """Intents and idempotency records: served from memory, written through to SQLite."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path)
        # WAL + NORMAL survives a crash of this process (not a power cut) and keeps each
        # commit to microseconds: benchmarks hit this thousands of times a second.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self.intents: dict[str, bytes] = {}  # id → JSON, never changed once written
        self.order: list[str] = []  # creation order; lists read it backwards
        self.position: dict[str, int] = {}
        self.by_billq_key: defaultdict[str, list[str]] = defaultdict(list)
        self.keys: dict[str, tuple[str, int, bytes]] = {}  # key → (fingerprint, status, body)
        self.refunds: dict[str, bytes] = {}  # id → JSON, never changed once written
        self.refund_order: list[str] = []
        self.refund_intent: dict[str, str] = {}  # refund id → its payment intent
        self.refunded: defaultdict[str, int] = defaultdict(int)  # intent → amount refunded
        for pi_id, billq_key, body in self._db.execute(_LOAD_INTENTS):
            self._remember(pi_id, billq_key, bytes(body))
        for re_id, pi_id, amount, body in self._db.execute(_LOAD_REFUNDS):
            self._remember_refund(re_id, pi_id, amount, bytes(body))
        for key, fingerprint, status, body in self._db.execute(_LOAD_KEYS):
            self.keys[key] = (fingerprint, status, bytes(body))

    def _remember(self, pi_id: str, billq_key: str | None, body: bytes) -> None:
        self.intents[pi_id] = body
        self.position[pi_id] = len(self.order)
        self.order.append(pi_id)
        if billq_key is not None:
            self.by_billq_key[billq_key].append(pi_id)

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
        self._remember(pi_id, billq_key, intent)
        if key is not None:
            self.keys[key] = (fingerprint, status, response)

    def _remember_refund(self, re_id: str, pi_id: str, amount: int, body: bytes) -> None:
        self.refunds[re_id] = body
        self.refund_order.append(re_id)
        self.refund_intent[re_id] = pi_id
        self.refunded[pi_id] += amount

    def add_refund(
        self,
        re_id: str,
        pi_id: str,
        amount: int,
        body: bytes,
        key: str | None,
        fingerprint: str,
    ) -> None:
        # One transaction: a refund is never stored without the key that replays it.
        with self._db:
            self._db.execute(_INSERT_REFUND, (re_id, pi_id, amount, body))
            if key is not None:
                self._db.execute(_INSERT_KEY, (key, fingerprint, 200, body))
        self._remember_refund(re_id, pi_id, amount, body)
        if key is not None:
            self.keys[key] = (fingerprint, 200, body)

    def close(self) -> None:
        self._db.close()
