"""One training at a time: a queue served by a background thread of the app's process.

The thread belongs to the server, not to a browser tab, so closing the page never stops a training and reopening it
shows the job again. Training is :func:`subjectgen_training.trainer.loop.train` (the function ``subjectgen train`` calls); Stop asks
the run to end at its next checkpoint (the trainer's ``checkpoint_every``), and Resume queues the same config with
``resume=True``, which continues from that checkpoint as ``subjectgen train --resume`` does.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

logger = logging.getLogger(__name__)


class StopRequested(Exception):
    """Raised from the trainer's step callback to end a run at a checkpoint the user asked to stop at."""


@dataclass
class TrainJob:
    id: int
    subject: str
    config: object  # subjectgen_training.trainer.config.TrainConfig
    prepare: Callable[[], object] | None = None  # e.g. make the regularisation images first; runs in the worker
    state: str = "queued"  # queued | running | stopping | stopped | done | failed
    step: int = 0
    total: int = 0
    first_step: int | None = None  # the step this run started from (after a resume)
    losses: list[tuple[int, float]] = field(default_factory=list)
    started: float | None = None
    finished: float | None = None
    message: str = ""
    stop_requested: bool = False

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running", "stopping")

    def eta_seconds(self) -> float | None:
        if self.started is None or self.first_step is None or self.step <= self.first_step:
            return None
        rate = (time.monotonic() - self.started) / (self.step - self.first_step)
        return rate * (self.total - self.step)


class TrainingQueue:
    """A FIFO of :class:`TrainJob` served by one daemon thread; every method is safe to call from any thread."""

    def __init__(self, train: Callable | None = None):
        self._train = train
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: deque[TrainJob] = deque()
        self._jobs: dict[int, TrainJob] = {}
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._serve, name="subjectgen-training", daemon=True)
        self._thread.start()

    # -- asking ------------------------------------------------------------------------------------------------
    def submit(self, subject: str, config, prepare: Callable[[], object] | None = None) -> TrainJob:
        with self._lock:
            busy = [job for job in self._jobs.values() if job.subject == subject and job.active]
            if busy:
                raise RuntimeError(f"{subject} is already {busy[0].state}; stop it first.")
            job = TrainJob(next(self._ids), subject, config, prepare, total=config.steps or 0)
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._wake.notify()
            return job

    def stop(self, subject: str) -> TrainJob | None:
        with self._lock:
            job = self.latest(subject)
            if job is None or not job.active:
                return None
            if job.state == "queued":
                self._waiting.remove(job)
                job.state, job.message = "stopped", "removed from the queue before it started"
            else:
                job.stop_requested, job.state = True, "stopping"
            return job

    # -- looking -----------------------------------------------------------------------------------------------
    def latest(self, subject: str) -> TrainJob | None:
        jobs = [job for job in self._jobs.values() if job.subject == subject]
        return jobs[-1] if jobs else None

    def latest_subject(self) -> str | None:
        """The subject being trained now, if any: what a reopened page shows."""
        with self._lock:
            active = [job for job in self._jobs.values() if job.state in ("running", "stopping")]
            return active[-1].subject if active else None

    def place(self, job: TrainJob) -> int:
        """1 for the next job to run, 2 behind it, ...; 0 when not waiting."""
        with self._lock:
            return list(self._waiting).index(job) + 1 if job in self._waiting else 0

    def snapshot(self, subject: str) -> TrainJob | None:
        with self._lock:
            job = self.latest(subject)
            return replace(job, losses=list(job.losses)) if job else None

    # -- working -----------------------------------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            with self._lock:
                while not self._waiting:
                    self._wake.wait()
                job = self._waiting.popleft()
                job.state, job.started = "running", time.monotonic()
            self._run(job)

    def _on_step(self, job: TrainJob) -> Callable[[int, dict], None]:
        every = job.config.checkpoint_every

        def on_step(done: int, logs: dict) -> None:
            with self._lock:
                if job.first_step is None:
                    job.first_step, job.started = done - 1, time.monotonic()
                job.step = done
                job.losses.append((done, float(logs.get("loss", float("nan")))))
                stop = job.stop_requested and done < job.total and (not every or done % every == 0)
            if stop:
                raise StopRequested

        return on_step

    def _run(self, job: TrainJob) -> None:
        from subjectgen_diffusers.errors import SubjectgenError

        train = self._train
        if train is None:
            from subjectgen_training.trainer.loop import train
        try:
            if job.prepare is not None:
                job.message = "making the regularisation images"
                job.prepare()
                job.message = ""
            out = train(job.config, on_step=self._on_step(job))
        except StopRequested:
            state, message = "stopped", f"stopped at step {job.step}; its checkpoint is kept: press Resume"
        except SubjectgenError as error:
            state, message = "failed", f"error: {error}"
        except Exception as error:  # noqa: BLE001 - the page shows a message, the log keeps the traceback
            logger.exception("training %s failed", job.subject)
            state, message = "failed", f"error: the training failed ({type(error).__name__}: {error}); see the server log"
        else:
            state, message = "done", f"subject written to {Path(out)}"
        with self._lock:
            job.state, job.message, job.finished = state, message, time.monotonic()
            if state == "done":
                job.step = job.total
