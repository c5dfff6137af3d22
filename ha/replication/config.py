"""The rules of ``ha.replication``: pure ones for document validation, and the checks
against the node's file system that a revision must pass before it is applied."""

from __future__ import annotations

from pathlib import PurePosixPath

from agent.errors import Problem
from agent.ports.files import FileTree
from agent.state.model import DesiredState
from ha.replication.sshkeys import SAFE_PATH

DEFAULT_STATE_DIR = "/var/lib/voxnode"
# Trees that are never replicated whole: the system's own (a sync would overwrite the
# slave's network, users, packages), pseudo file systems, and the database's data
# directory (the database is replicated by the server itself; a file copy corrupts it).
_SYSTEM = ("/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc",
           "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/lib",
           "/var/log", "/var/spool", "/var/tmp")
_NEVER_INSIDE = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp", "/var/lib/mysql",
                 "/boot")
# the system's programs, trust and packages, anywhere below: a sync with --delete would
# replace the slave's own (or copy root's keys)
_SYSTEM_INSIDE = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/root",
                  "/etc/pki", "/etc/pam.d", "/etc/security", "/etc/sudoers.d", "/etc/sudoers",
                  "/etc/cron.d", "/etc/cron.daily", "/etc/cron.hourly", "/etc/cron.weekly",
                  "/etc/cron.monthly", "/etc/selinux", "/etc/yum.repos.d", "/etc/dnf",
                  "/etc/yum", "/etc/sysctl.d", "/etc/modprobe.d", "/etc/udev",
                  "/etc/ld.so.conf.d", "/etc/profile.d", "/etc/default", "/etc/alternatives",
                  "/etc/tmpfiles.d", "/etc/polkit-1", "/etc/audit", "/etc/crypto-policies",
                  "/etc/ssl", "/etc/sssd", "/etc/logrotate.d", "/etc/rsyslog.d",
                  "/var/lib/rpm", "/var/lib/dnf", "/var/lib/yum", "/var/cache", "/var/log",
                  "/var/spool/cron", "/var/lib/systemd", "/var/lib/selinux")
# each node's own configuration: the agent's (keys, certificates, the pair's files), the
# database's settings (its server_id), sshd's, the firewall's, the network's
_NODE_OWN = ("/etc/voxnode", "/etc/my.cnf.d", "/etc/mysql", "/etc/ssh", "/etc/firewalld",
             "/etc/sysconfig", "/etc/NetworkManager", "/etc/systemd")


def _inside(path: PurePosixPath, tree: PurePosixPath) -> bool:
    return path == tree or tree in path.parents


def check_replication_rules(state: DesiredState, state_dir: str = DEFAULT_STATE_DIR
                            ) -> list[Problem]:
    """``ha.replication.paths``: each a tree of its own, none inside another, none under
    the agent's state directory, the system's trees or pseudo file systems."""
    problems: list[Problem] = []
    paths = [PurePosixPath(p) for p in state.ha.replication.paths]
    own = PurePosixPath(state_dir)
    for i, path in enumerate(paths):
        where = f"ha.replication.paths[{i}]"
        if not SAFE_PATH.fullmatch(str(path)):
            problems.append(Problem(where, f"{str(path)[:200]!r} has characters a replicated "
                                    "path cannot have (letters, digits and . _ + @ , = : - / "
                                    "only: the sync's transfers name it in a command)"))
            continue
        if str(path) in _SYSTEM:
            problems.append(Problem(where, f"{path} is a system directory: replicate the "
                                    "application's own directories (e.g. "
                                    "/var/spool/asterisk/monitor), not the system's"))
            continue
        if _inside(path, own) or own in path.parents or path in own.parents:
            problems.append(Problem(where, f"{path} holds or is inside the agent's state "
                                    f"directory {own} (each node keeps its own)"))
            continue
        own_config = next((t for t in _NODE_OWN if _inside(path, PurePosixPath(t))), None)
        if own_config is not None:
            problems.append(Problem(where, f"{path} is inside {own_config}, each node's own "
                                    "configuration (its keys, certificates, identity): not "
                                    "replicated"))
            continue
        system = next((t for t in _SYSTEM_INSIDE if _inside(path, PurePosixPath(t))), None)
        if system is not None:
            problems.append(Problem(where, f"{path} is inside {system}, the system's own "
                                    "(its programs, its trust, its packages): not replicated"))
            continue
        barred = next((t for t in _NEVER_INSIDE if _inside(path, PurePosixPath(t))), None)
        if barred is not None:
            what = ("the database's data directory (the database is replicated by the "
                    "server)" if barred == "/var/lib/mysql" else "not a place for kept data")
            problems.append(Problem(where, f"{path} is inside {barred}: {what}"))
            continue
        for j, other in enumerate(paths[:i]):
            if path == other:
                problems.append(Problem(where, f"{path} is listed twice (paths[{j}])"))
                break
            if _inside(path, other) or _inside(other, path):
                inner, outer = (path, other) if _inside(path, other) else (other, path)
                problems.append(Problem(where, f"{inner} is inside {outer} (paths[{j}] and "
                                        f"paths[{i}] overlap): list only {outer}"))
                break
    return problems


def check_replication_paths(state: DesiredState, files: FileTree) -> list[Problem]:
    """Each path exists on this node as a directory (not a link to elsewhere): the sync
    must not create the application's trees nor follow a link out of them."""
    problems: list[Problem] = []
    for i, node_path in enumerate(state.ha.replication.paths):
        where = f"ha.replication.paths[{i}]"
        path = files.path(node_path)
        try:
            if path.is_symlink():
                problems.append(Problem(where, f"{node_path} is a symbolic link: give the "
                                        "directory it points to"))
            elif not path.exists():
                problems.append(Problem(where, f"{node_path} does not exist on this node "
                                        "(create it, or install what owns it, first)"))
            elif not path.is_dir():
                problems.append(Problem(where, f"{node_path} is not a directory"))
        except OSError as exc:
            problems.append(Problem(where, f"{node_path} cannot be read: {exc.strerror}"))
    return problems
