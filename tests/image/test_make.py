"""The image commands as the README gives them: `make rpm` and `make iso BASE_ISO=…` from
the repository root with make's default, relative ``IMAGE_OUT=out`` and a relative
``BASE_ISO`` (the session build, tests/image/conftest.py, runs them in a copy of the
repository); `make rpm` run again over an existing ``out/``; and an ``--out`` that cannot
be a directory is one line, not a traceback."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from image.buildutil import EXIT_USAGE, sha256
from tests.image.conftest import Build, files_under, run_py


def test_relative_paths_build_everything_under_out(build: Build) -> None:
    assert not any(f == "out" or f.startswith("out/") for f in build.files_before)
    made = files_under(build.root) - build.files_before
    outside = sorted(f for f in made if not f.startswith("out/"))
    assert outside == [], f"the build wrote outside out/: {outside}"
    for path in (build.iso, Path(f"{build.iso}.sha256"), build.rpm,
                 build.out / "repo" / "repodata" / "repomd.xml",
                 build.out / "repo" / "Packages" / build.rpm.name):
        assert path.is_file(), path
    manifest = json.loads(Path(str(build.iso).removesuffix(".iso") + ".manifest.json")
                          .read_text())
    assert manifest["inputs"]["base_iso"]["name"] == build.base_iso.name
    check = subprocess.run(["checkisomd5", str(build.iso)], capture_output=True, check=False)
    assert check.returncode == 0


def test_make_rpm_again_over_an_existing_out_gives_the_same_rpm(build: Build) -> None:
    """`make iso` makes the RPM again (it depends on `rpm`): same inputs, same bytes."""
    rpm_builds = [ln for ln in build.log.splitlines() if ln.startswith("rpm: ")]
    assert len(rpm_builds) == 2, build.log
    assert all(f"rpm: {build.rpm} and repository {build.out / 'repo'} in " in ln
               for ln in rpm_builds), rpm_builds  # absolute paths, resolved once
    assert sha256(build.rpm) == build.first_rpm_sha256
    print(f"make rpm + make iso: {build.seconds:.1f} s")


@pytest.mark.parametrize("argv", [
    ("-m", "image.rpm"), ("-m", "image.iso"), ("-m", "image.kickstart"),
    ("-m", "image.packer", "raw"),
])
def test_an_out_that_is_a_file_is_one_clear_line(argv: tuple[str, ...], tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("a file, not a directory\n")
    proc = run_py(*argv, "--out", str(taken), env={"BASE_ISO": str(tmp_path / "base.iso")})
    assert proc.returncode == EXIT_USAGE, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: --out {taken}: exists and is not a directory (give a directory for the "
        "build's outputs)"]
