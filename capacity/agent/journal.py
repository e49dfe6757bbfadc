"""The agent's usage journal: a hash chain of records in one SQLite file.

The platform pulls from the agent and may fetch the same records again after a crash
on either side, so a ``seq`` must name one record forever within a ``journal_epoch``.
Records are therefore appended in one write transaction with the bookkeeping that
produced them (``meta``), the file is synced on every commit (``synchronous=FULL``: a
record that was served must survive a power cut, or its ``seq`` would come back with
other contents), and a new epoch exists only when the file itself is new.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capacity.agent.protocol import GENESIS_PREV_HASH, canonical_json, chain_record

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL  -- JSON
);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY CHECK (seq >= 1),
    hash TEXT NOT NULL,
    body TEXT NOT NULL  -- canonical JSON of the whole record, hash included
);
CREATE TABLE IF NOT EXISTS served_receipts (
    rid TEXT PRIMARY KEY,  -- a gateway receipt's request id, claimed before it is served
    iat INTEGER NOT NULL  -- the receipt's issue time (Unix s): kept while it could be replayed
);
"""
# Claims between two purges of receipts too old to be honoured anyway.
PURGE_EVERY_CLAIMS = 1000


@dataclass(frozen=True)
class UsagePage:
    """One answer to ``/v1/usage``: records after a cursor plus the journal's head."""

    journal_epoch: str
    records: list[dict[str, Any]]
    head_seq: int
    head_hash: str

    def to_wire(self) -> dict[str, object]:
        return {
            "journal_epoch": self.journal_epoch,
            "records": self.records,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
        }


class Journal:
    """Append-only, hash-chained usage records; single writer (the agent process)."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self.epoch = self._ensure_epoch()
        self._claims_since_purge = 0

    @classmethod
    def open(cls, path: Path) -> Journal:
        """Open the journal at ``path``, creating it (and a new epoch) if it is missing."""
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.executescript(_SCHEMA)
        return cls(connection, path)

    def close(self) -> None:
        self._db.close()

    def _ensure_epoch(self) -> str:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'journal_epoch'").fetchone()
            if row is None:
                epoch = secrets.token_hex(16)
                self._db.execute(
                    "INSERT INTO meta (key, value) VALUES ('journal_epoch', ?)",
                    (json.dumps(epoch),),
                )
            else:
                epoch = str(json.loads(row[0]))
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._db.execute("ROLLBACK")
            raise
        return epoch

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last record, ``(0, GENESIS_PREV_HASH)`` when empty."""
        row = self._db.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            return 0, GENESIS_PREV_HASH
        return int(row[0]), str(row[1])

    def get_meta(self, key: str) -> Any:
        """A bookkeeping value stored with ``append(meta=...)``, or None."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def append(
        self,
        entries: Sequence[Mapping[str, object]],
        *,
        meta: Mapping[str, object] | None = None,
    ) -> list[dict[str, object]]:
        """Chain ``entries`` after the head and store them and ``meta`` atomically."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            seq, prev_hash = self.head()
            records = []
            for fields in entries:
                seq += 1
                record = chain_record(fields, seq=seq, prev_hash=prev_hash)
                prev_hash = str(record["hash"])
                self._db.execute(
                    "INSERT INTO records (seq, hash, body) VALUES (?, ?, ?)",
                    (seq, prev_hash, canonical_json(record)),
                )
                records.append(record)
            for key, value in (meta or {}).items():
                self._db.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, canonical_json(value)),
                )
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._db.execute("ROLLBACK")
            raise
        return records

    def claim_receipt(self, *, rid: str, iat: int, forget_before: int) -> bool:
        """Store ``rid`` as served; False when it already was (a replay, maybe across a
        restart). One conditional insert, committed before the engine sees the request.

        The commit is not synced on its own (``synchronous=NORMAL`` for this transaction):
        in WAL mode a committed claim survives the process being killed or restarted —
        the replay this guards against — and the request's record, committed with a full
        sync when it ends, syncs the claim with it. One sync per request instead of two,
        on the event loop. Claims with ``iat < forget_before`` (receipts too old to pass
        the freshness check anyway) are purged now and then."""
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            return self._claim(rid=rid, iat=iat, forget_before=forget_before)
        finally:
            self._db.execute("PRAGMA synchronous=FULL")

    def _claim(self, *, rid: str, iat: int, forget_before: int) -> bool:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            inserted = self._db.execute(
                "INSERT INTO served_receipts (rid, iat) VALUES (?, ?) ON CONFLICT (rid) DO NOTHING",
                (rid, iat),
            ).rowcount
            self._claims_since_purge += 1
            if self._claims_since_purge >= PURGE_EVERY_CLAIMS:
                self._db.execute("DELETE FROM served_receipts WHERE iat < ?", (forget_before,))
                self._claims_since_purge = 0
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._db.execute("ROLLBACK")
            raise
        return inserted == 1

    def page(self, *, after: int, limit: int) -> UsagePage:
        """Records with ``seq > after``, oldest first, at most ``limit``, and the head.

        Read in one transaction so the head never lags the records returned.
        """
        self._db.execute("BEGIN")
        try:
            rows = self._db.execute(
                "SELECT body FROM records WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
            head_seq, head_hash = self.head()
        finally:
            self._db.execute("COMMIT")
        return UsagePage(
            journal_epoch=self.epoch,
            records=[json.loads(row[0]) for row in rows],
            head_seq=head_seq,
            head_hash=head_hash,
        )
