"""The replication's forced command (ha/replication/syncshell.py): what a client of the sync
daemon asks for is checked against what its key may do, never run as given. Hostile
commands from a stolen key; the real program run as sshd runs it; Python 3.6 syntax."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ha.replication import syncshell
from ha.replication.syncshell import Refused, rsync_argv, run

SOURCE = Path(syncshell.__file__)
PUSH = "rsync --server -logtpre.iLsfxCIvu --bwlimit=100 --delete --partial-dir .voxnode-partial . ."
PULL = "rsync --server --sender -logtpre.LsfxCIvu --bwlimit=100 . ./"
DRY = "rsync --server --sender -nlogtpre.LsfxCIvu . ./"
OLD_RSYNC = "rsync --server -logtpre.iLsfxC --delete --partial-dir=.voxnode-partial . ."


def test_a_push_writes_only_into_its_directory_without_escaping_links_or_setuid() -> None:
    argv = rsync_argv("receive", "/srv/rec", PUSH)
    assert argv == ["/usr/bin/rsync", "--server", "-logtpre.iLsfxCIvu", "--bwlimit=100",
                    "--delete", "--partial-dir=.voxnode-partial", "--safe-links",
                    "--chmod=u-s,g-s", ".",
                    "/srv/rec/"]
    assert rsync_argv("receive", "/srv/rec/", OLD_RSYNC)[-1] == "/srv/rec/"


def test_a_pull_reads_only_its_directory() -> None:
    assert rsync_argv("send", "/srv/rec", PULL) == [
        "/usr/bin/rsync", "--server", "--sender", "-logtpre.LsfxCIvu", "--bwlimit=100", ".",
        "/srv/rec/"]
    assert rsync_argv("send", "/srv/rec", DRY)[3] == "-nlogtpre.LsfxCIvu"
    # what a full sync's pull sends (its own --safe-links goes to the sender too)
    assert rsync_argv("send", "/srv/rec", "rsync --server --sender -logtpre.LsfxCIvu "
                      "--bwlimit=100 --safe-links . ./")[-3] == "--safe-links"


@pytest.mark.parametrize("mode,command,why", [
    ("receive", "", "no command"),
    ("receive", "sh -c id", "only rsync"),
    ("receive", "/bin/bash", "only rsync"),
    ("receive", "rsync --server --sender -logtpre.LsfxCIvu . /etc/", "may only write"),
    ("send", PUSH, "may only read"),
    # devices and special files: a device node in a replicated directory
    ("receive", "rsync --server -logDtpre.iLsfxCIvu . .", "-D"),
    # options that read or write elsewhere on the node
    ("receive", "rsync --server -logtpre.iLsfxC --log-file=/etc/cron.d/x . .", "--log-file"),
    ("receive", "rsync --server -logtpre.iLsfxC --temp-dir=/etc . .", "--temp-dir"),
    ("receive", "rsync --server -logtpre.iLsfxC --partial-dir=/etc . .", "--partial-dir"),
    ("receive", "rsync --server -logtpre.iLsfxC --partial-dir /etc . .", "--partial-dir"),
    ("receive", "rsync --server -logtpre.iLsfxC --backup-dir=/etc -b . .", "--backup-dir"),
    ("receive", "rsync --server -logtpre.iLsfxC --link-dest=/ . .", "--link-dest"),
    ("receive", "rsync --server -Tlogtpre.iLsfxC /etc . .", "-T"),
    ("send", "rsync --server --sender -logtpre.LsfxC --remove-source-files . .", "--remove"),
    ("send", "rsync --server --sender -logtpre.LsfxC --files-from=/etc/shadow . .", "files-from"),
    ("send", "rsync --server --sender -logtpre.LsfxC --delete . .", "--delete"),
    ("receive", "rsync --server -logtpre.iLsfxC", "malformed"),
    ("receive", "rsync --server -logtpre.iLsfxC . . extra", "option . is not allowed"),
    ("receive", "rsync --server -logtpre.iLsfxC . ;id", "characters"),
    ("receive", "rsync --server -logtpre.iLsfxC . $(id)", "characters"),
    ("receive", "rsync --server -logtpre.iLsfxC . `id`", "characters"),
    ("receive", "rsync --server -logtpre.iL\x00sfxC . .", "characters"),
    ("receive", "rsync --server -logtpre.i'L' . .", "characters"),
    ("receive", "rsync --server -logtpe.r.iLsfxC . .", "malformed"),
    ("receive", "rsync --server " + "-r " * 40 + ". .", "too many"),
    ("receive", "rsync --server -" + "r" * 300 + " . .", "too many or too long"),
    ("receive", "rsync --server --bwlimit=1e9 . .", "--bwlimit"),
])
def test_hostile_commands_are_refused(mode: str, command: str, why: str) -> None:
    with pytest.raises(Refused) as caught:
        rsync_argv(mode, "/srv/rec", command)
    assert why in str(caught.value)


def test_the_database_key_reads_and_nothing_else() -> None:
    assert run(["check", "database", "/run/mysqld/mysqld.sock"], "voxnode-db info") == [
        "info", "/run/mysqld/mysqld.sock"]
    assert run(["check", "database", "/run/s.sock"], "voxnode-db dump") == ["dump", "/run/s.sock"]
    for command in ("voxnode-db sql DROP", "mariadb -e DROP", "voxnode-db dump --all",
                    PULL, "voxnode-stat"):
        with pytest.raises(Refused):
            run(["database", "/run/s.sock"], command)
    argv = syncshell.dump_argv("/run/s.sock", ["pbx", "odd name"])
    assert argv[-2:] == ["pbx", "odd name"]  # an argv, never a shell line
    assert "--single-transaction" in argv and "--master-data=2" in argv and "--gtid" in argv


def test_bad_invocations_are_refused() -> None:
    for argv in ([], ["receive"], ["shell", "/x"], ["receive", "relative"],
                 ["receive", "/a", "relative"], ["send", "/a", "/b"], ["database", "/a", "/b"]):
        with pytest.raises(Refused):
            run(argv, PUSH)


def test_a_receiver_pauses_while_its_node_runs_a_full_sync(tmp_path: Path) -> None:
    pause = tmp_path / "full-sync"
    assert run(["check", "receive", "/srv/rec", str(pause)], PUSH)
    pause.touch()
    with pytest.raises(Refused) as paused:
        run(["receive", "/srv/rec", str(pause)], PUSH)
    assert str(paused.value).startswith("paused: ")
    assert run(["check", "send", "/srv/rec"], PULL)  # reading is not paused


def test_stat_counts_files_bytes_and_directories(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "d").mkdir()
    (tmp_path / "d/b").write_bytes(b"y" * 5)
    (tmp_path / ".voxnode-partial").mkdir()
    (tmp_path / ".voxnode-partial/half").write_bytes(b"z" * 99)
    os.symlink("/etc/passwd", tmp_path / "link")
    os.symlink("/etc", tmp_path / "dirlink")  # a link to a directory is not one
    os.symlink("../a", tmp_path / "d" / "up")  # stays inside: counted as a link
    os.symlink("../../x", tmp_path / "d" / "out")  # leads out: left out (--safe-links)
    assert syncshell.tree_stat(str(tmp_path)) == {"files": 2, "bytes": 15, "directories": 1,
                                                  "links": 1}


def _shell(args: list[str], command: str) -> subprocess.CompletedProcess[str]:
    # as sshd runs it: the system's python3, isolated, no site; the client's line in the env
    env = {"SSH_ORIGINAL_COMMAND": command, "PATH": "/usr/bin:/bin"}
    return subprocess.run(["/usr/bin/python3", "-I", "-S", str(SOURCE), *args],
                          capture_output=True, text=True, env=env, timeout=30, check=False)


def test_the_program_refuses_with_a_reason_and_checks_without_running(tmp_path: Path) -> None:
    refused = _shell(["receive", str(tmp_path)], "sh -c 'touch /tmp/owned'")
    assert refused.returncode == 1
    assert refused.stderr.startswith("voxnode-sync-shell: refused: ")
    assert "Traceback" not in refused.stderr
    checked = _shell(["check", "receive", str(tmp_path)], PUSH)
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)[-1] == f"{tmp_path}/"
    (tmp_path / "f").write_bytes(b"abc")
    stat = _shell(["send", str(tmp_path)], "voxnode-stat")
    assert json.loads(stat.stdout) == {"files": 1, "bytes": 3, "directories": 0, "links": 0}


def test_it_is_python_3_6() -> None:
    """AlmaLinux 8's platform-python: no syntax and no standard-library calls newer."""
    text = SOURCE.read_text()
    ast.parse(text, feature_version=(3, 6))
    for newer in ("capture_output", "text=True", "dataclass", "from __future__",
                  ":=", "removeprefix", "removesuffix", "asyncio.run"):
        assert newer not in text, newer
    assert sys.version_info >= (3, 6)
