"""`voxnode-license-server`: serve the node API, make the signing key, manage serials.

    voxnode-license-server keygen --out FILE            (prints the public key path)
    voxnode-license-server serve --db URL --listen HOST:PORT --signing-key FILE
                                 --smtp HOST:PORT [--smtp-from ADDR]
                                 [--tls-cert FILE --tls-key FILE]
    voxnode-license-server serial create --email E --modules NAME[=LIMIT],… [--company C]
                                         [--valid-days N]       (prints the serial)
    voxnode-license-server serial list|show SERIAL|revoke SERIAL|release SERIAL
    voxnode-license-server serial modules SERIAL --modules … [--valid-days N]
    voxnode-license-server activations [SERIAL] | audit [SERIAL]

``--db`` defaults to $VOXNODE_LICENSE_DB or the embedded SQLite file; every command
takes ``--json``. Exit status: 0 ok, 2 usage, 3 bad input or unknown serial, 1 other.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import ssl
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.licence.document import (
    LicenceDocumentError,
    load_private_key,
    new_private_key,
    parse_modules,
    private_key_pem,
    public_key_pem,
)
from license_server.app import LicenceService, make_app
from license_server.db import DEFAULT_DB_URL, Database, DatabaseError, Serial
from license_server.mail import Mailer

_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


class UsageError(Exception):
    pass


def _hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{what} '{text}' is not HOST:PORT (e.g. 127.0.0.1:8443)")
    return host, int(port)


def new_serial() -> str:
    return "VX-" + "-".join("".join(secrets.choice(_ALPHABET) for _ in range(4))
                            for _ in range(3))


def _valid_until(days: int | None) -> int | None:
    if days is None:
        return None
    if days < 1:
        raise UsageError("--valid-days must be at least 1 (leave it out for perpetual)")
    return int(time.time()) + days * 86400


def _out(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


def cmd_keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists():
        raise UsageError(f"{out} exists; refusing to overwrite a signing key")
    key = new_private_key()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_key_pem(key))
    pub = out.with_name(out.name + ".pub")
    pub.write_bytes(public_key_pem(key.public_key()))
    print(pub)
    return 0


def _modules_text(s: Serial) -> str:
    return ",".join(m.name + (f"={m.limit}" if m.limit is not None else "") for m in s.modules)


def _serial_or_fail(db: Database, serial: str) -> Serial:
    found = db.serial(serial)
    if found is None:
        raise LookupError(f"serial {serial} is not known")
    return found


def cmd_serial(args: argparse.Namespace, db: Database) -> int:
    if args.action == "create":
        try:
            modules = parse_modules(args.modules)
        except ValueError as exc:
            raise UsageError(f"--modules: {exc}") from None
        if "@" not in args.email:
            raise UsageError(f"--email '{args.email}' is not an email address")
        s = Serial(new_serial(), args.company or args.email.split("@", 1)[1], args.email,
                   modules, _valid_until(args.valid_days), 1, time.time(), None)
        db.add_serial(s)
        _out(args, s.to_dict(), s.serial)
    elif args.action == "list":
        rows = db.serials()
        _out(args, [s.to_dict() for s in rows], "\n".join(
            f"{s.serial}  {s.email}  v{s.version}  {_modules_text(s)}"
            f"{'  REVOKED' if s.revoked_at else ''}" for s in rows))
    elif args.action == "show":
        s = _serial_or_fail(db, args.serial)
        data = {**s.to_dict(), "activations": db.activations(s.serial)}
        _out(args, data, json.dumps(data, indent=2))
    elif args.action == "revoke":
        _serial_or_fail(db, args.serial)
        db.revoke(args.serial)
        _out(args, {"revoked": args.serial}, f"{args.serial} revoked")
    elif args.action == "release":
        _serial_or_fail(db, args.serial)
        released = db.release(args.serial)
        _out(args, {"released": args.serial if released else None},
             f"{args.serial} released" if released else f"{args.serial} was active nowhere")
    elif args.action == "modules":
        s = _serial_or_fail(db, args.serial)
        try:
            modules = parse_modules(args.modules)
        except ValueError as exc:
            raise UsageError(f"--modules: {exc}") from None
        db.set_modules(s.serial, modules, _valid_until(args.valid_days),
                       keep_expiry=args.valid_days is None)
        after = _serial_or_fail(db, s.serial)
        _out(args, after.to_dict(), f"{s.serial} is now version {after.version}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    host, port = _hostport(args.listen, "--listen")
    smtp_host, smtp_port = _hostport(args.smtp, "--smtp")
    try:
        key = load_private_key(Path(args.signing_key).read_bytes())
    except OSError as exc:
        raise UsageError(f"--signing-key {args.signing_key}: {exc.strerror}") from None
    except LicenceDocumentError as exc:
        raise UsageError(f"--signing-key {args.signing_key}: {exc}") from None
    context = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise UsageError("give both --tls-cert and --tls-key (or neither, behind a proxy)")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    db = Database(args.db)
    if not 1 <= args.code_ttl <= 86400:
        raise UsageError("--code-ttl must be 1-86400 seconds")
    service = LicenceService(db, key, Mailer(smtp_host, smtp_port, args.smtp_from),
                             code_ttl=args.code_ttl)
    scheme = "https" if context else "http"
    print(f"voxnode-license-server listening on {scheme}://{host}:{port}", flush=True)
    try:
        web.run_app(make_app(service), host=host, port=port, ssl_context=context,
                    print=None, access_log=None)
    finally:
        db.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voxnode-license-server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=os.environ.get("VOXNODE_LICENSE_DB", DEFAULT_DB_URL),
                        help="database URL (default $VOXNODE_LICENSE_DB or %(default)s)")
    common.add_argument("--json", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    k = sub.add_parser("keygen", help="make the Ed25519 signing key (FILE) and FILE.pub")
    k.add_argument("--out", required=True)
    s = sub.add_parser("serve", parents=[common], help="serve the node API")
    s.add_argument("--listen", default="127.0.0.1:8443", metavar="HOST:PORT")
    s.add_argument("--signing-key", required=True, metavar="FILE")
    s.add_argument("--smtp", default="127.0.0.1:25", metavar="HOST:PORT")
    s.add_argument("--smtp-from", default="licences@voxnode.example")
    s.add_argument("--tls-cert", metavar="FILE")
    s.add_argument("--tls-key", metavar="FILE")
    s.add_argument("--code-ttl", type=int, default=900, metavar="SECONDS",
                   help="how long a verification code is valid (default 900: 15 minutes)")
    serial = sub.add_parser("serial", help="manage serials")
    ss = serial.add_subparsers(dest="action", required=True)
    c = ss.add_parser("create", parents=[common])
    c.add_argument("--email", required=True)
    c.add_argument("--modules", required=True, metavar="NAME[=LIMIT],…")
    c.add_argument("--company", default="")
    c.add_argument("--valid-days", type=int)
    ss.add_parser("list", parents=[common])
    for name in ("show", "revoke", "release"):
        ss.add_parser(name, parents=[common]).add_argument("serial")
    m = ss.add_parser("modules", parents=[common], help="change modules (version + 1)")
    m.add_argument("serial")
    m.add_argument("--modules", required=True)
    m.add_argument("--valid-days", type=int)
    for name in ("activations", "audit"):
        sub.add_parser(name, parents=[common]).add_argument("serial", nargs="?")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "keygen":
            return cmd_keygen(args)
        if args.command == "serve":
            return cmd_serve(args)
        db = Database(args.db)
        try:
            if args.command == "serial":
                return cmd_serial(args, db)
            rows = (db.activations(args.serial) if args.command == "activations"
                    else db.audit_log(args.serial))
            _out(args, rows, "\n".join(json.dumps(r) for r in rows))
            return 0
        finally:
            db.close()
    except (UsageError, DatabaseError, LookupError) as exc:
        print(f"voxnode-license-server: error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 1


if __name__ == "__main__":
    sys.exit(main())
