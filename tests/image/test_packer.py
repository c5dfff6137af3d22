"""Packer templates: `packer validate` (offline, Packer 1.6.6 from apt) on every template;
the plugin block newer Packer wants is kept in its own file, which 1.6.6 would reject."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from image import packer
from tests.preconditions import not_applicable

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("packer") is None,
                                reason="packer missing (run `make image-apt`)")


def test_all_templates_validate_offline() -> None:
    proc = subprocess.run([sys.executable, "-m", "image.packer", "validate"], cwd=REPO,
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = {p.name for p in (REPO / "packer").glob("*.pkr.hcl")}
    assert {"disk.pkr.hcl", "aws.pkr.hcl", "variables.pkr.hcl", "plugins.pkr.hcl"} <= names
    for name in names - {packer.PLUGINS}:
        assert name in proc.stdout


def test_builds_are_named_as_the_makefile_runs_them(tmp_path: Path) -> None:
    tdir = packer.template_dir(tmp_path / "t")
    for only in packer.BUILDS.values():
        proc = subprocess.run(["packer", "validate", f"-only={only}", "."], cwd=tdir,
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_plugins_block_is_separate_because_old_packer_rejects_it(tmp_path: Path) -> None:
    if packer.packer_version() >= (1, 7, 0):
        not_applicable("this Packer understands required_plugins")
    shutil.copy2(REPO / "packer" / packer.PLUGINS, tmp_path / packer.PLUGINS)
    proc = subprocess.run(["packer", "validate", "."], cwd=tmp_path, capture_output=True,
                          text=True, check=False)
    assert proc.returncode != 0 and "required_plugins" in proc.stdout + proc.stderr
