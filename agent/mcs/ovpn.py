"""Reading what an operator uploads as the MCS bundle, before any judgement of its content.

Owns two things, both pure: unpacking the upload (a plain ``.ovpn``/``.conf`` file, or a zip
or tar(.gz) archive holding one configuration and the files it references) and reading
OpenVPN's configuration syntax into ``Directive`` objects: one per option line (``remote
host 1194 udp``, quotes and backslashes as OpenVPN reads them, ``#``/``;`` comments) and
one per inline block (``<ca> … </ca>``). Problems are ``Problem(path, message)`` with the
path ``NAME`` or ``NAME:LINE``.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import zipfile
from dataclasses import dataclass, field

from agent.errors import Problem

MAX_BUNDLE_BYTES = 1024 * 1024
MAX_MEMBERS = 64
MAX_UNPACKED_BYTES = 4 * 1024 * 1024
CONFIG_SUFFIXES = (".ovpn", ".conf")
# The options that name key material, and the file each is stored as on the node.
MATERIAL = {"ca": "ca.crt", "cert": "client.crt", "key": "client.key",
            "tls-auth": "tls-auth.key", "tls-crypt": "tls-crypt.key"}
NOT_TEXT = ("not text (binary data): expected an OpenVPN client configuration (.ovpn) or a "
            "zip or tar bundle containing one")


@dataclass(frozen=True)
class Directive:
    """One option of the configuration; ``inline`` holds the body of an ``<name>`` block."""

    name: str
    args: tuple[str, ...]
    line: int
    inline: str | None = None


@dataclass
class Upload:
    """The configuration text and the other files of the upload, by relative path."""

    source: str  # the name used in problems: the .ovpn's name (inside the archive if any)
    text: str
    files: dict[str, bytes] = field(default_factory=dict)
    archive: str | None = None  # the archive's own name, when the upload was one

    def find(self, reference: str) -> tuple[str, bytes] | None:
        """The file a directive names (``ca keys/ca.crt``): by its path relative to the
        configuration, else by its base name (bundles often name absolute paths)."""
        base = posixpath.dirname(self.source) if self.archive else ""
        wanted = posixpath.normpath(posixpath.join(base, reference.lstrip("/")))
        if wanted in self.files:
            return wanted, self.files[wanted]
        name = posixpath.basename(reference)
        matches = sorted(p for p in self.files if posixpath.basename(p) == name)
        return (matches[0], self.files[matches[0]]) if len(matches) == 1 else None


def decode_text(data: bytes) -> str | None:
    """UTF-8 text (a BOM and CRLF line ends tolerated), or None for binary data."""
    if b"\0" in data:
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    return text.replace("\r\n", "\n")


def unpack(name: str, data: bytes, extra: dict[str, bytes] | None = None) -> Upload:
    """Turn the uploaded bytes into an ``Upload``; raises ``BundleUnreadable``.

    ``extra`` are separate files sent along with a plain configuration (the CLI sends the
    files an ``.ovpn`` names when they sit next to it).
    """
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleUnreadable(Problem(name, f"too large ({len(data)} bytes; a bundle is at "
                                             f"most {MAX_BUNDLE_BYTES} bytes)"))
    if data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        members = _zip_members(name, data)
    elif data.startswith(b"\x1f\x8b") or _is_tar(data):
        members = _tar_members(name, data)
    else:
        text = decode_text(data)
        if text is None:
            raise BundleUnreadable(Problem(name, NOT_TEXT))
        return Upload(posixpath.basename(name) or "bundle", text, dict(extra or {}))
    configs = sorted(p for p in members if p.lower().endswith(CONFIG_SUFFIXES))
    if not configs:
        raise BundleUnreadable(Problem(name, "the archive holds no OpenVPN configuration "
                                             "(a .ovpn or .conf file)"))
    if len(configs) > 1:
        raise BundleUnreadable(Problem(name, "the archive holds more than one OpenVPN "
                                             f"configuration ({', '.join(configs)}): keep one"))
    text = decode_text(members[configs[0]])
    if text is None:
        raise BundleUnreadable(Problem(f"{name}:{configs[0]}", NOT_TEXT))
    files = {p: d for p, d in members.items() if p != configs[0]}
    return Upload(configs[0], text, files, archive=name)


class BundleUnreadable(Exception):
    """The upload cannot even be read as a configuration; carries the one problem."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def _is_tar(data: bytes) -> bool:
    return len(data) > 262 and data[257:262] == b"ustar"


def _budget(name: str, sizes: list[int]) -> None:
    if len(sizes) > MAX_MEMBERS:
        raise BundleUnreadable(Problem(name, f"the archive holds {len(sizes)} files (at most "
                                             f"{MAX_MEMBERS})"))
    if sum(sizes) > MAX_UNPACKED_BYTES:
        raise BundleUnreadable(Problem(name, f"the archive unpacks to {sum(sizes)} bytes (at "
                                             f"most {MAX_UNPACKED_BYTES})"))


def _zip_members(name: str, data: bytes) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = [i for i in archive.infolist() if not i.is_dir()]
            _budget(name, [i.file_size for i in infos])
            return {posixpath.normpath(i.filename): archive.read(i) for i in infos}
    except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError) as exc:
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression
        raise BundleUnreadable(Problem(name, f"not a readable zip archive ({exc})")) from None


def _tar_members(name: str, data: bytes) -> dict[str, bytes]:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            infos = [m for m in archive.getmembers() if m.isfile()]
            _budget(name, [m.size for m in infos])
            members: dict[str, bytes] = {}
            for info in infos:
                fh = archive.extractfile(info)
                if fh is not None:
                    members[posixpath.normpath(info.name)] = fh.read()
            return members
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleUnreadable(Problem(name, f"not a readable tar archive ({exc})")) from None


# --- OpenVPN's configuration syntax ---------------------------------------------------------


def tokens(line: str) -> list[str] | None:
    """Split one line as OpenVPN does; None if a quote is left open."""
    out: list[str] = []
    current: list[str] = []
    in_token, quote, i = False, "", 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == quote:
                quote = ""
            elif c == "\\" and quote == '"' and i + 1 < len(line):
                i += 1
                current.append(line[i])
            else:
                current.append(c)
        elif c.isspace():
            if in_token:
                out.append("".join(current))
                current, in_token = [], False
        elif not in_token and c in "#;":
            break  # a comment
        else:
            in_token = True
            if c in "\"'":
                quote = c
            elif c == "\\" and i + 1 < len(line):
                i += 1
                current.append(line[i])
            else:
                current.append(c)
        i += 1
    if quote:
        return None
    if in_token:
        out.append("".join(current))
    return out


def read_directives(text: str, source: str) -> tuple[list[Directive], list[Problem]]:
    """Every option and inline block in order, and the lines that cannot be read."""
    directives: list[Directive] = []
    problems: list[Problem] = []
    lines = text.split("\n")
    n = 0
    while n < len(lines):
        number, raw = n + 1, lines[n].strip()
        n += 1
        if raw.startswith("<") and raw.endswith(">") and not raw.startswith("</"):
            tag = raw[1:-1].strip()
            body: list[str] = []
            while n < len(lines) and lines[n].strip() != f"</{tag}>":
                body.append(lines[n])
                n += 1
            if n >= len(lines):
                problems.append(Problem(f"{source}:{number}", f"<{tag}> is never closed "
                                                              f"(no </{tag}> line)"))
                break
            n += 1
            directives.append(Directive(tag, (), number, "\n".join(body).strip() + "\n"))
            continue
        words = tokens(raw)
        if words is None:
            problems.append(Problem(f"{source}:{number}", "a quote is never closed"))
            continue
        if words:
            name = words[0][2:] if words[0].startswith("--") else words[0]
            directives.append(Directive(name, tuple(words[1:]), number))
    return directives, problems


def quote(arg: str) -> str:
    """An argument as OpenVPN reads it back (double quotes when needed)."""
    if arg and not any(c.isspace() or c in "\"'\\#;" for c in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
