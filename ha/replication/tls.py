"""TLS between the two nodes' database servers, authenticated by the pair key.

Both nodes derive the same certificate authority key from the pair key (``pair_ca_key``):
nobody carries a CA between them, and only a holder of the pair key can issue a
certificate the other node accepts. Each node keeps a private key of its own and a
certificate for its management address signed by that CA (``issue_node_certificate``).
The replica checks the master's certificate against the CA and its address
(``MASTER_SSL_VERIFY_SERVER_CERT``); the master's replication account requires a client
certificate from the same CA (``REQUIRE X509``). A new pair key gives a new CA: both nodes
issue new certificates.

Pure apart from the key generation (``new_node_key``): the writer of the files is the
caller's (the ha subsystem, off the event loop).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_CA_INFO = b"voxnode pair database CA v1"
CA_NAME = "voxnode pair database CA"
_CURVE_ORDER = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)
# fixed validity: every derivation of the CA gives the same name, key and dates
_CA_FROM = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
_CA_UNTIL = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
NODE_CERT_DAYS = 3650

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def pair_ca_key(pair_key: bytes) -> ec.EllipticCurvePrivateKey:
    """The CA's P-256 key, the same on both nodes for one pair key."""
    seed = hmac.new(pair_key, _CA_INFO, hashlib.sha512).digest()
    scalar = int.from_bytes(seed, "big") % (_CURVE_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def _ca_name() -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])


def pair_ca_certificate(pair_key: bytes) -> bytes:
    """The CA's self-signed certificate (PEM)."""
    key = pair_ca_key(pair_key)
    public = key.public_key()
    serial = int.from_bytes(hashlib.sha256(public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()[:16],
        "big") >> 1
    cert = (
        x509.CertificateBuilder()
        .subject_name(_ca_name()).issuer_name(_ca_name())
        .public_key(public).serial_number(serial)
        .not_valid_before(_CA_FROM).not_valid_after(_CA_UNTIL)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def ca_matches(cert_pem: bytes, pair_key: bytes) -> bool:
    """Whether a CA certificate on disk is this pair key's (its name and key): the
    signature differs at each derivation, so bytes are not compared."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return False
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return (cert.subject == _ca_name() and cert.public_key().public_bytes(der, spki)
            == pair_ca_key(pair_key).public_key().public_bytes(der, spki))


def new_node_key() -> bytes:
    """A node's own private key (PEM, unencrypted: the file is the protection)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def issue_node_certificate(pair_key: bytes, node_key_pem: bytes, address: IP,
                           now: dt.datetime) -> bytes:
    """The node's certificate for ``address`` (server and client use), signed by the pair
    CA (PEM)."""
    ca = pair_ca_key(pair_key)
    node_key = serialization.load_pem_private_key(node_key_pem, password=None)
    if not isinstance(node_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the node's database key is not an EC key")
    public = node_key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(address))]))
        .issuer_name(_ca_name())
        .public_key(public).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=NODE_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(address)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),
                       critical=False)
        .sign(ca, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def certificate_matches(cert_pem: bytes, pair_key: bytes, node_key_pem: bytes,
                        address: IP, now: dt.datetime) -> bool:
    """Whether a node certificate on disk is still right: issued by this pair's CA, for
    this key and address, and valid for at least 30 more days."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        node_key = serialization.load_pem_private_key(node_key_pem, password=None)
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(
            pair_ca_certificate(pair_key)))
    except (ValueError, TypeError, InvalidSignature):
        return False
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    same_key = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == node_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return (same_key and address in sans.get_values_for_type(x509.IPAddress)
            and cert.not_valid_after_utc - now > dt.timedelta(days=30))
