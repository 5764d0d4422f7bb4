"""The generation queue: one worker thread runs one generation at a time; others wait in order, and past
``max_waiting`` a request is refused with a message (never a crash, never two generations at once)."""

from __future__ import annotations

import queue
import secrets
import sys
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from maskray.errors import MaskrayError


class Busy(MaskrayError):
    """The queue is full."""


class UnknownJob(MaskrayError):
    """A job id the queue does not hold (never made, or forgotten after ``keep`` newer jobs)."""


@dataclass
class Job:
    """One queued generation. ``state``: queued, running, done or failed; ``done``/``total``: sampler steps."""

    id: str
    params: Any
    state: str = "queued"
    done: int = 0
    total: int = 0
    error: str | None = None
    result: Any = None
    created: float = field(default_factory=time.time)
    seconds: float | None = None


class JobQueue:
    """``work(job)`` runs on one worker thread for each submitted job, in order of submission."""

    def __init__(self, work: Callable[[Job], Any], max_waiting: int = 2, keep: int = 32):
        if max_waiting < 0 or keep < 1:
            raise MaskrayError("the queue needs max_waiting >= 0 and keep >= 1")
        self.work, self.max_waiting, self.keep = work, max_waiting, keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="maskray-serve-generate", daemon=True)
        self._thread.start()

    def submit(self, params: Any) -> Job:
        """Queue a job; raises :class:`Busy` when ``max_waiting`` jobs already wait."""
        with self._lock:
            waiting = sum(j.state == "queued" for j in self._jobs.values())
            running = any(j.state == "running" for j in self._jobs.values())
            if running and waiting >= self.max_waiting:
                raise Busy(f"the generator is busy ({waiting} request{'s' * (waiting != 1)} waiting, the most "
                           f"allowed); try again when the current one finishes")
            job = Job(secrets.token_hex(8), params)
            self._jobs[job.id] = job
            self._forget_old()
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJob(f"no generation {job_id[:40]!r} (unknown, or forgotten after {self.keep} newer ones)")
        return job

    def position(self, job: Job) -> int:
        """How many jobs run or wait before ``job`` (0 once it runs)."""
        with self._lock:
            if job.state != "queued":
                return 0
            ahead = 0
            for j in self._jobs.values():
                if j is job:
                    break
                ahead += j.state in ("queued", "running")
            return ahead

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker after the job it runs (waiting jobs are dropped)."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _forget_old(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.state in ("done", "failed")]
        for k in finished[: max(len(self._jobs) - self.keep, 0)]:
            del self._jobs[k]

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            job.state = "running"
            start = time.perf_counter()
            try:
                job.result = self.work(job)
                state, error = "done", None
            except MaskrayError as e:
                state, error = "failed", str(e)
            except Exception as e:  # reported on the page and, with its traceback, on the server's console
                traceback.print_exc(file=sys.stderr)
                state, error = "failed", f"internal error ({type(e).__name__}: {e})"
            job.seconds = time.perf_counter() - start
            job.error, job.state = error, state
