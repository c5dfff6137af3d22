"""FileTree: node paths under a root, atomic write-if-changed, group from the node."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.ports.files import FileTree


def test_write_if_changed_reports_only_real_writes(tmp_path: Path) -> None:
    tree = FileTree(tmp_path)
    assert tree.write_if_changed("/etc/hostname", "pbx1\n") is True
    assert (tmp_path / "etc/hostname").read_text() == "pbx1\n"
    assert tree.write_if_changed("/etc/hostname", "pbx1\n") is False
    assert tree.write_if_changed("/etc/hostname", "pbx1\n", 0o600) is True
    assert (tmp_path / "etc/hostname").stat().st_mode & 0o777 == 0o600
    assert not [p for p in (tmp_path / "etc").iterdir() if p.name.startswith(".")]


def test_paths_cannot_escape_the_root(tmp_path: Path) -> None:
    tree = FileTree(tmp_path)
    with pytest.raises(ValueError):
        tree.path("etc/relative")
    with pytest.raises(ValueError):
        tree.path("/etc/../../outside")


def test_group_comes_from_the_node_not_the_host(tmp_path: Path) -> None:
    tree = FileTree(tmp_path)
    (tmp_path / "etc").mkdir()
    gid = os.getgid() + 4242 if os.getuid() == 0 else os.getgid()
    (tmp_path / "etc/group").write_text(f"root:x:0:\nturnserver:x:{gid}:\n")
    assert tree.group_id("turnserver") == gid
    assert tree.group_id("coturn") is None
    assert tree.write_if_changed("/etc/coturn/turnserver.conf", "x", 0o640, group="turnserver")
    assert (tmp_path / "etc/coturn/turnserver.conf").stat().st_gid == gid
    assert not tree.write_if_changed("/etc/coturn/turnserver.conf", "x", 0o640, group="turnserver")


def test_remove_file_and_directory(tmp_path: Path) -> None:
    tree = FileTree(tmp_path)
    tree.write_if_changed("/etc/voxnode/mcs/ca.crt", "x")
    tree.write_if_changed("/etc/voxnode/mcs/sub/key", "y")
    assert tree.remove("/etc/voxnode/mcs") is True
    assert not (tmp_path / "etc/voxnode/mcs").exists()
    assert tree.remove("/etc/voxnode/mcs") is False


def test_os_errors_become_operator_errors(tmp_path: Path) -> None:
    from agent.ports.files import FileWriteError

    tree = FileTree(tmp_path)
    (tmp_path / "etc/hostname").mkdir(parents=True)
    with pytest.raises(FileWriteError) as info:
        tree.write_if_changed("/etc/hostname", "pbx1\n")
    assert info.value.message == "cannot write /etc/hostname: Is a directory"
