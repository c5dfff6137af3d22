"""The certificates and keys of an MCS bundle, checked with ``cryptography`` (pure).

Owns the checks on the PEM material: the CA certificates parse and are CAs; the client
certificate parses, is in date and was issued by one of them; the private key parses,
is not encrypted and belongs to the certificate; an OpenVPN static key (tls-auth,
tls-crypt) is 2048 bits of hex. Each piece is labelled by where it came from
(``mcs.ovpn:12: <cert>``) so a problem names the line and the block or file.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from agent.errors import Problem

Labelled = tuple[str, bytes]  # ("mcs.ovpn:12: <cert>", PEM bytes)
_STATIC_KEY_RE = re.compile(
    r"-----BEGIN OpenVPN Static key V1-----\s*(?P<hex>[0-9a-fA-F\s]+?)\s*"
    r"-----END OpenVPN Static key V1-----")
ENCRYPTED_KEY = ("the private key is encrypted, and a service cannot type its passphrase: "
                 "decrypt it (`openssl pkey -in client.key -out client-clear.key`) and upload "
                 "the bundle again")


@dataclass
class PemMaterial:
    ca: Labelled
    cert: Labelled
    key: Labelled
    tls_auth: Labelled | None = None
    tls_crypt: Labelled | None = None
    key_direction: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)  # filled in by check_material


def _split(label: str) -> tuple[str, str]:
    """``"mcs.ovpn:12: <cert>"`` -> (path ``mcs.ovpn:12``, subject ``<cert>``)."""
    path, _, what = label.partition(": ")
    return path, what


def _problem(label: str, message: str) -> Problem:
    path, what = _split(label)
    return Problem(path, f"{what}: {message}")


def common_name(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else name.rfc4514_string()


def _when(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _in_date(label: str, cert: x509.Certificate, now: dt.datetime) -> list[Problem]:
    if cert.not_valid_after_utc < now:
        return [_problem(label, f"the certificate '{common_name(cert.subject)}' expired on "
                                f"{_when(cert.not_valid_after_utc)}")]
    if cert.not_valid_before_utc > now:
        return [_problem(label, f"the certificate '{common_name(cert.subject)}' is not valid "
                                f"before {_when(cert.not_valid_before_utc)} (check the "
                                "node's clock)")]
    return []


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def check_material(m: PemMaterial, now: dt.datetime) -> list[Problem]:
    """Every problem with the material; fills ``m.summary`` with what was read."""
    problems: list[Problem] = []
    cas: list[x509.Certificate] = []
    try:
        cas = x509.load_pem_x509_certificates(m.ca[1])
    except ValueError:
        problems.append(_problem(m.ca[0], "not a PEM certificate (expected -----BEGIN "
                                          "CERTIFICATE-----)"))
    for ca in cas:
        if not _is_ca(ca):
            problems.append(_problem(m.ca[0], f"'{common_name(ca.subject)}' is not a CA "
                                              "certificate (no basicConstraints CA:TRUE)"))
        problems += _in_date(m.ca[0], ca, now)
    cert: x509.Certificate | None = None
    try:
        cert = x509.load_pem_x509_certificate(m.cert[1])
    except ValueError:
        problems.append(_problem(m.cert[0], "not a PEM certificate (expected -----BEGIN "
                                            "CERTIFICATE-----)"))
    if cert is not None:
        problems += _in_date(m.cert[0], cert, now)
        if cas and not any(_issued_by(cert, ca) for ca in cas):
            problems.append(_problem(m.cert[0], f"the certificate '{common_name(cert.subject)}'"
                                                " was not issued by the bundle's CA"))
        m.summary.update({
            "subject_cn": common_name(cert.subject), "issuer_cn": common_name(cert.issuer),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "days_left": (cert.not_valid_after_utc - now).days,
            "fingerprint_sha256": cert.fingerprint(hashes.SHA256()).hex(":"),
        })
    problems += _check_key(m, cert)
    for label, _name in ((m.tls_auth, "tls-auth"), (m.tls_crypt, "tls-crypt")):
        if label is not None and not _static_key_ok(label[1]):
            problems.append(_problem(label[0], "not an OpenVPN static key (expected -----BEGIN "
                                               "OpenVPN Static key V1----- and 256 bytes of "
                                               "hex)"))
    if m.key_direction is not None and m.key_direction not in ("0", "1"):
        problems.append(_problem(m.tls_auth[0] if m.tls_auth else m.key[0],
                                 f"key-direction '{m.key_direction}' must be 0 or 1"))
    return problems


def _check_key(m: PemMaterial, cert: x509.Certificate | None) -> list[Problem]:
    try:
        key = serialization.load_pem_private_key(m.key[1], password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        return [_problem(m.key[0], ENCRYPTED_KEY)]
    except (ValueError, UnsupportedAlgorithm):
        return [_problem(m.key[0], "not a PEM private key (expected -----BEGIN PRIVATE KEY----- "
                                   "or -----BEGIN RSA/EC PRIVATE KEY-----)")]
    if cert is None:
        return []
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        return [_problem(m.key[0], f"the private key does not belong to the certificate "
                                   f"'{common_name(cert.subject)}'")]
    return []


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _static_key_ok(data: bytes) -> bool:
    match = _STATIC_KEY_RE.search(data.decode(errors="replace"))
    if match is None:
        return False
    lines = [ln for ln in match["hex"].split() if ln]
    return len("".join(lines)) == 512


def certificate_summary(pem: bytes, now: dt.datetime) -> dict[str, Any] | None:
    """Subject, issuer and expiry of an installed client certificate (for the status)."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    return {"subject_cn": common_name(cert.subject), "issuer_cn": common_name(cert.issuer),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "days_left": (cert.not_valid_after_utc - now).days,
            "expired": cert.not_valid_after_utc < now}
