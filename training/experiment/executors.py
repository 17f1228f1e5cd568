"""Executors of a stage graph: ``local`` (in this process, in order) and ``ray`` (Ray tasks on a cluster).

Both take the same :class:`~subjectgen_training.experiment.graph.StageGraph`, skip the stages whose markers exist,
and return the failures by stage name; a stage whose inputs failed is not run and is reported with them. The driver
(the runner) writes its summary only when nothing failed.

``local`` (today's behaviour, ``--executor local``): the stages run one after another in the order the runner added
them, with the torch threads the CLI chose (``--threads``).

``ray`` (``--executor ray``; :mod:`subjectgen_training.experiment.ray_executor`): every stage is a Ray task whose
arguments are the tasks of the stages it needs, so Ray starts it once they are done. Each runs with its kind's
resources and as many torch threads as its ``num_cpus`` (at least 1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_training.experiment.graph import ResourceSpec, StageFailure, StageGraph, describe

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")


@dataclass
class ExecutorSpec:
    """Which executor runs the graph, and where (``--executor``, ``--ray-address``)."""

    name: str = "local"
    ray_address: str | None = None  # None: start a local Ray for the run and stop it after; "auto": a running one
    ray_init: dict = field(default_factory=dict)  # more ray.init arguments (a local cluster's num_cpus, ...)

    def __post_init__(self) -> None:
        if self.name not in EXECUTORS:
            raise SubjectgenError(f"--executor must be one of {list(EXECUTORS)}, got {self.name!r}.")
        if self.ray_address is not None and self.name != "ray":
            raise SubjectgenError("--ray-address needs --executor ray.")


def run_local(graph: StageGraph) -> list[StageFailure]:
    """Run the graph's stages in order in this process; a stage that raises is recorded and the stages that need
    it are skipped, the others go on."""
    failed: dict[str, StageFailure] = {}
    skipped: set[str] = set()
    for stage in graph:
        if any(n in failed or n in skipped for n in stage.needs):
            skipped.add(stage.name)
            continue
        try:
            stage.run()
        except SubjectgenError as error:
            logger.error("stage %s failed: %s", stage.name, error)
            failed[stage.name] = StageFailure(stage.name, describe(error))
        except Exception as error:  # a bug or a broken input: keep its trace in the log, go on with the others
            logger.exception("stage %s failed", stage.name)
            failed[stage.name] = StageFailure(stage.name, describe(error))
    return list(failed.values())


def run_graph(graph: StageGraph, executor: ExecutorSpec, *, out: Path,
              resources: dict[str, ResourceSpec]) -> list[StageFailure]:
    """Run every unfinished stage of ``graph`` with ``executor``; return the failures (empty when all are done)."""
    done = graph.check_markers()  # a finished stage with other settings stops here, before any work
    logger.info("%d of %d stages already done (%s executor)", len(done), len(graph), executor.name)
    if executor.name == "local":
        return run_local(graph)
    from subjectgen_training.experiment.ray_executor import run_ray

    return run_ray(graph, out=Path(out), resources=resources, address=executor.ray_address,
                   init=executor.ray_init)


def failure_report(graph: StageGraph, failures: list[StageFailure]) -> str:
    """One paragraph: each failed stage with its error, then how many stages waited on them."""
    blocked = graph.after_failures({f.stage for f in failures})
    text = "; ".join(str(f) for f in failures)
    more = f" ({len(blocked)} stage(s) that need them did not run)" if blocked else ""
    return f"{len(failures)} stage(s) failed: {text}{more}"
