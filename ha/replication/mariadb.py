"""The PBX's MariaDB server as one half of the pair: its replication settings, its role and
what it reports.

Settings (``render_server_config``, a drop-in the agent owns): a ``server_id`` from the
node's management address, the binary log in ROW format with GTID strict mode, semi-
synchronous replication in both directions (the master waits ``AFTER_SYNC`` for the
replica's acknowledgement; the replica syncs its relay log at every event), and a server
that starts read-only, without replication running and as a replica
(``init_rpl_role=SLAVE``): only the agent opens it for writes, once the node is master.

The role (``MariaDB``): ``become_replica`` of the peer's management address with
``MASTER_USE_GTID=slave_pos``, read-only; ``promote`` applies what the relay log holds
(bounded wait), stops replication and opens for writes; ``freeze`` (a planned switchover)
sets the master read-only and holds ``FLUSH TABLES WITH READ LOCK`` (which also stops
privileged writers) and returns its last position for the replica to wait for.

The replication account (``voxnode_repl``) exists for the peer's address only, requires
TLS, and its secret is derived from the pair key (``replication_secret``): both nodes
compute it, so it is never sent, never in the document and never logged (the statements
that set it run with ``sql_log_bin=0``, so they are not in the binary log either).

Every statement runs over the server's unix socket as root, with a time limit: a server
that hangs is an error the caller sees, never a stuck event loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiomysql
import pymysql

from ha.replication.gtid import BadPosition, Position, ahead_of, parse_position

# aiomysql turns every server note ("Slave already has been stopped") into a Python warning
warnings.filterwarnings("ignore", category=pymysql.Warning)

REPL_USER = "voxnode_repl"
DROP_IN_NAME = "voxnode-replication.cnf"
# How long a master waits for the replica's acknowledgement before it commits without it
# (semi-synchronous falls back to asynchronous, and says so in its status).
SEMI_SYNC_TIMEOUT_MS = 1000
STATEMENT_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2.0
_SECRET_INFO = b"voxnode mariadb replication account v1"

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class DatabaseError(Exception):
    """The server refused, failed or did not answer: the text is an operator sentence."""


def server_id_for(address: IP) -> int:
    """A server id from the management address: its low 32 bits (never 0, which MariaDB
    reserves). The two nodes share a subnet, so their ids differ."""
    value = int(address) & 0xFFFFFFFF
    return value or 1


def replication_secret(pair_key: bytes) -> str:
    """The replication account's password, derived from the pair key (both nodes compute
    the same; a new pair key gives a new one): 43 URL-safe characters."""
    digest = hmac.new(pair_key, _SECRET_INFO, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class TlsFiles:
    """The server's certificate, key and the CA the peer's certificate is checked with."""

    cert: str
    key: str
    ca: str


def render_server_config(server_id: int, report_host: str, tls: TlsFiles | None,
                         port: int = 3306) -> str:
    """The drop-in that makes the server one half of the pair (golden-tested)."""
    lines = [
        "# Written by voxnode-agent: the pair's replication settings. Edits are overwritten.",
        "[mariadb]",
        f"server_id = {server_id}",
        f"port = {port}",
        f"report_host = {report_host}",
        "log_bin = voxnode-bin",
        "log_slave_updates = ON",
        "binlog_format = ROW",
        "sync_binlog = 1",
        "innodb_flush_log_at_trx_commit = 1",
        "gtid_strict_mode = ON",
        "rpl_semi_sync_master_enabled = ON",
        "rpl_semi_sync_slave_enabled = ON",
        "rpl_semi_sync_master_wait_point = AFTER_SYNC",
        f"rpl_semi_sync_master_timeout = {SEMI_SYNC_TIMEOUT_MS}",
        "sync_relay_log = 1",
        "# the replica's position is kept with its data (gtid_slave_pos, an InnoDB table)",
        "# and applied in parallel where transactions allow it",
        "slave_parallel_threads = 4",
        "slave_parallel_mode = optimistic",
        "relay_log = voxnode-relay",
        "relay_log_recovery = ON",
        "init_rpl_role = SLAVE",
        "# a node starts read-only and without replication: the agent opens the master and",
        "# starts the replica once it knows the role",
        "read_only = ON",
        "skip_slave_start = ON",
        "slave_net_timeout = 10",
    ]
    if tls is not None:
        lines += [f"ssl_cert = {tls.cert}", f"ssl_key = {tls.key}", f"ssl_ca = {tls.ca}"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ReplicaStatus:
    """``SHOW SLAVE STATUS`` as far as the pair needs it."""

    master_host: str
    io_running: str  # Yes, No, Connecting
    sql_running: str
    seconds_behind: int | None
    io_error: str
    io_errno: int
    sql_error: str
    io_position: str  # Gtid_IO_Pos: what the relay log holds


@dataclass(frozen=True)
class DbStatus:
    read_only: bool
    binlog_position: str  # gtid_binlog_pos: what this server wrote to its binary log
    slave_position: str  # gtid_slave_pos: what it applied as a replica
    current_position: str  # gtid_current_pos
    semi_sync_master: bool  # Rpl_semi_sync_master_status: commits wait for the replica
    semi_sync_clients: int
    semi_sync_slave: bool
    replica: ReplicaStatus | None = None
    uptime_s: int = 0  # since the server started: smaller than before means it restarted

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "read_only": self.read_only, "binlog_position": self.binlog_position,
            "slave_position": self.slave_position,
            "current_position": self.current_position,
            "semi_sync_master": self.semi_sync_master,
            "semi_sync_clients": self.semi_sync_clients,
            "semi_sync_slave": self.semi_sync_slave, "replica": None,
        }
        if self.replica is not None:
            r = self.replica
            out["replica"] = {
                "master_host": r.master_host, "io_running": r.io_running,
                "sql_running": r.sql_running, "seconds_behind": r.seconds_behind,
                "io_error": r.io_error or None, "sql_error": r.sql_error or None,
                "io_position": r.io_position,
            }
        return out


def _quote(value: str) -> str:
    """A string literal for the statements that take no placeholders (CHANGE MASTER)."""
    escaped: str = pymysql.converters.escape_string(value)
    return "'" + escaped + "'"


class MariaDB:
    """The local server, reached over its unix socket as root (``unix_socket`` login)."""

    def __init__(self, socket: str, *, timeout: float = STATEMENT_TIMEOUT_S) -> None:
        self.socket = socket
        self.timeout = timeout
        self._freeze: aiomysql.Connection | None = None

    async def _connect(self) -> aiomysql.Connection:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                return await aiomysql.connect(unix_socket=self.socket, user="root",
                                              autocommit=True,
                                              connect_timeout=CONNECT_TIMEOUT_S)
        except (TimeoutError, OSError, pymysql.err.MySQLError) as exc:
            raise DatabaseError(f"the database server does not answer on {self.socket}: "
                                f"{_reason(exc)}") from None

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[aiomysql.Connection]:
        conn = await self._connect()
        try:
            yield conn
        finally:
            conn.close()

    async def _run(self, conn: aiomysql.Connection, sql: str,
                   args: tuple[Any, ...] | None = None, *, what: str,
                   limit_s: float | None = None) -> list[dict[str, Any]]:
        try:
            async with asyncio.timeout(self.timeout if limit_s is None else limit_s):
                async with conn.cursor(aiomysql.DictCursor) as cur:
                    await cur.execute(sql, args)
                    rows: list[dict[str, Any]] = list(await cur.fetchall() or [])
                    return rows
        except TimeoutError:
            conn.close()
            raise DatabaseError(f"{what}: the database server did not answer within "
                                f"{self.timeout if limit_s is None else limit_s:g} s") from None
        except (OSError, pymysql.err.MySQLError) as exc:
            raise DatabaseError(f"{what}: {_reason(exc)}") from None

    async def execute(self, *statements: str, what: str) -> None:
        async with self._connection() as conn:
            for sql in statements:
                await self._run(conn, sql, what=what)

    # --- what it reports ---------------------------------------------------------------

    async def status(self) -> DbStatus:
        async with self._connection() as conn:
            [row] = await self._run(conn, "SELECT @@global.read_only AS ro, "
                                    "@@global.gtid_binlog_pos AS b, "
                                    "@@global.gtid_slave_pos AS s, "
                                    "@@global.gtid_current_pos AS c", what="status")
            semi = {r["Variable_name"]: r["Value"] for r in await self._run(
                conn, "SHOW GLOBAL STATUS WHERE Variable_name LIKE 'Rpl_semi_sync_%' "
                "OR Variable_name = 'Uptime'", what="status")}
            slave = await self._run(conn, "SHOW SLAVE STATUS", what="status")
        replica = None
        if slave:
            s = slave[0]
            behind = s.get("Seconds_Behind_Master")
            replica = ReplicaStatus(
                master_host=str(s.get("Master_Host") or ""),
                io_running=str(s.get("Slave_IO_Running") or "No"),
                sql_running=str(s.get("Slave_SQL_Running") or "No"),
                seconds_behind=int(behind) if behind is not None else None,
                io_error=str(s.get("Last_IO_Error") or ""),
                io_errno=int(s.get("Last_IO_Errno") or 0),
                sql_error=str(s.get("Last_SQL_Error") or ""),
                io_position=str(s.get("Gtid_IO_Pos") or ""),
            )
        return DbStatus(
            read_only=bool(int(row["ro"])), binlog_position=str(row["b"] or ""),
            slave_position=str(row["s"] or ""), current_position=str(row["c"] or ""),
            semi_sync_master=semi.get("Rpl_semi_sync_master_status") == "ON",
            semi_sync_clients=int(semi.get("Rpl_semi_sync_master_clients") or 0),
            semi_sync_slave=semi.get("Rpl_semi_sync_slave_status") == "ON",
            replica=replica,
            uptime_s=int(semi.get("Uptime") or 0),
        )

    async def variables(self, names: tuple[str, ...]) -> dict[str, str]:
        """The server's global variables ``names`` (those it has)."""
        async with self._connection() as conn:
            rows = await self._run(conn, "SHOW GLOBAL VARIABLES WHERE Variable_name IN ("
                                   + ", ".join(["%s"] * len(names)) + ")", names,
                                   what="reading the server's settings")
        return {str(r["Variable_name"]): str(r["Value"]) for r in rows}

    # --- the replication account -------------------------------------------------------

    async def ensure_account(self, peer: IP, secret: str, *, tls: bool) -> None:
        """``voxnode_repl`` for the peer's address only, with ``secret``: created, or its
        password and grants brought up to date. Not written to the binary log."""
        host = str(peer)
        require = "REQUIRE X509" if tls else "REQUIRE NONE"
        async with self._connection() as conn:
            await self._run(conn, "SET SESSION sql_log_bin = 0", what="the replication account")
            await self._run(conn, f"CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s {require}",
                            (REPL_USER, host, secret), what="the replication account")
            await self._run(conn, f"ALTER USER %s@%s IDENTIFIED BY %s {require}",
                            (REPL_USER, host, secret), what="the replication account")
            await self._run(conn, "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO %s@%s",
                            (REPL_USER, host), what="the replication account")
            # accounts of an earlier peer address go: the account is the peer's alone
            old = await self._run(conn, "SELECT Host FROM mysql.user WHERE User = %s AND "
                                  "Host <> %s", (REPL_USER, host),
                                  what="the replication account")
            for r in old:
                await self._run(conn, "DROP USER %s@%s", (REPL_USER, r["Host"]),
                                what="the replication account")

    # --- the role ----------------------------------------------------------------------

    async def become_replica(self, master: IP, port: int, secret: str,
                             tls: TlsFiles | None) -> None:
        """Read-only, then replicate from ``master`` from where this server is: its own
        last transaction if it was master (``gtid_slave_pos`` follows ``gtid_current_pos``)."""
        await self.unfreeze()
        change = [f"MASTER_HOST={_quote(str(master))}", f"MASTER_PORT={int(port)}",
                  f"MASTER_USER={_quote(REPL_USER)}", f"MASTER_PASSWORD={_quote(secret)}",
                  "MASTER_USE_GTID=slave_pos", "MASTER_CONNECT_RETRY=1",
                  "MASTER_HEARTBEAT_PERIOD=1"]
        if tls is not None:
            change += ["MASTER_SSL=1", f"MASTER_SSL_CA={_quote(tls.ca)}",
                       f"MASTER_SSL_CERT={_quote(tls.cert)}",
                       f"MASTER_SSL_KEY={_quote(tls.key)}", "MASTER_SSL_VERIFY_SERVER_CERT=1"]
        async with self._connection() as conn:
            what = f"replicating from {master}"
            await self._run(conn, "SET GLOBAL read_only = 1", what=what)
            await self._run(conn, "STOP SLAVE", what=what)
            [row] = await self._run(conn, "SELECT @@global.gtid_binlog_pos AS b, "
                                    "@@global.gtid_slave_pos AS s", what=what)
            if ahead_of(_position(str(row["b"] or "")), _position(str(row["s"] or ""))):
                # it wrote transactions as master: it goes on from its own last one
                await self._run(conn, "SET GLOBAL gtid_slave_pos = @@global.gtid_current_pos",
                                what=what)
            await self._run(conn, "CHANGE MASTER TO " + ", ".join(change), what=what)
            await self._run(conn, "START SLAVE", what=what)

    async def apply_relay_log(self, within_s: float, position: str | None = None
                              ) -> str | None:
        """Wait until the applier has applied ``position`` (default: all the relay log
        holds), looking at it every second: None once done, else why not (the applier
        stopped on an error, or ``within_s`` ran out)."""
        deadline = time.monotonic() + within_s
        async with self._connection() as conn:
            what = "applying the relay log"
            while True:
                slave = await self._run(conn, "SHOW SLAVE STATUS", what=what)
                if not slave:
                    return None
                s = slave[0]
                target = position or str(s.get("Gtid_IO_Pos") or "")
                if not target:
                    return None
                if s.get("Slave_SQL_Running") != "Yes":
                    if s.get("Last_SQL_Error"):
                        [row] = await self._run(conn, "SELECT @@global.gtid_slave_pos AS p",
                                                what=what)
                        return (f"the applier stopped on an error: {s['Last_SQL_Error']} "
                                f"(received up to {target}, applied {row['p'] or 'nothing'})")
                    await self._run(conn, "START SLAVE SQL_THREAD", what=what)
                left = deadline - time.monotonic()
                if left <= 0:
                    return f"{target} was not applied within {within_s:g} s"
                [row] = await self._run(conn, "SELECT MASTER_GTID_WAIT(%s, %s) AS w",
                                        (target, min(1.0, left)), what=what,
                                        limit_s=min(1.0, left) + self.timeout)
                if int(row["w"]) == 0:
                    return None

    async def open_for_writes(self) -> str:
        """Stop replicating (for good: the relay log goes) and open for writes. The
        position it opened at (the fork point)."""
        async with self._connection() as conn:
            what = "opening the database for writes"
            await self._run(conn, "STOP SLAVE", what=what)
            await self._run(conn, "RESET SLAVE ALL", what=what)
            await self._run(conn, "SET GLOBAL read_only = 0", what=what)
            [row] = await self._run(conn, "SELECT @@global.gtid_current_pos AS c", what=what)
            return str(row["c"] or "")

    async def promote(self, apply_within_s: float) -> tuple[str, str | None]:
        """Apply what the relay log holds (up to ``apply_within_s``), then open for writes:
        the fork point, and why the relay log was not all applied (None: it was)."""
        problem = await self.apply_relay_log(apply_within_s)
        return await self.open_for_writes(), problem

    async def freeze(self) -> str:
        """A planned switchover's first step on the master: read-only, then ``FLUSH TABLES
        WITH READ LOCK`` held on a connection of its own (until ``unfreeze`` or the next
        role), so no writer, privileged or not, commits after the position returned."""
        await self.unfreeze()
        conn = await self._connect()
        what = "making the database read-only"
        try:
            await self._run(conn, "SET GLOBAL read_only = 1", what=what)
            await self._run(conn, "FLUSH TABLES WITH READ LOCK", what=what)
            [row] = await self._run(conn, "SELECT @@global.gtid_binlog_pos AS b", what=what)
        except DatabaseError:
            conn.close()
            raise
        self._freeze = conn
        return str(row["b"] or "")

    async def unfreeze(self) -> None:
        conn, self._freeze = self._freeze, None
        if conn is not None:
            try:
                async with asyncio.timeout(self.timeout):
                    async with conn.cursor() as cur:
                        await cur.execute("UNLOCK TABLES")
            except (TimeoutError, OSError, pymysql.err.MySQLError):
                pass  # closing the connection releases the lock as well
            conn.close()

    async def set_read_only(self, read_only: bool) -> None:
        await self.execute(f"SET GLOBAL read_only = {1 if read_only else 0}",
                           what="setting read-only" if read_only else "opening for writes")


def _position(text: str) -> Position:
    try:
        return parse_position(text)
    except BadPosition as exc:
        raise DatabaseError(f"the server reported a GTID position it cannot be: {exc}") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, pymysql.err.MySQLError) and len(exc.args) >= 2:
        return f"{exc.args[1]} (error {exc.args[0]})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def quote_name(name: str) -> str:
    """An identifier quoted for SQL (``pbx`` → `pbx`, a backtick doubled)."""
    return "`" + name.replace("`", "``") + "`"


SYSTEM_DATABASES = ("mysql", "information_schema", "performance_schema", "sys")


async def user_databases(db: MariaDB) -> list[str]:
    """The application's databases on this server (not the server's own)."""
    async with db._connection() as conn:
        rows = await db._run(conn, "SELECT schema_name AS n FROM information_schema.schemata "
                             "WHERE schema_name NOT IN (%s, %s, %s, %s) ORDER BY 1",
                             SYSTEM_DATABASES, what="listing the databases")
    return [str(r["n"]) for r in rows]


async def count_rows(db: MariaDB, tables: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """``SELECT COUNT(*)`` of each (database, table), in one connection; a table that does
    not exist counts -1."""
    counts: dict[tuple[str, str], int] = {}
    async with db._connection() as conn:
        for schema, table in tables:
            try:
                [row] = await db._run(
                    conn, f"SELECT COUNT(*) AS n FROM {quote_name(schema)}.{quote_name(table)}",
                    what=f"counting the rows of {schema}.{table}", limit_s=600)
                counts[(schema, table)] = int(row["n"])
            except DatabaseError as exc:
                if "1146" not in exc.args[0] and "doesn't exist" not in exc.args[0]:
                    raise
                counts[(schema, table)] = -1
    return counts


async def restart_from(db: MariaDB, position: str) -> None:
    """After a full copy: this server's own binary log emptied (its history is the
    master's now) and the replica set to go on from ``position``, the copy's."""
    async with db._connection() as conn:
        await db._run(conn, "STOP SLAVE", what="stopping replication")
        await db._run(conn, "RESET MASTER", what="emptying this node's binary log")
        await db._run(conn, "SET GLOBAL gtid_slave_pos = %s", (position,),
                      what="setting the replica's position to the copy's")
