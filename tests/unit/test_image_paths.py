"""The image builders' path arguments (image.buildutil.absolute / output_dir): a relative
path is made absolute once, against the directory the command was started in (host tools
such as rpmbuild run elsewhere); an --out that cannot be a directory is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from image.buildutil import EXIT_USAGE, BuildError, absolute, output_dir


def test_relative_paths_are_made_absolute_against_the_current_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert absolute(Path("out")) == tmp_path / "out"
    assert absolute(Path("../x/./y.iso")) == tmp_path.parent / "x" / "y.iso"
    assert absolute(Path("~/Downloads/a.iso")) == tmp_path / "home" / "Downloads" / "a.iso"
    assert absolute(tmp_path / "abs") == tmp_path / "abs"


def test_output_dir_is_created_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert output_dir(Path("out/kickstart"), "--out") == tmp_path / "out" / "kickstart"
    assert (tmp_path / "out" / "kickstart").is_dir()
    assert output_dir(Path("out/kickstart"), "--out") == tmp_path / "out" / "kickstart"
    assert output_dir(Path("later"), "--out", create=False) == tmp_path / "later"
    assert not (tmp_path / "later").exists()


def test_an_output_dir_that_cannot_be_one_is_one_line(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("taken").write_text("a file\n")
    with pytest.raises(BuildError) as taken:
        output_dir(Path("taken"), "--out", create=False)
    assert taken.value.code == EXIT_USAGE
    assert taken.value.message == ("--out taken: exists and is not a directory (give a "
                                   "directory for the build's outputs)")
    with pytest.raises(BuildError) as below:
        output_dir(Path("taken/out"), "--out")
    assert below.value.code == EXIT_USAGE
    assert below.value.message == "--out taken/out: cannot create the directory (Not a directory)"
