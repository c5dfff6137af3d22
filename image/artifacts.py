"""What each image build step hands to the next: the files it made, with their sha256.

``make rpm`` writes ``out/rpm.json`` (``RpmBuild``: the RPM and the appliance repository),
``make iso`` reads it and writes ``out/iso.json`` (``IsoBuild``), ``make raw`` and ``make
ami`` read that and write ``out/packer/raw.json`` and ``out/packer/ami.json``
(``DiskBuild``), which the AMI registration reads and answers with ``out/ami.json``
(``AmiBuild``). A step takes the paths its input step recorded instead of rebuilding file
names by convention, and checks the files it reads are still the ones recorded (size and
sha256), so a stale or edited input is one line, not a wrong image. Paths are stored
relative to the result file: an ``out/`` directory can be moved as a whole.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from image.buildutil import EXIT_MISSING_INPUT, EXIT_WRONG_INPUT, BuildError, sha256

R = TypeVar("R", bound="StepResult")


@dataclass(frozen=True)
class Artifact:
    """A file a step made: where it is and what it holds."""

    path: Path
    sha256: str
    size: int

    @classmethod
    def of(cls, path: Path) -> Artifact:
        return cls(path=path, sha256=sha256(path), size=path.stat().st_size)

    def check(self, made_by: str) -> Artifact:
        """This artifact, if the file is still the one recorded; else a one-line error."""
        if not self.path.is_file():
            raise BuildError(f"{self.path} is missing: build it again with `{made_by}`",
                             EXIT_MISSING_INPUT)
        if self.path.stat().st_size != self.size or sha256(self.path) != self.sha256:
            raise BuildError(f"{self.path} changed after `{made_by}` made it (sha256 "
                             f"{self.sha256[:16]}… recorded): build it again", EXIT_WRONG_INPUT)
        return self

    def to_json(self, base: Path) -> dict[str, Any]:
        return {"path": _relative(self.path, base), "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_json(cls, data: Any, base: Path) -> Artifact:
        path, digest, size = data["path"], data["sha256"], data["size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"size {size!r} is not a byte count")
        return cls(path=_resolve(path, base), sha256=_token(digest, "sha256", _SHA256),
                   size=size)


def _relative(path: Path, base: Path) -> str:
    return os.path.relpath(path, base)


def _resolve(text: Any, base: Path) -> Path:
    """A recorded path, inside the result file's directory: a result file is an input the
    next step trusts (its names reach kickstarts and Packer's shell), so an absolute path
    or one that climbs out with ``..`` is refused."""
    if not isinstance(text, str) or not text or "\0" in text:
        raise ValueError(f"not a path: {text!r}")
    if os.path.isabs(text) or ".." in Path(text).parts:
        raise ValueError(f"{text!r}: a recorded path is relative and stays inside {base}")
    return Path(os.path.normpath(base / text))


# what a version, build id, volume id or cloud id may hold: they end up in file names, the
# kickstart's %post (run as root on the installed node) and Packer's shell-local steps
_TOKEN = re.compile(r"[0-9A-Za-z._+~-]{1,128}")
_VOLUME_ID = re.compile(r"[0-9A-Za-z._ -]{1,32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _token(value: Any, what: str, pattern: re.Pattern[str] = _TOKEN) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not a plain name ({pattern.pattern})")
    return value


class StepResult:
    """What one step produced; ``STEP`` names it in its file, ``MADE_BY`` is the command
    that makes it (for the errors of the steps that read it)."""

    STEP: ClassVar[str]
    MADE_BY: ClassVar[str]

    def to_json(self, base: Path) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_json(cls: type[R], data: dict[str, Any], base: Path) -> R:
        raise NotImplementedError


@dataclass(frozen=True)
class RpmBuild(StepResult):
    """``make rpm``: the agent RPM and the appliance repository that holds it."""

    STEP: ClassVar[str] = "rpm"
    MADE_BY: ClassVar[str] = "make rpm"
    rpm: Artifact
    repo: Path  # Packages/ + repodata/
    repomd: Artifact  # repo/repodata/repomd.xml: it names the digest of every other file
    version: str
    build_id: str

    def to_json(self, base: Path) -> dict[str, Any]:
        return {"rpm": self.rpm.to_json(base), "repo": _relative(self.repo, base),
                "repomd": self.repomd.to_json(base), "version": self.version,
                "build_id": self.build_id}

    @classmethod
    def from_json(cls, data: dict[str, Any], base: Path) -> RpmBuild:
        return cls(rpm=Artifact.from_json(data["rpm"], base), repo=_resolve(data["repo"], base),
                   repomd=Artifact.from_json(data["repomd"], base),
                   version=_token(data["version"], "version"),
                   build_id=_token(data["build_id"], "build id"))

    def check(self) -> RpmBuild:
        """The RPM and the repository are still what ``make rpm`` made."""
        self.rpm.check(self.MADE_BY)
        self.repomd.check(self.MADE_BY)
        Artifact(self.repo / "Packages" / self.rpm.path.name, self.rpm.sha256,
                 self.rpm.size).check(self.MADE_BY)
        return self


@dataclass(frozen=True)
class IsoBuild(StepResult):
    """``make iso``: the installer ISO, its manifest and the volume id it kept."""

    STEP: ClassVar[str] = "iso"
    MADE_BY: ClassVar[str] = "make iso BASE_ISO=…"
    iso: Artifact
    manifest: Path
    volume_id: str
    version: str
    build_id: str

    def to_json(self, base: Path) -> dict[str, Any]:
        return {"iso": self.iso.to_json(base), "manifest": _relative(self.manifest, base),
                "volume_id": self.volume_id, "version": self.version,
                "build_id": self.build_id}

    @classmethod
    def from_json(cls, data: dict[str, Any], base: Path) -> IsoBuild:
        return cls(iso=Artifact.from_json(data["iso"], base),
                   manifest=_resolve(data["manifest"], base),
                   volume_id=_token(data["volume_id"], "volume id", _VOLUME_ID),
                   version=_token(data["version"], "version"),
                   build_id=_token(data["build_id"], "build id"))


@dataclass(frozen=True)
class DiskBuild(StepResult):
    """``make raw`` (the raw disk and its qcow2) or the disk of ``make ami`` (a raw disk
    installed with ks-aws.cfg), and the ISO they were installed from."""

    STEP: ClassVar[str] = "disk"
    MADE_BY: ClassVar[str] = "make raw"
    target: str  # "raw" or "ami"
    disks: tuple[Artifact, ...]  # the raw disk first
    iso_sha256: str
    version: str

    @property
    def raw(self) -> Artifact:
        return self.disks[0]

    def to_json(self, base: Path) -> dict[str, Any]:
        return {"target": self.target, "disks": [d.to_json(base) for d in self.disks],
                "iso_sha256": self.iso_sha256, "version": self.version}

    @classmethod
    def from_json(cls, data: dict[str, Any], base: Path) -> DiskBuild:
        disks = tuple(Artifact.from_json(d, base) for d in data["disks"])
        if not disks:
            raise ValueError("no disk")
        if data["target"] not in ("raw", "ami"):
            raise ValueError(f"target {data['target']!r} is not raw or ami")
        return cls(target=str(data["target"]), disks=disks,
                   iso_sha256=_token(data["iso_sha256"], "ISO sha256", _SHA256),
                   version=_token(data["version"], "version"))


@dataclass(frozen=True)
class AmiBuild(StepResult):
    """``make ami``: the AMI registered from the disk, and its snapshot."""

    STEP: ClassVar[str] = "ami"
    MADE_BY: ClassVar[str] = "make ami"
    image_id: str
    snapshot_id: str
    name: str
    region: str
    disk_sha256: str

    def to_json(self, base: Path) -> dict[str, Any]:
        return {"image_id": self.image_id, "snapshot_id": self.snapshot_id, "name": self.name,
                "region": self.region, "disk_sha256": self.disk_sha256}

    @classmethod
    def from_json(cls, data: dict[str, Any], base: Path) -> AmiBuild:
        return cls(image_id=_token(data["image_id"], "image id"),
                   snapshot_id=_token(data["snapshot_id"], "snapshot id"),
                   name=_token(data["name"], "name"), region=_token(data["region"], "region"),
                   disk_sha256=_token(data["disk_sha256"], "disk sha256", _SHA256))


def write_result(result: StepResult, path: Path) -> Path:
    """Write ``result`` to ``path`` (JSON, replaced atomically); ``path``."""
    data = {"step": result.STEP, **result.to_json(path.parent)}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_result(path: Path, kind: type[R], made_by: str = "") -> R:
    """The result of step ``kind`` recorded in ``path``; a one-line error when there is
    none (run that step first: ``made_by``, by default the kind's command) or the file is
    not one."""
    made_by = made_by or kind.MADE_BY
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BuildError(f"{path} not found: build it first with `{made_by}`",
                         EXIT_MISSING_INPUT) from None
    except OSError as exc:
        raise BuildError(f"cannot read {path} ({exc.strerror})", EXIT_MISSING_INPUT) from exc
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("step") != kind.STEP:
            raise ValueError(f"not a {kind.STEP} result")
        return kind.from_json(data, path.parent)
    except (ValueError, KeyError, TypeError) as exc:
        raise BuildError(f"{path} is not the result of `{made_by}` ({exc}): build it "
                         "again", EXIT_WRONG_INPUT) from exc
