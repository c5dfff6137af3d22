"""The HTTP API nodes use: activation by emailed code, verify, check, release.

``POST /v1/activations`` {serial, email, fingerprint} → a 6-digit code is emailed to the
order's address (valid 15 minutes, locked after 5 wrong tries); ``POST
/v1/activations/verify`` {serial, fingerprint, code} → a licence signed for that
fingerprint; ``POST /v1/check`` {serial, fingerprint} → the newest licence version;
``POST /v1/release`` {serial, fingerprint} → the serial is free for another node and the
order's address gets a notice. A serial active on one fingerprint cannot be activated on
another until released. Errors: ``{"error": {"code", "message"}}``. Codes are stored
hashed and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.licence.document import Licence, sign_licence
from license_server.db import Database, Serial
from license_server.mail import Mailer, MailError

log = logging.getLogger("voxnode.license_server")

CODE_TTL_S = 15 * 60
MAX_TRIES = 5
_FIELD_MAX = 256


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _hash(serial: str, code: str) -> str:
    return hashlib.sha256(f"{serial}:{code}".encode()).hexdigest()


def _ttl_text(seconds: int) -> str:
    return f"{seconds // 60} minutes" if seconds % 60 == 0 else f"{seconds} s"


def _mask(email: str) -> str:
    user, _, domain = email.partition("@")
    return f"{user[:1]}***@{domain}"


class LicenceService:
    def __init__(self, db: Database, key: Ed25519PrivateKey, mailer: Mailer,
                 clock: Callable[[], float] = time.time, code_ttl: int = CODE_TTL_S) -> None:
        self.db, self.key, self.mailer, self.clock = db, key, mailer, clock
        self.code_ttl = code_ttl

    def _serial(self, serial: str) -> Serial:
        found = self.db.serial(serial)
        if found is None:
            raise ApiError(404, "unknown_serial", f"serial {serial} is not known to the "
                           "licence server")
        if found.revoked_at is not None:
            raise ApiError(410, "revoked", f"serial {serial} was revoked by the vendor")
        return found

    def sign(self, s: Serial, fingerprint: str) -> str:
        return sign_licence(Licence(
            serial=s.serial, company=s.company, email=s.email, modules=s.modules,
            issued_at=int(self.clock()), valid_until=s.valid_until, version=s.version,
            fingerprint=fingerprint), self.key)

    async def activate(self, serial: str, email: str, fingerprint: str) -> dict[str, Any]:
        s = self._serial(serial)
        if email.strip().lower() != s.email.lower():
            self.db.audit("node", serial, "activate-refused", "email mismatch")
            raise ApiError(403, "email_mismatch", "the email does not match the one given "
                           "with the order of this serial")
        active = self.db.active_on(serial)
        if active is not None and active["fingerprint"] != fingerprint:
            self.db.audit("node", serial, "activate-refused", "active on another node")
            raise ApiError(409, "active_elsewhere", f"serial {serial} is active on another "
                           "node; remove the licence there first (voxnode license remove)")
        code = f"{secrets.randbelow(10**6):06d}"
        now = self.clock()
        await self.mailer.send(s.email, f"Verification code for licence {serial}",
                               f"Your verification code is {code}.\nIt is valid for "
                               f"{_ttl_text(self.code_ttl)}.\n")
        with self.db.conn:
            self.db.conn.execute("UPDATE activations SET state = 'superseded' WHERE serial = ? "
                                 "AND fingerprint = ? AND state = 'pending'",
                                 (serial, fingerprint))
            self.db.conn.execute(
                "INSERT INTO activations (serial, fingerprint, state, code_hash, code_expires, "
                "requested_at) VALUES (?, ?, 'pending', ?, ?, ?)",
                (serial, fingerprint, _hash(serial, code), now + self.code_ttl, now))
            self.db.audit("node", serial, "code-sent", f"fingerprint {fingerprint}")
        return {"sent_to": _mask(s.email), "expires_in": self.code_ttl}

    def verify(self, serial: str, fingerprint: str, code: str) -> dict[str, Any]:
        s = self._serial(serial)
        row = self.db.pending(serial, fingerprint)
        if row is None:
            raise ApiError(404, "no_activation", "no activation is pending for this serial on "
                           "this node; request a code first")
        if row["tries"] >= MAX_TRIES:
            raise ApiError(423, "code_locked", f"the verification code is locked after "
                           f"{MAX_TRIES} wrong tries; request a new code")
        if self.clock() > row["code_expires"]:
            raise ApiError(410, "code_expired", f"the verification code has expired (codes are "
                           f"valid for {_ttl_text(self.code_ttl)}); request a new one")
        if not hmac.compare_digest(row["code_hash"], _hash(serial, code)):
            tries = row["tries"] + 1
            with self.db.conn:
                self.db.conn.execute("UPDATE activations SET tries = ? WHERE id = ?",
                                     (tries, row["id"]))
                self.db.audit("node", serial, "wrong-code", f"try {tries} of {MAX_TRIES}")
            left = MAX_TRIES - tries
            if left == 0:
                raise ApiError(423, "code_locked", f"the verification code is locked after "
                               f"{MAX_TRIES} wrong tries; request a new code")
            raise ApiError(403, "wrong_code", f"the verification code is wrong ({left} "
                           f"{'try' if left == 1 else 'tries'} left)")
        active = self.db.active_on(serial)
        if active is not None and active["fingerprint"] != fingerprint:
            raise ApiError(409, "active_elsewhere", f"serial {serial} is active on another "
                           "node; remove the licence there first (voxnode license remove)")
        with self.db.conn:
            self.db.conn.execute("UPDATE activations SET state = 'replaced' WHERE serial = ? "
                                 "AND state = 'active'", (serial,))
            self.db.conn.execute("UPDATE activations SET state = 'active', code_hash = NULL, "
                                 "activated_at = ? WHERE id = ?", (self.clock(), row["id"]))
            self.db.audit("node", serial, "activated", f"fingerprint {fingerprint}")
        return {"licence": self.sign(s, fingerprint)}

    def _active_here(self, serial: str, fingerprint: str) -> Serial:
        s = self._serial(serial)
        active = self.db.active_on(serial)
        if active is None or active["fingerprint"] != fingerprint:
            raise ApiError(409, "not_active", f"serial {serial} is not active on this node")
        return s

    def check(self, serial: str, fingerprint: str) -> dict[str, Any]:
        s = self._active_here(serial, fingerprint)
        self.db.audit("node", serial, "check", f"version {s.version}")
        return {"version": s.version, "licence": self.sign(s, fingerprint)}

    async def release(self, serial: str, fingerprint: str) -> dict[str, Any]:
        s = self._active_here(serial, fingerprint)
        with self.db.conn:
            self.db.conn.execute("UPDATE activations SET state = 'released', released_at = ? "
                                 "WHERE serial = ? AND state = 'active'", (self.clock(), serial))
            self.db.audit("node", serial, "released", f"fingerprint {fingerprint}")
        try:
            await self.mailer.send(s.email, f"Licence {serial} removed from a node",
                                   f"Licence {serial} was removed from a node. That node keeps "
                                   "working unlicensed for 30 days; the serial can now be "
                                   "activated on another node.\n")
        except MailError as exc:  # the release stands; the vendor sees it in the audit log
            self.db.audit("server", serial, "notice-failed", str(exc))
            return {"released": True, "notice_sent_to": None}
        return {"released": True, "notice_sent_to": _mask(s.email)}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SERVICE: web.AppKey[LicenceService] = web.AppKey("service", LicenceService)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response({"error": {"code": exc.code, "message": exc.message}},
                                 status=exc.status)
    except MailError as exc:
        log.error("mail: %s", exc)
        return web.json_response({"error": {"code": "mail_failed", "message": "the licence "
                                            "server could not send the email; try again later"}},
                                 status=502)
    except web.HTTPException as exc:
        return web.json_response({"error": {"code": "not_found", "message": exc.reason}},
                                 status=exc.status)


async def _fields(request: web.Request, *names: str) -> list[str]:
    try:
        data = await request.json()
    except ValueError:
        raise ApiError(400, "bad_request", "the request body is not JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", "the request body is not a JSON object")
    out = []
    for name in names:
        value = data.get(name)
        if not isinstance(value, str) or not value.strip() or len(value) > _FIELD_MAX:
            raise ApiError(400, "bad_request", f"'{name}' is required (a string)")
        out.append(value.strip())
    return out


async def _activate(request: web.Request) -> web.Response:
    serial, email, fp = await _fields(request, "serial", "email", "fingerprint")
    return web.json_response(await request.app[SERVICE].activate(serial, email, fp), status=202)


async def _verify(request: web.Request) -> web.Response:
    serial, fp, code = await _fields(request, "serial", "fingerprint", "code")
    return web.json_response(request.app[SERVICE].verify(serial, fp, code))


async def _check(request: web.Request) -> web.Response:
    serial, fp = await _fields(request, "serial", "fingerprint")
    return web.json_response(request.app[SERVICE].check(serial, fp))


async def _release(request: web.Request) -> web.Response:
    serial, fp = await _fields(request, "serial", "fingerprint")
    return web.json_response(await request.app[SERVICE].release(serial, fp))


def make_app(service: LicenceService) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=64 * 1024)
    app[SERVICE] = service
    app.router.add_post("/v1/activations", _activate)
    app.router.add_post("/v1/activations/verify", _verify)
    app.router.add_post("/v1/check", _check)
    app.router.add_post("/v1/release", _release)
    return app
