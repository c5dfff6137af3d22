"""The licence document: one format, signed by the vendor's server, verified by the agent.

A licence file is JSON: ``{"format_version": 1, "licence": {...}, "signature": "<b64>"}``.
The signature is Ed25519 over the *canonical* JSON of the ``licence`` object (keys sorted,
no spaces, UTF-8), so any change of one byte of the payload — or of the signature — makes
verification fail. The agent verifies offline with the vendor public key it ships with
(PEM, SubjectPublicKeyInfo); the server signs with the matching private key (PEM, PKCS8).

This module is imported by both sides; it must not import anything of the agent's
runtime (only ``cryptography`` and the standard library).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT_VERSION = 1
MODULE_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,39}$")
MAX_LIMIT = 1_000_000


class LicenceDocumentError(ValueError):
    """The text is not a valid licence of this vendor; ``str()`` is the operator sentence."""


@dataclass(frozen=True, order=True)
class Module:
    """A licensed module: enabled or not, and for counted features the number allowed."""

    name: str
    enabled: bool = True
    limit: int | None = None  # None: not counted

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "enabled": self.enabled, "limit": self.limit}


@dataclass(frozen=True)
class Licence:
    serial: str
    company: str
    email: str
    modules: tuple[Module, ...]
    issued_at: int  # unix seconds
    valid_until: int | None  # unix seconds; None: perpetual
    version: int  # grows with every change the vendor makes to the serial
    fingerprint: str  # the node it is bound to (agent.licence.fingerprint)
    format_version: int = field(default=FORMAT_VERSION)

    @property
    def enabled_modules(self) -> frozenset[str]:
        return frozenset(m.name for m in self.modules if m.enabled)

    @property
    def limits(self) -> dict[str, int]:
        return {m.name: m.limit for m in self.modules if m.enabled and m.limit is not None}

    def module(self, name: str) -> Module | None:
        return next((m for m in self.modules if m.name == name), None)

    def payload(self) -> dict[str, Any]:
        return {
            "serial": self.serial, "company": self.company, "email": self.email,
            "modules": [m.to_dict() for m in sorted(self.modules)],
            "issued_at": self.issued_at, "valid_until": self.valid_until,
            "version": self.version, "fingerprint": self.fingerprint,
        }


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_licence(licence: Licence, key: Ed25519PrivateKey) -> str:
    """The licence file text (what the server sends and the agent stores)."""
    payload = licence.payload()
    signature = key.sign(canonical_json(payload))
    return json.dumps({"format_version": FORMAT_VERSION, "licence": payload,
                       "signature": base64.b64encode(signature).decode()}, indent=2) + "\n"


def verify_licence(text: str | bytes, key: Ed25519PublicKey) -> Licence:
    """Parse and verify a licence file; LicenceDocumentError says what is wrong."""
    try:
        outer = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise LicenceDocumentError("the licence is not JSON (the file is damaged)") from None
    if not isinstance(outer, dict):
        raise LicenceDocumentError("the licence is not a JSON object (the file is damaged)")
    version = outer.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise LicenceDocumentError("the licence has no format_version (the file is damaged)")
    if version > FORMAT_VERSION:
        raise LicenceDocumentError(f"the licence has format_version {version}, newer than this "
                                   f"agent understands ({FORMAT_VERSION}); update voxnode")
    payload, signature = outer.get("licence"), outer.get("signature")
    if not isinstance(payload, dict) or not isinstance(signature, str):
        raise LicenceDocumentError("the licence has no 'licence' object or no 'signature'")
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, canonical_json(payload))
    except (InvalidSignature, binascii.Error, ValueError):
        raise LicenceDocumentError(
            "the licence signature does not verify: the licence was altered or was not "
            "issued by this vendor") from None
    return _from_payload(payload)


def _from_payload(p: dict[str, Any]) -> Licence:
    """A signed payload → Licence; shapes are still checked (a vendor bug must not crash)."""
    def need(name: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
        value = p.get(name)
        if value is None and optional:
            return None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise LicenceDocumentError(f"the licence field '{name}' is missing or malformed")
        return value

    modules = []
    raw_modules = need("modules", list)
    for item in raw_modules:
        if not isinstance(item, dict) or not MODULE_RE.match(str(item.get("name", ""))):
            raise LicenceDocumentError("the licence field 'modules' is malformed")
        limit = item.get("limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                                  or not 0 <= limit <= MAX_LIMIT):
            raise LicenceDocumentError(f"the licence limit of {item['name']} is malformed")
        modules.append(Module(str(item["name"]), bool(item.get("enabled", True)), limit))
    return Licence(
        serial=need("serial", str), company=need("company", str), email=need("email", str),
        modules=tuple(sorted(modules)), issued_at=need("issued_at", int),
        valid_until=need("valid_until", int, optional=True), version=need("version", int),
        fingerprint=need("fingerprint", str),
    )


# --- modules given as text (vendor CLI) -------------------------------------------------------


def parse_modules(text: str) -> tuple[Module, ...]:
    """``PBX,WEB_CLIENT_SMART=10`` → modules; ValueError with the operator sentence."""
    modules: dict[str, Module] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, limit_text = part.partition("=")
        name = name.strip()
        if not MODULE_RE.match(name):
            raise ValueError(f"'{name}' is not a module name (upper case, digits and '_', "
                             "like PBX)")
        if name in modules:
            raise ValueError(f"module {name} is given twice")
        limit = None
        if sep:
            if not limit_text.strip().isdigit() or int(limit_text) > MAX_LIMIT:
                raise ValueError(f"the limit of {name} must be a whole number from 0 to "
                                 f"{MAX_LIMIT} (got '{limit_text}')")
            limit = int(limit_text)
        modules[name] = Module(name, True, limit)
    if not modules:
        raise ValueError("give at least one module, like PBX or WEB_CLIENT_SMART=10")
    return tuple(sorted(modules.values()))


# --- keys -------------------------------------------------------------------------------------


def new_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise LicenceDocumentError("not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise LicenceDocumentError("not an Ed25519 private key")
    return key


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise LicenceDocumentError("not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise LicenceDocumentError("not an Ed25519 public key")
    return key
