"""The sandbox's ledger: intents and idempotency records, in memory and in SQLite."""

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
        for pi_id, billq_key, body in self._db.execute(_LOAD_INTENTS):
            self._remember(pi_id, billq_key, bytes(body))
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

    def close(self) -> None:
        self._db.close()
