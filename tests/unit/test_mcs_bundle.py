"""The MCS bundle: reading, validating and normalising OpenVPN client configurations.

``Pki`` (a CA with server and client certificates, made with ``cryptography``) is also used
by the MCS client tests and by the node test that runs a real OpenVPN server.
"""

from __future__ import annotations

import datetime as dt
import io
import tarfile
import zipfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.errors import InvalidInput
from agent.mcs.bundle import load_bundle
from agent.mcs.ovpn import Directive, read_directives, tokens
from agent.paths import MCS_CERT_DIR

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
TLS_KEY = ("-----BEGIN OpenVPN Static key V1-----\n"
           + "".join(f"{i:02x}" * 16 + "\n" for i in range(16))
           + "-----END OpenVPN Static key V1-----\n")


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> str:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password
        else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             enc).decode()


class Pki:
    """A small CA with a server and a client certificate (EC P-256, fast to make)."""

    def __init__(self, now: dt.datetime = NOW, ca_name: str = "MCS test CA") -> None:
        self.now = now
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = self._cert(ca_name, self.ca_key, ca=True)
        self.server_key = ec.generate_private_key(ec.SECP256R1())
        self.server = self._cert("mcs.example.test", self.server_key, server=True)
        self.client_key = ec.generate_private_key(ec.SECP256R1())
        self.client = self._cert("pbx1.customer.test", self.client_key)

    def _cert(self, cn: str, key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
              server: bool = False, days: tuple[int, int] = (-1, 365),
              issuer_key: ec.EllipticCurvePrivateKey | None = None) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        builder = (x509.CertificateBuilder().subject_name(name)
                   .issuer_name(name if ca else self.ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(self.now + dt.timedelta(days=days[0]))
                   .not_valid_after(self.now + dt.timedelta(days=days[1]))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            # OpenVPN's remote-cert-tls checks key usage too, as real MCS certificates have
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        signer = key if ca else (issuer_key or self.ca_key)
        return builder.sign(signer, hashes.SHA256())

    def client_cert(self, days: tuple[int, int]) -> str:
        return _pem(self._cert("pbx1.customer.test", self.client_key, days=days))

    @property
    def ca_pem(self) -> str:
        return _pem(self.ca)

    @property
    def client_pem(self) -> str:
        return _pem(self.client)

    @property
    def client_key_pem(self) -> str:
        return _key_pem(self.client_key)

    def write_server(self, directory: Path) -> None:
        """ca.crt, server.crt, server.key and ta.key for an OpenVPN server."""
        (directory / "ca.crt").write_text(self.ca_pem)
        (directory / "server.crt").write_text(_pem(self.server))
        (directory / "server.key").write_text(_key_pem(self.server_key))
        (directory / "ta.key").write_text(TLS_KEY)

    def ovpn(self, remote: str = "remote mcs.example.test 1194 udp", *, ca: str | None = None,
             cert: str | None = None, key: str | None = None, extra: str = "",
             tls: bool = True) -> str:
        parts = ["client", "dev tun", "nobind", "persist-key", remote, "remote-cert-tls server",
                 "verb 3", extra,
                 f"<ca>\n{self.ca_pem if ca is None else ca}</ca>",
                 f"<cert>\n{self.client_pem if cert is None else cert}</cert>",
                 f"<key>\n{self.client_key_pem if key is None else key}</key>"]
        if tls:
            parts += ["key-direction 1", f"<tls-auth>\n{TLS_KEY}</tls-auth>"]
        return "\n".join(p for p in parts if p) + "\n"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def at(text: str, marker: str) -> str:
    """``x.ovpn:N`` for the first line of ``text`` that starts with ``marker``."""
    number = next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(marker))
    return f"x.ovpn:{number}"


def problems_of(name: str, data: bytes | str, extra: dict[str, bytes] | None = None) -> list[str]:
    raw = data.encode() if isinstance(data, str) else data
    with pytest.raises(InvalidInput) as info:
        load_bundle(name, raw, extra, NOW)
    assert info.value.message == "the MCS bundle is not valid; nothing was installed"
    return [str(p) for p in info.value.problems]


# --- OpenVPN syntax ---------------------------------------------------------------------------


def test_tokens_follow_openvpn_quoting() -> None:
    assert tokens('remote "mcs host" 1194 # comment') == ["remote", "mcs host", "1194"]
    assert tokens("setenv A 'x\\y' b\\ c") == ["setenv", "A", "x\\y", "b c"]
    assert tokens('key "open') is None
    assert tokens("; all comment") == []


def test_inline_blocks_and_dashes() -> None:
    directives, problems = read_directives("--client\n<ca>\nAAA\n</ca>\ndev tun\n", "x.ovpn")
    assert problems == []
    assert directives == [Directive("client", (), 1), Directive("ca", (), 2, "AAA\n"),
                          Directive("dev", ("tun",), 5)]


# --- valid bundles ----------------------------------------------------------------------------


def test_inline_bundle_is_normalised(pki: Pki) -> None:
    bundle = load_bundle("mcs.ovpn", pki.ovpn(extra="status /tmp/x 5").encode(), None, NOW)
    assert set(bundle.files) == {f"{MCS_CERT_DIR}/{n}" for n in
                                 ("ca.crt", "client.crt", "client.key", "tls-auth.key")}
    assert bundle.files[f"{MCS_CERT_DIR}/client.key"] == pki.client_key_pem.encode()
    assert bundle.config.splitlines()[2:] == [
        "client", "dev tun-mcs", "dev-type tun", "remote mcs.example.test 1194 udp",
        f"ca {MCS_CERT_DIR}/ca.crt", f"cert {MCS_CERT_DIR}/client.crt",
        f"key {MCS_CERT_DIR}/client.key", f"tls-auth {MCS_CERT_DIR}/tls-auth.key 1",
        "nobind", "persist-key", "remote-cert-tls server", "verb 3", "script-security 1",
        "management /run/voxnode-mcs.sock unix",
    ]
    s = bundle.summary
    assert (s["remote"], s["subject_cn"], s["issuer_cn"], s["tls"]) == (
        "mcs.example.test:1194/udp", "pbx1.customer.test", "MCS test CA", "tls-auth")
    assert s["days_left"] == 365
    assert bundle.ignored == ["status (line 8)"]


def test_zip_and_tar_bundles_with_separate_files(pki: Pki) -> None:
    conf = ("client\ndev tun\nproto tcp-client\nport 443\nremote 203.0.113.7\n"
            "ca keys/ca.crt\ncert /etc/openvpn/pbx1.crt\nkey pbx1.key\ntls-crypt tc.key\n")
    members = {"pbx1/pbx1.ovpn": conf, "pbx1/keys/ca.crt": pki.ca_pem,
               "pbx1/pbx1.crt": pki.client_pem, "pbx1/pbx1.key": pki.client_key_pem,
               "pbx1/tc.key": TLS_KEY}
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        for n, text in members.items():
            z.writestr(n, text)
    tbuf = io.BytesIO()
    with tarfile.open(fileobj=tbuf, mode="w:gz") as t:
        for n, text in members.items():
            info = tarfile.TarInfo(n)
            info.size = len(text.encode())
            t.addfile(info, io.BytesIO(text.encode()))
    for name, data in (("pbx1.zip", zbuf.getvalue()), ("pbx1.tar.gz", tbuf.getvalue())):
        bundle = load_bundle(name, data, None, NOW)
        assert bundle.summary["remote"] == "203.0.113.7:443/tcp-client"
        assert bundle.summary["source"] == name
        assert f"tls-crypt {MCS_CERT_DIR}/tls-crypt.key" in bundle.config
        assert bundle.files[f"{MCS_CERT_DIR}/ca.crt"] == pki.ca_pem.encode()


def test_plain_ovpn_with_files_sent_alongside(pki: Pki) -> None:
    conf = "client\ndev tun\nremote 10.77.0.200\nca ca.crt\ncert c.crt\nkey c.key\n"
    extra = {"ca.crt": pki.ca_pem.encode(), "c.crt": pki.client_pem.encode(),
             "c.key": pki.client_key_pem.encode()}
    assert load_bundle("c.ovpn", conf.encode(), extra, NOW).summary["tls"] == "none"
    assert problems_of("c.ovpn", conf, {"ca.crt": pki.ca_pem.encode()}) == [
        "c.ovpn:5: cert: the file 'c.crt' is not next to the configuration (upload the zip "
        "or tar bundle from MCS, or inline it)",
        "c.ovpn:6: key: the file 'c.key' is not next to the configuration (upload the zip "
        "or tar bundle from MCS, or inline it)",
    ]


# --- bad bundles: every problem, exact text ----------------------------------------------------


def test_garbage_is_refused() -> None:
    not_text = ("not text (binary data): expected an OpenVPN client configuration (.ovpn) or "
                "a zip or tar bundle containing one")
    assert problems_of("x.ovpn", b"\x00\x01\xff garbage") == [f"x.ovpn: {not_text}"]
    assert problems_of("x.ovpn", "hello world\nthis is a letter\n") == [
        "x.ovpn: not an OpenVPN client configuration: none of its lines is an OpenVPN option"]
    assert problems_of("x.zip", b"PK\x03\x04broken") == [
        "x.zip: not a readable zip archive (File is not a zip file)"]
    empty = io.BytesIO()
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("readme.txt", "hi")
    assert problems_of("x.zip", empty.getvalue()) == [
        "x.zip: the archive holds no OpenVPN configuration (a .ovpn or .conf file)"]


BAD_REMOTES = [
    ("remote", "x.ovpn:5: remote: the host is empty"),
    ('remote ""  1194', "x.ovpn:5: remote: the host is empty"),
    ("remote mcs.example.test 0", "x.ovpn:5: remote: port '0' is not a number from 1 to 65535"),
    ("remote mcs.example.test 70000 udp",
     "x.ovpn:5: remote: port '70000' is not a number from 1 to 65535"),
    ("remote mcs.example.test ²", "x.ovpn:5: remote: port '²' is not a number from 1 to 65535"),
    ("remote mcs.example.test " + "9" * 5000,
     f"x.ovpn:5: remote: port '{'9' * 5000}' is not a number from 1 to 65535"),
    ("remote mcs.example.test 1194 tcp-server",
     "x.ovpn:5: remote: protocol 'tcp-server' is not allowed (allowed: udp, tcp, udp4, tcp4, "
     "tcp-client)"),
    ("remote mcs_bad..host 1194",
     "x.ovpn:5: remote: 'mcs_bad..host' is not a host name or an IP address"),
]


@pytest.mark.parametrize(("line", "problem"), BAD_REMOTES)
def test_bad_remote(pki: Pki, line: str, problem: str) -> None:
    assert problems_of("x.ovpn", pki.ovpn(line)) == [problem]


def test_missing_client_remote_dev_and_material(pki: Pki) -> None:
    assert problems_of("x.ovpn", "nobind\nverb 3\n") == [
        "x.ovpn: 'dev' is missing: the MCS link is a routed tunnel (dev tun)",
        "x.ovpn: no 'remote' directive: the bundle must name the MCS to connect to",
        "x.ovpn: the 'client' directive is missing (an MCS bundle is a client configuration)",
        "x.ovpn: the CA certificate is missing (a 'ca' file or an inline <ca> block)",
        "x.ovpn: the client certificate is missing (a 'cert' file or an inline <cert> block)",
        "x.ovpn: the client private key is missing (a 'key' file or an inline <key> block)",
    ]
    text = pki.ovpn().replace("dev tun", "dev tap0")
    assert problems_of("x.ovpn", text) == [
        "x.ovpn:2: 'dev tap0' is not allowed: the MCS link is a routed tunnel (dev tun)"]


def test_programs_are_refused(pki: Pki) -> None:
    extra = ("up /etc/openvpn/up.sh\nscript-security 2\nplugin /lib/x.so\n"
             "tls-verify /bin/check\nauth-user-pass\nfoo bar")
    assert problems_of("x.ovpn", pki.ovpn(extra=extra)) == [
        "x.ovpn:8: 'up' runs a program on the node and is refused for safety: remove it",
        "x.ovpn:9: 'script-security 2' allows running programs and is refused for safety: "
        "remove it (or use 1)",
        "x.ovpn:10: 'plugin' runs a program on the node and is refused for safety: remove it",
        "x.ovpn:11: 'tls-verify' runs a program on the node and is refused for safety: "
        "remove it",
        "x.ovpn:12: 'auth-user-pass': asks for a user name and password, which a service "
        "cannot type (MCS bundles authenticate with the certificate)",
        "x.ovpn:13: 'foo' is not an OpenVPN client option voxnode accepts",
    ]


def test_pem_problems(pki: Pki) -> None:
    other = Pki(ca_name="Another CA")
    encrypted = _key_pem(pki.client_key, b"secret")
    expired = pki.client_cert(days=(-400, -30))
    not_pem = "not a PEM certificate (expected -----BEGIN CERTIFICATE-----)"
    not_issued = "the certificate 'pbx1.customer.test' was not issued by the bundle's CA"
    cases: list[tuple[dict[str, str], list[tuple[str, str]]]] = [
        ({"ca": "garbage\n"}, [("<ca>", f"<ca>: {not_pem}")]),
        ({"ca": pki.client_pem}, [
            ("<ca>", "<ca>: 'pbx1.customer.test' is not a CA certificate (no basicConstraints "
                     "CA:TRUE)"),
            ("<cert>", f"<cert>: {not_issued}")]),
        ({"cert": "junk\n"}, [("<cert>", f"<cert>: {not_pem}")]),
        ({"cert": expired}, [("<cert>", "<cert>: the certificate 'pbx1.customer.test' expired "
                                        "on 2026-05-02 12:00 UTC")]),
        ({"ca": other.ca_pem}, [("<cert>", f"<cert>: {not_issued}")]),
        ({"key": encrypted}, [("<key>", "<key>: the private key is encrypted, and a service "
                                        "cannot type its passphrase: decrypt it (`openssl pkey "
                                        "-in client.key -out client-clear.key`) and upload the "
                                        "bundle again")]),
        ({"key": other.client_key_pem}, [("<key>", "<key>: the private key does not belong to "
                                                   "the certificate 'pbx1.customer.test'")]),
        ({"key": "nope\n"}, [("<key>", "<key>: not a PEM private key (expected -----BEGIN "
                                        "PRIVATE KEY----- or -----BEGIN RSA/EC PRIVATE "
                                        "KEY-----)")]),
    ]
    for change, expected in cases:
        text = pki.ovpn(ca=change.get("ca"), cert=change.get("cert"), key=change.get("key"))
        got = problems_of("x.ovpn", text)
        assert got == [f"{at(text, marker)}: {msg}" for marker, msg in expected], change


def test_bad_tls_key_and_unclosed_block(pki: Pki) -> None:
    text = pki.ovpn().replace("0f0f0f0f", "zz")
    assert problems_of("x.ovpn", text) == [
        f"{at(text, '<tls-auth>')}: <tls-auth>: not an OpenVPN static key (expected -----BEGIN "
        "OpenVPN Static key V1----- and 256 bytes of hex)"]
    text = pki.ovpn(tls=False) + "<tls-crypt>\nabc\n"
    assert problems_of("x.ovpn", text) == [
        f"{at(text, '<tls-crypt>')}: <tls-crypt> is never closed (no </tls-crypt> line)"]


# Lines that would run, read or bind something on the node, or take its routing, even
# though their option is one a client configuration may carry.
HOSTILE_LINES = [
    ('setenv opt plugin /usr/lib64/openvpn/plugins/openvpn-plugin-down-root.so "id"',
     "x.ovpn:8: 'setenv opt' gives OpenVPN any option, including refused ones, and is "
     "refused for safety: remove it"),
    ("setenv OPT up /tmp/x",
     "x.ovpn:8: 'setenv opt' gives OpenVPN any option, including refused ones, and is "
     "refused for safety: remove it"),
    ("setenv FORWARD_COMPATIBLE 1",
     "x.ovpn:8: 'setenv FORWARD_COMPATIBLE' is not allowed (allowed: CLIENT_CERT, "
     "PUSH_PEER_INFO, UV_*)"),
    ("setenv UV_ 1",
     "x.ovpn:8: 'setenv UV_' is not allowed (allowed: CLIENT_CERT, PUSH_PEER_INFO, UV_*)"),
    ("redirect-gateway def1",
     "x.ovpn:8: 'redirect-gateway' would send the node's own traffic through the MCS link "
     "and is refused: the link carries only the MCS networks"),
    ("redirect-private local",
     "x.ovpn:8: 'redirect-private' would send the node's own traffic through the MCS link "
     "and is refused: the link carries only the MCS networks"),
    ("http-proxy proxy.example.test 3128 /etc/shadow basic",
     "x.ovpn:8: 'http-proxy' with an authentication file or method reads a file of the node "
     "and is refused: give the proxy's host and port only"),
    ("socks-proxy proxy.example.test 1080 /root/.ssh/id_rsa",
     "x.ovpn:8: 'socks-proxy' with an authentication file reads a file of the node and is "
     "refused: give the proxy's host and port only"),
    ("lport 5060",
     "x.ovpn:8: 'lport' would bind local port 5060, which the node uses (reserved: 22, 80, "
     "443, 694, 3306, 5060, 5061, 7412, 7422, 9090): remove it or use nobind"),
]


@pytest.mark.parametrize(("line", "problem"), HOSTILE_LINES)
def test_hostile_pass_through_lines_are_refused(pki: Pki, line: str, problem: str) -> None:
    assert problems_of("x.ovpn", pki.ovpn(extra=line)) == [problem]


def test_bind_on_a_reserved_port_is_refused_and_harmless_options_pass(pki: Pki) -> None:
    text = pki.ovpn(extra="port 3306\nbind")
    assert problems_of("x.ovpn", text) == [
        "x.ovpn:9: 'bind' would bind local port 3306, which the node uses (reserved: 22, 80, "
        "443, 694, 3306, 5060, 5061, 7412, 7422, 9090): remove it or use nobind"]
    fine = ("setenv CLIENT_CERT 0\nsetenv UV_SITE milan\nhttp-proxy proxy.example.test 3128\n"
            "socks-proxy proxy.example.test 1080\nlport 41194")
    # a local port that is no port at all is no reserved one either (and no crash)
    assert load_bundle("x.ovpn", pki.ovpn(extra="lport " + "9" * 5000).encode(), now=NOW)
    bundle = load_bundle("x.ovpn", pki.ovpn(extra=fine).encode(), now=NOW)
    assert "setenv UV_SITE milan" in bundle.config
    assert "setenv opt" not in bundle.config
