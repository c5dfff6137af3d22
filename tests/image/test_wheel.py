"""The two distributions, built as wheels from a fresh copy of the repository: the node's
(``pyproject.toml``) carries agent/ and ha/ and their four commands, and nothing of the
development tools (no lab/, image/ or license_server/ file, no voxnode-lab or
voxnode-license-server); the development tools' (``lab/pyproject.toml``) carries those,
with ``voxnode-lab`` and ``voxnode-license-server``.

Built with pip as an operator builds them; without isolation when this environment has
what a build needs (setuptools and wheel), otherwise pip fetches the build requirements
from its configured index, as ``make venv`` does."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.image.conftest import NOT_IN_A_CLONE

REPO = Path(__file__).resolve().parents[2]
NODE_COMMANDS = {"voxnode", "voxnode-agent", "voxnode-firstboot", "voxnode-arbiter"}
TOOL_COMMANDS = {"voxnode-lab", "voxnode-license-server"}


def builds_here() -> bool:
    """Whether this environment builds a setuptools wheel on its own (no index needed)."""
    return all(importlib.util.find_spec(m) is not None for m in ("setuptools", "wheel"))


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, zipfile.ZipFile]:
    """Both wheels, by distribution name; built from a copy, so the repository gets no
    ``build/`` or ``*.egg-info``."""
    work = tmp_path_factory.mktemp("wheels")
    src = work / "voxnode"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(*NOT_IN_A_CLONE))
    isolation = ["--no-build-isolation"] if builds_here() else []
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation,
                           "-w", str(work / "dist"), str(src), str(src / "lab")],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"two wheels in {time.monotonic() - started:.1f} s")
    found = {path.name.split("-", 1)[0]: zipfile.ZipFile(path)
             for path in (work / "dist").glob("*.whl")}
    assert sorted(found) == ["voxnode", "voxnode_devtools"], sorted(found)
    return found


def top_level(wheel: zipfile.ZipFile) -> set[str]:
    return {name.split("/", 1)[0] for name in wheel.namelist()
            if not name.split("/", 1)[0].endswith(".dist-info")}


def commands(wheel: zipfile.ZipFile) -> set[str]:
    [entry_points] = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    section = text.split("[console_scripts]", 1)[1].split("\n[", 1)[0]
    return {line.split("=", 1)[0].strip() for line in section.splitlines() if "=" in line}


def test_the_node_wheel_carries_agent_and_ha_only(wheels: dict[str, zipfile.ZipFile]) -> None:
    node = wheels["voxnode"]
    assert top_level(node) == {"agent", "ha"}
    tools = [n for n in node.namelist() if n.split("/", 1)[0] in ("lab", "image",
                                                                 "license_server")]
    assert tools == [], tools
    assert commands(node) == NODE_COMMANDS
    sources = {p.relative_to(REPO).as_posix() for package in ("agent", "ha")
               for p in (REPO / package).rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(sources - set(node.namelist()))
    assert missing == [], f"modules of the node left out of its wheel: {missing}"
    assert "agent/py.typed" in node.namelist()


def test_the_development_tools_carry_the_lab_and_the_licence_server(
        wheels: dict[str, zipfile.ZipFile]) -> None:
    tools = wheels["voxnode_devtools"]
    assert top_level(tools) == {"lab", "image", "license_server"}
    names = set(tools.namelist())
    assert {"lab/cli.py", "lab/pair/harness.py", "image/rpm.py",
            "license_server/cli.py"} <= names
    assert not [n for n in names if n.split("/", 1)[0] in ("agent", "ha")]
    assert commands(tools) == TOOL_COMMANDS
