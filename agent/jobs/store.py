"""The job history on disk: one JSON file per job under ``<state-dir>/jobs/``.

Layout::

    jobs/00000012.json    the job record (agent.jobs.model.Job.to_dict)

Each write goes to a temp file that is fsynced and renamed over the record
(``agent.ports.files.atomic_write``), so a crash leaves the previous or the new record,
never a torn one. The history keeps the newest ``KEEP_JOBS`` finished jobs; scheduled and
running jobs are never pruned. Job ids are never reused while a record with a higher id
exists.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from agent.errors import StoreError
from agent.jobs.model import Job
from agent.ports.files import atomic_write

log = logging.getLogger("voxnode.jobs")

KEEP_JOBS = 200
_FILE_RE = re.compile(r"^(\d{8})\.json$")


class JobStore:
    def __init__(self, state_dir: Path, keep: int = KEEP_JOBS) -> None:
        self.dir = state_dir / "jobs"
        self.keep = keep

    def _path(self, job_id: int) -> Path:
        return self.dir / f"{job_id:08d}.json"

    def open(self) -> None:
        """Create the directory and drop temp files of a write that was interrupted."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
            for leftover in self.dir.glob(".*.tmp"):
                leftover.unlink()
        except OSError as exc:
            raise StoreError(f"cannot use the job directory {self.dir}: "
                             f"{exc.strerror or exc}") from exc

    def load_all(self) -> list[Job]:
        """Every readable job record, oldest first. A record that cannot be read is logged
        and left alone: one damaged file must not keep the agent from starting."""
        jobs = []
        try:
            names = sorted(p.name for p in self.dir.iterdir() if _FILE_RE.match(p.name))
        except OSError as exc:
            raise StoreError(f"cannot list the job directory {self.dir}: "
                             f"{exc.strerror or exc}") from exc
        for name in names:
            path = self.dir / name
            try:
                job = Job.from_dict(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("jobs: ignoring unreadable job record %s: %s", path, exc)
                continue
            if f"{job.id:08d}.json" != name:
                log.warning("jobs: ignoring %s: it holds job %d", path, job.id)
                continue
            jobs.append(job)
        return jobs

    def highest_id(self) -> int:
        """The highest id with a record, readable or not (a new job must not overwrite it)."""
        try:
            ids = [int(m[1]) for p in self.dir.iterdir() if (m := _FILE_RE.match(p.name))]
        except OSError as exc:
            raise StoreError(f"cannot list the job directory {self.dir}: "
                             f"{exc.strerror or exc}") from exc
        return max(ids, default=0)

    @staticmethod
    def encode(job: Job) -> bytes:
        """The record of ``job`` as it is now (taken on the loop, written later)."""
        return (json.dumps(job.to_dict(), indent=2) + "\n").encode()

    def save(self, job: Job) -> None:
        self.write(job.id, self.encode(job))

    def write(self, job_id: int, data: bytes | None) -> None:
        """Write one record (``None``: delete it). Blocks (fsync): off the loop."""
        if data is None:
            try:
                self._path(job_id).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("jobs: cannot prune job %d: %s", job_id, exc.strerror or exc)
            return
        try:
            atomic_write(self._path(job_id), data, mode=0o640)
        except OSError as exc:
            raise StoreError(f"cannot write job {job_id} to {self.dir}: "
                             f"{exc.strerror or exc}") from exc

    def doomed(self, jobs: list[Job]) -> list[Job]:
        """The jobs that finished first beyond ``keep`` (to be deleted)."""
        finished = sorted((j for j in jobs if not j.active),
                          key=lambda j: (j.finished or j.created, j.id))
        return finished[: max(0, len(finished) - self.keep)]

    def prune(self, jobs: list[Job]) -> list[Job]:
        """Delete the jobs that finished first beyond ``keep``; return the ones deleted."""
        doomed = self.doomed(jobs)
        for job in doomed:
            self.write(job.id, None)
        return doomed
