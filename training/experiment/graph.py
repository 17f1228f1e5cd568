"""The stage graph: what an experiment (or a batch of people) must compute, as named stages with their inputs.

A :class:`Stage` is a plain function call (``work``) with a marker file, the settings the marker records, the names
of the stages whose outputs it reads (``needs``) and a ``kind`` (photos, train, generate, ...) that selects its
resources. A stage is done when its marker exists; the marker is written atomically after the stage's outputs, so a
stage stopped half way is simply run again, and a finished stage whose recorded settings differ from the config's is
an error rather than a silent mix of old and new results.

The graph is built once by the runner and handed to an executor (:mod:`subjectgen_training.experiment.executors`):
``local`` calls the stages in the order they were added, in this process; ``ray`` submits them as Ray tasks, each
with its inputs' tasks as arguments, so Ray starts a stage once every stage it needs is done.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from subjectgen_diffusers.atomic_io import atomic_write_json
from subjectgen_diffusers.errors import SubjectgenError

logger = logging.getLogger(__name__)

# Resource classes a config may give resources to (``resources: {train: {num_gpus: 1}}``).
STAGE_KINDS = ("photos", "prepare", "regularize", "train", "generate", "evaluate", "merge")
MAX_RETRIES_LIMIT = 10


class StageSettingsError(SubjectgenError):
    """A finished stage ran with other settings; the message says which and what to delete or change."""


@dataclass
class ResourceSpec:
    """What one stage of a kind asks of a Ray worker (``ray.remote`` options); CPU-only by default."""

    num_cpus: float = 1.0  # also the torch CPU threads of the stage (at least 1)
    num_gpus: float = 0.0  # e.g. 1 for train and generate on a GPU cluster
    memory: int | None = None  # bytes of RAM Ray reserves for the stage (scheduling only)
    max_retries: int = 2  # reruns after a worker crash or an OSError/RuntimeError (bounded: 0-10)

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0 or (self.memory is not None and self.memory <= 0):
            raise SubjectgenError("resources: num_cpus and num_gpus must be >= 0 and memory > 0 bytes.")
        if not 0 <= self.max_retries <= MAX_RETRIES_LIMIT:
            raise SubjectgenError(f"resources: max_retries must be between 0 and {MAX_RETRIES_LIMIT}, "
                                  f"got {self.max_retries}.")

    @property
    def threads(self) -> int:
        return max(1, int(self.num_cpus))


def check_resources(resources: dict[str, ResourceSpec], error: type[Exception]) -> None:
    unknown = sorted(set(resources) - set(STAGE_KINDS))
    if unknown:
        raise error(f"resources: unknown stage kinds {unknown}; kinds are {list(STAGE_KINDS)}.")


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


@dataclass
class Stage:
    name: str  # unique in its graph; reports and logs name a stage by it
    marker: Path  # written (atomically) once the outputs are in place
    settings: dict[str, Any]  # what the marker records; a finished stage with other settings is an error
    work: Callable[[], Any]
    needs: tuple[str, ...] = ()  # stages whose outputs this one reads
    kind: str = "photos"  # one of STAGE_KINDS: selects the resources

    def __post_init__(self) -> None:
        self.settings = jsonable(self.settings)
        if self.kind not in STAGE_KINDS:
            raise ValueError(f"stage {self.name}: unknown kind {self.kind!r}")

    def recorded(self) -> dict[str, Any] | None:
        """The settings of the finished stage (``None`` when it is not done); differing settings raise."""
        if not self.marker.is_file():
            return None
        recorded = json.loads(self.marker.read_text(encoding="utf-8")).get("settings")
        if recorded != self.settings:
            changed = sorted(k for k in set(recorded or {}) | set(self.settings)
                             if (recorded or {}).get(k) != self.settings.get(k))
            raise StageSettingsError(
                f"stage {self.name} already ran in {self.marker.parent.parent} with different settings "
                f"({', '.join(changed)}); use a new --out, or delete {self.marker} (and that stage's outputs) to "
                f"redo it.")
        return recorded

    def is_done(self) -> bool:
        return self.recorded() is not None

    def run(self) -> bool:
        """Run the stage unless it is done with the same settings; return whether it ran."""
        if self.is_done():
            logger.info("[done] %s", self.name)
            return False
        logger.info("[run ] %s", self.name)
        start = time.perf_counter()
        self.work()
        _release_memory()
        atomic_write_json(self.marker, {"stage": self.name, "seconds": round(time.perf_counter() - start, 2),
                                        "settings": self.settings})
        return True


def _release_memory() -> None:
    """Drop the finished stage's models before the next stage loads its own (matters on a GPU)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class StageGraph:
    """Stages in the order they were added; a stage may only need stages added before it (so the order is a
    valid serial schedule)."""

    stages: list[Stage] = field(default_factory=list)

    def add(self, stage: Stage) -> str:
        names = {s.name for s in self.stages}
        if stage.name in names:
            raise ValueError(f"stage {stage.name} is in the graph twice")
        missing = [n for n in stage.needs if n not in names]
        if missing:
            raise ValueError(f"stage {stage.name} needs {missing}, which are not in the graph yet")
        self.stages.append(stage)
        return stage.name

    def __iter__(self):
        return iter(self.stages)

    def __len__(self) -> int:
        return len(self.stages)

    def check_markers(self) -> list[str]:
        """Names of the finished stages; a finished stage with other settings raises before anything runs."""
        return [stage.name for stage in self.stages if stage.is_done()]

    def after_failures(self, failed: set[str]) -> dict[str, list[str]]:
        """For each stage that cannot run because a stage it needs (directly or not) failed: those failed stages."""
        blocked: dict[str, list[str]] = {}
        for stage in self.stages:
            causes = sorted({c for n in stage.needs for c in ([n] if n in failed else blocked.get(n, []))})
            if causes and stage.name not in failed:
                blocked[stage.name] = causes
        return blocked


@dataclass
class StageFailure:
    stage: str
    error: str  # "ExceptionType: message"

    def __str__(self) -> str:
        return f"{self.stage}: {self.error}"


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".strip()


def resources_as_dict(resources: dict[str, ResourceSpec]) -> dict[str, dict[str, Any]]:
    return {kind: dataclasses.asdict(spec) for kind, spec in resources.items()}
