"""The file half of replication (ha/replication/files.py): two real agents, each node with
the sync daemon the agent configured (real sshd, the sync shell), inotify and rsync.

Tried here: creates, changes, deletes and new directories reaching the slave; a file put
on the slave by hand (the slave never pushes; the master's next push removes it); the
direction after a switchover; a path's key writing outside its path or asking for a shell.
"""

from __future__ import annotations

import contextlib
import os
import stat
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


def test_a_stolen_key_does_only_its_one_transfer(fp: FilePair) -> None:
    """Through the real sshd and the sync shell: options that write elsewhere, device files,
    a read key asked for another tree or to delete what it reads."""
    master = fp.start()
    slave = other(master)
    from ha.replication import sshkeys
    known = fp.root(master) / sshkeys.KNOWN_HOSTS.lstrip("/")

    def ssh(key_file: str) -> list[str]:
        return ["ssh", "-i", str(fp.root(master) / key_file.lstrip("/")), "-p",
                str(sshkeys.SYNC_PORT), "-o", "BatchMode=yes", "-o",
                f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes", "-o",
                "IdentitiesOnly=yes"]

    def rsync(key_file: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", fp.lab.ns[master], "rsync", "-e",
                               " ".join(ssh(key_file)), *args], capture_output=True, text=True,
                              timeout=30, check=False)

    target = f"root@{NODE_ADDRESSES[slave]}"
    write = sshkeys.path_key_file("/srv/rec")
    read = sshkeys.pull_key_file("/srv/rec")
    source = fp.lab.workdir / "src"
    source.mkdir()
    (source / "f").write_text("x")
    logged = fp.lab.workdir / "owned.log"
    # (--remote-option: what the server runs with; a client's own --log-file is local)
    done = rsync(write, "-r", f"--remote-option=--log-file={logged}", f"{source}/",
                 f"{target}:")
    assert done.returncode != 0 and "--log-file" in done.stderr, done.stderr
    assert not logged.exists()
    os.mknod(source / "disk", 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    done = rsync(write, "-a", f"{source}/", f"{target}:")
    assert done.returncode != 0 and "-D is not allowed" in done.stderr, done.stderr
    assert not (fp.at(slave, "/srv/rec") / "disk").exists()
    # a setuid program arrives without its bit; a link that leads out of the tree does not
    # arrive, one that stays inside does
    (source / "disk").unlink()
    shell = source / "greeting.wav"
    shell.write_bytes(b"#!/bin/sh\n")
    shell.chmod(0o4755)
    os.symlink("/etc/shadow", source / "out.wav")
    os.symlink("greeting.wav", source / "in.wav")
    done = rsync(write, "-rlptgo", f"{source}/", f"{target}:")
    assert done.returncode == 0, done.stderr
    landed = fp.at(slave, "/srv/rec")
    assert (landed / "greeting.wav").stat().st_mode & 0o7777 == 0o755
    assert not (landed / "out.wav").is_symlink()
    assert os.readlink(landed / "in.wav") == "greeting.wav"
    # the read key gives its own tree whatever is asked for, and never deletes there
    (fp.at(slave, "/srv/rec") / "kept.txt").write_text("on the slave")
    pulled = fp.lab.workdir / "pulled"
    done = rsync(read, "-r", f"{target}:/etc/", f"{pulled}/")
    assert done.returncode == 0, done.stderr
    assert "kept.txt" in {p.name for p in pulled.iterdir()}
    assert not (pulled / "shadow").exists() and not (pulled / "passwd").exists()
    done = rsync(read, "-r", "--remove-source-files", f"{target}:", f"{pulled}/")
    assert done.returncode != 0 and "--remove-source-files" in done.stderr, done.stderr
    assert (fp.at(slave, "/srv/rec") / "kept.txt").exists()
    # nor may it write, nor the write key read
    assert rsync(read, "-r", f"{source}/f", f"{target}:").returncode != 0
    assert rsync(write, "-r", f"{target}:", f"{pulled}/").returncode != 0
