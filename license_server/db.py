"""The licence server's database: serials, activations, audit log (SQLite, stdlib).

The database is named by URL: ``sqlite:///relative/path.db``, ``sqlite:////abs/path.db``
or ``sqlite:///:memory:``. Only SQLite is implemented; any other scheme (postgresql://…)
is refused with a clear message rather than pretending. One connection, used from the
event loop thread only; every change is one transaction.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.licence.document import Module

DEFAULT_DB_URL = "sqlite:////var/lib/voxnode-license-server/licences.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS serials (
    serial TEXT PRIMARY KEY, company TEXT NOT NULL, email TEXT NOT NULL,
    modules TEXT NOT NULL, valid_until INTEGER, version INTEGER NOT NULL,
    created_at REAL NOT NULL, revoked_at REAL);
CREATE TABLE IF NOT EXISTS activations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, serial TEXT NOT NULL REFERENCES serials(serial),
    fingerprint TEXT NOT NULL, state TEXT NOT NULL, code_hash TEXT, code_expires REAL,
    tries INTEGER NOT NULL DEFAULT 0, requested_at REAL NOT NULL, activated_at REAL,
    released_at REAL);
CREATE INDEX IF NOT EXISTS activations_serial ON activations(serial, state);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL,
    serial TEXT, action TEXT NOT NULL, detail TEXT NOT NULL);
"""


class DatabaseError(Exception):
    """The database URL or file cannot be used; ``str()`` is the operator sentence."""


def sqlite_path(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise DatabaseError(f"'{url}' is not a database URL (e.g. sqlite:///licences.db)")
    if scheme != "sqlite":
        raise DatabaseError(f"database scheme '{scheme}' is not supported: this server "
                            "implements SQLite only (sqlite:///path.db)")
    if not rest.startswith("/") or rest == "/":
        raise DatabaseError(f"'{url}' has no path (e.g. sqlite:///licences.db)")
    return rest[1:]


@dataclass(frozen=True)
class Serial:
    serial: str
    company: str
    email: str
    modules: tuple[Module, ...]
    valid_until: int | None
    version: int
    created_at: float
    revoked_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"serial": self.serial, "company": self.company, "email": self.email,
                "modules": [m.to_dict() for m in self.modules], "valid_until": self.valid_until,
                "version": self.version, "created_at": self.created_at,
                "revoked_at": self.revoked_at}


def _modules_json(modules: tuple[Module, ...]) -> str:
    return json.dumps([m.to_dict() for m in modules])


class Database:
    def __init__(self, url: str) -> None:
        path = sqlite_path(url)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(path, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self.conn.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot open the database {path}: {exc}") from None

    def close(self) -> None:
        self.conn.close()

    def audit(self, actor: str, serial: str | None, action: str, detail: str = "") -> None:
        self.conn.execute("INSERT INTO audit (at, actor, serial, action, detail) VALUES "
                          "(?, ?, ?, ?, ?)", (time.time(), actor, serial, action, detail))

    # --- serials ----------------------------------------------------------------------------

    def add_serial(self, s: Serial) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT INTO serials VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (s.serial, s.company, s.email, _modules_json(s.modules), s.valid_until,
                 s.version, s.created_at, s.revoked_at))
            self.audit("vendor", s.serial, "create", f"modules {_modules_json(s.modules)}")

    def serial(self, serial: str) -> Serial | None:
        row = self.conn.execute("SELECT * FROM serials WHERE serial = ?", (serial,)).fetchone()
        if row is None:
            return None
        modules = tuple(Module(m["name"], m["enabled"], m["limit"])
                        for m in json.loads(row["modules"]))
        return Serial(row["serial"], row["company"], row["email"], modules, row["valid_until"],
                      row["version"], row["created_at"], row["revoked_at"])

    def serials(self) -> list[Serial]:
        rows = self.conn.execute("SELECT serial FROM serials ORDER BY created_at").fetchall()
        return [s for r in rows if (s := self.serial(r["serial"])) is not None]

    def set_modules(self, serial: str, modules: tuple[Module, ...],
                    valid_until: int | None, keep_expiry: bool) -> None:
        with self.conn:
            if keep_expiry:
                self.conn.execute("UPDATE serials SET modules = ?, version = version + 1 WHERE "
                                  "serial = ?", (_modules_json(modules), serial))
            else:
                self.conn.execute("UPDATE serials SET modules = ?, valid_until = ?, version = "
                                  "version + 1 WHERE serial = ?",
                                  (_modules_json(modules), valid_until, serial))
            self.audit("vendor", serial, "modules", _modules_json(modules))

    def revoke(self, serial: str) -> None:
        with self.conn:
            self.conn.execute("UPDATE serials SET revoked_at = ?, version = version + 1 WHERE "
                              "serial = ?", (time.time(), serial))
            self.audit("vendor", serial, "revoke")

    def release(self, serial: str) -> bool:
        """The vendor frees the serial from the node it is active on (new hardware, the
        old one gone); that node's next check ends its licence. False if it was active
        nowhere."""
        with self.conn:
            done = self.conn.execute("UPDATE activations SET state = 'released', released_at = ? "
                                     "WHERE serial = ? AND state = 'active'", (time.time(), serial))
            if done.rowcount:
                self.audit("vendor", serial, "release")
        return bool(done.rowcount)

    # --- activations -------------------------------------------------------------------------

    def activations(self, serial: str | None = None) -> list[dict[str, Any]]:
        query = ("SELECT id, serial, fingerprint, state, tries, requested_at, activated_at, "
                 "released_at FROM activations")
        rows = (self.conn.execute(query + " WHERE serial = ? ORDER BY id", (serial,))
                if serial else self.conn.execute(query + " ORDER BY id"))
        return [dict(r) for r in rows.fetchall()]

    def active_on(self, serial: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(
            "SELECT * FROM activations WHERE serial = ? AND state = 'active'",
            (serial,)).fetchone()
        return row

    def pending(self, serial: str, fingerprint: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(
            "SELECT * FROM activations WHERE serial = ? AND fingerprint = ? AND state = "
            "'pending' ORDER BY id DESC LIMIT 1", (serial, fingerprint)).fetchone()
        return row

    def audit_log(self, serial: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT at, actor, serial, action, detail FROM audit"
        rows = (self.conn.execute(query + " WHERE serial = ? ORDER BY id", (serial,))
                if serial else self.conn.execute(query + " ORDER BY id"))
        return [dict(r) for r in rows.fetchall()]
