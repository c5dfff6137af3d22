"""The file half of replication (ha/replication/files.py): two real agents, each node with
the sync daemon the agent configured (real sshd, rrsync), inotify and rsync.

Tried here: creates, changes, deletes and new directories reaching the slave; a file put
on the slave by hand (the slave never pushes; the master's next push removes it); the
direction after a switchover; a path's key writing outside its path or asking for a shell.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from lab.pair.dbpair import wait_for
from lab.pair.filepair import EXTRA_HA, SSHD, FilePair
from lab.pair.harness import PairLab
from lab.pair.topology import NODE_ADDRESSES, other
from lab.pair.voxnode import VoxnodePair
from tests.netns.pairs import lab_or_skip

pytestmark = pytest.mark.root

@contextlib.contextmanager
def file_pair() -> Iterator[FilePair]:
    lab_or_skip()
    if not SSHD.exists():
        pytest.skip("openssh-server is not installed (make apt)")
    with PairLab(assign_node_addresses=False, probe=False) as lab:
        pair = FilePair(VoxnodePair(lab, extra_ha=EXTRA_HA))
        try:
            yield pair
        finally:
            pair.stop()
        problems = pair.pair.loop_problems()
        assert problems == [], "\n".join(problems)


@pytest.fixture
def fp() -> Iterator[FilePair]:
    with file_pair() as pair:
        yield pair


def test_creates_changes_deletes_and_new_directories_reach_the_slave(fp: FilePair) -> None:
    master = fp.start()
    slave = other(master)
    wait_for("every path synced", lambda: all(p["state"] == "synced" for p in fp.paths(master)),
             20, lambda: fp.paths(master))
    blob = os.urandom(1024 * 1024)
    started = time.monotonic()
    (fp.at(master, "/srv/rec") / "call-1.wav").write_bytes(blob)
    wait_for("the recording on the slave", lambda: (fp.at(slave, "/srv/rec") / "call-1.wav")
             .exists() and (fp.at(slave, "/srv/rec") / "call-1.wav").read_bytes() == blob, 10)
    reached = time.monotonic() - started
    (fp.at(master, "/srv/rec") / "call-1.wav").write_bytes(b"shorter")
    wait_for("the change on the slave", lambda: (fp.at(slave, "/srv/rec") / "call-1.wav")
             .read_bytes() == b"shorter", 10)
    deep = fp.at(master, "/srv/vm") / "1001" / "INBOX"
    deep.mkdir(parents=True)
    (deep / "msg0000.txt").write_text("voicemail")
    wait_for("a new directory tree on the slave", lambda: (fp.at(slave, "/srv/vm") / "1001"
             / "INBOX" / "msg0000.txt").exists(), 10)
    (fp.at(master, "/srv/rec") / "call-1.wav").unlink()
    wait_for("the deletion on the slave",
             lambda: not (fp.at(slave, "/srv/rec") / "call-1.wav").exists(), 10)
    # a link out of the path is copied as a link (munged on the receiver), never followed
    (fp.at(master, "/srv/rec") / "escape").symlink_to("/etc")
    (fp.at(master, "/srv/rec") / "marker").write_text("x")
    wait_for("the marker", lambda: (fp.at(slave, "/srv/rec") / "marker").exists(), 10)
    escape = fp.at(slave, "/srv/rec") / "escape"
    assert not escape.is_dir() or escape.is_symlink()
    assert not (fp.at(slave, "/srv/rec") / "escape" / "passwd").exists() or escape.is_symlink()
    print(f"\n1 MB file on the slave after {reached * 1000:.0f} ms")
    status = {p["path"]: p for p in fp.paths(master)}
    assert status["/srv/rec"]["error"] is None and status["/srv/rec"]["pushes"] >= 3


def test_the_slave_never_pushes(fp: FilePair) -> None:
    master = fp.start()
    slave = other(master)
    wait_for("every path synced", lambda: all(p["state"] == "synced" for p in fp.paths(master)),
             20, lambda: fp.paths(master))
    (fp.at(slave, "/srv/rec") / "by-hand.txt").write_text("on the slave")
    time.sleep(1.5)
    assert not (fp.at(master, "/srv/rec") / "by-hand.txt").exists()
    assert all(p["state"] == "idle" for p in fp.paths(slave))
    (fp.at(master, "/srv/rec") / "next.txt").write_text("from the master")  # a push
    wait_for("the master's push removes what the slave has alone",
             lambda: not (fp.at(slave, "/srv/rec") / "by-hand.txt").exists(), 10)


def test_after_a_switchover_the_new_master_pushes(fp: FilePair) -> None:
    master = fp.start()
    slave = other(master)
    wait_for("every path synced", lambda: all(p["state"] == "synced" for p in fp.paths(master)),
             20, lambda: fp.paths(master))
    fp.pair.client(master, timeout=30).post("/v1/ha/switchover", {})
    wait_for(f"{slave} is master", lambda: fp.pair.role(slave) == "master", 15)
    (fp.at(slave, "/srv/vm") / "after.txt").write_text("new master")
    wait_for("the old master gets it", lambda: (fp.at(master, "/srv/vm") / "after.txt")
             .exists(), 15, lambda: fp.paths(slave))


def test_a_paths_key_writes_that_path_only(fp: FilePair) -> None:
    master = fp.start()
    slave = other(master)
    wait_for("every path synced", lambda: all(p["state"] == "synced" for p in fp.paths(master)),
             20)
    from ha.replication import sshkeys
    key = fp.root(master) / sshkeys.path_key_file("/srv/rec").lstrip("/")
    known = fp.root(master) / sshkeys.KNOWN_HOSTS.lstrip("/")
    ssh = ["ssh", "-i", str(key), "-p", str(sshkeys.SYNC_PORT), "-o", "BatchMode=yes",
           "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
           "-o", "IdentitiesOnly=yes"]
    target = f"root@{NODE_ADDRESSES[slave]}"
    shell = subprocess.run(["ip", "netns", "exec", fp.lab.ns[master], *ssh, target, "id"],
                           capture_output=True, text=True, timeout=20, check=False)
    assert shell.returncode != 0 and "uid=" not in shell.stdout, shell.stdout + shell.stderr
    probe = fp.lab.workdir / "probe.txt"
    probe.write_text("not for voicemail")
    outside = subprocess.run(
        ["ip", "netns", "exec", fp.lab.ns[master], "rsync", "-e", " ".join(ssh), str(probe),
         f"{target}:../vm/"], capture_output=True, text=True, timeout=20, check=False)
    assert not (fp.at(slave, "/srv/vm") / "probe.txt").exists(), outside.stderr
    # and from anywhere but the peer, the key is refused (the gateway's namespace)
    elsewhere = subprocess.run(["ip", "netns", "exec", fp.lab.ns["c"], *ssh, target, "rsync"],
                               capture_output=True, text=True, timeout=20, check=False)
    assert elsewhere.returncode != 0
