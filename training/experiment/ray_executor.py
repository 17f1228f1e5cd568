"""Run a stage graph as Ray tasks (``--executor ray``): one ``ray.remote`` task per unfinished stage.

Ray does the scheduling: a stage's task gets the tasks of the stages it needs as arguments, so Ray starts it once
they are done, on a worker with its kind's resources (``resources:`` in the config; 1 CPU and no GPU by default).
A task that crashes its worker, or raises ``OSError``/``RuntimeError`` (a shared-filesystem hiccup, a CUDA
out-of-memory), is retried ``max_retries`` times; then it is reported by stage name and the stages that need it are
not run, while the others go on.

Workers write the stage's outputs and marker into ``--out`` themselves, so every node must see ``--out`` at the same
path (NFS, a mounted bucket). Before any work a probe task on each alive node reads a file the driver wrote there and
writes one back; a node that cannot is refused with a clear error.

Threads: each task runs torch with as many CPU threads as its ``num_cpus`` (at least 1). Results are bit-identical
to ``--executor local`` run with the same count (``subjectgen --threads 1 ...`` for the 1-CPU default): the stages
seed everything themselves, and a stage computes the same whether its process ran other stages before or not.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_training.experiment.graph import ResourceSpec, Stage, StageFailure, StageGraph, describe

logger = logging.getLogger(__name__)

RETRY_EXCEPTIONS = [OSError, RuntimeError]  # SubjectgenError (bad input) is never retried: it would fail again
PROBE_TIMEOUT_S = 120


class SharedStorageError(SubjectgenError):
    """Ray workers cannot see the output folder; the message says what to mount."""


def _stage_task(stage: Stage, threads: int, *inputs: Any) -> str:
    """One stage on a Ray worker (``inputs``: the finished stages it needs, only there to order the tasks)."""
    import torch

    from subjectgen_training.quiet import quiet_libraries

    if not logging.getLogger().handlers:  # the worker's log lines reach the driver's terminal through Ray
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        quiet_libraries()
    torch.set_num_threads(threads)
    stage.run()
    return stage.name


def _probe_task(path: str, expected: str, node: str) -> str:
    """On one node: read the driver's probe file and write a reply beside it; return what went wrong, or ''."""
    probe = Path(path)
    try:
        if probe.read_text(encoding="utf-8") != expected:
            return f"{probe} holds other content there (a different folder at the same path)"
        probe.with_name(f"{probe.name}.{node}").write_text(expected, encoding="utf-8")
    except OSError as error:
        return describe(error)
    return ""


def check_shared_storage(out: Path) -> None:
    """Raise :class:`SharedStorageError` unless a task on every alive node reads and writes ``out``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    out.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    probe = out / f".ray-probe-{token}"
    probe.write_text(token, encoding="utf-8")
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    task = ray.remote(_probe_task)
    refs = {node["NodeManagerAddress"] + " " + node["NodeID"][:12]: task.options(
                num_cpus=0, max_retries=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
                str(probe.resolve()), token, node["NodeID"][:12]) for node in nodes}
    problems = []
    try:
        for where, ref in refs.items():
            try:
                problem = ray.get(ref, timeout=PROBE_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                problem = f"no answer within {PROBE_TIMEOUT_S} s"
            reply = probe.with_name(f"{probe.name}.{where.split()[1]}")
            if not problem and not reply.is_file():
                problem = f"its file {reply.name} did not appear here"
            if problem:
                problems.append(f"node {where}: {problem}")
    finally:
        for path in out.glob(f"{probe.name}*"):
            path.unlink(missing_ok=True)
    if problems:
        raise SharedStorageError(
            f"the Ray workers cannot share --out {out} ({'; '.join(problems)}): put --out on a filesystem every node "
            f"mounts at the same path (NFS, a mounted bucket) and run again (README, 'Scale out').")


def _start(address: str | None, init: dict[str, Any]) -> bool:
    """Connect to (``address``) or start a local Ray; return whether this call started it (and must stop it)."""
    import ray

    if ray.is_initialized():
        return False
    if address is None:
        logger.info("starting a local Ray for this run (stopped after it)")
        ray.init(include_dashboard=False, **init)
    else:
        ray.init(address=address, **init)
    return True


def run_ray(graph: StageGraph, *, out: Path, resources: dict[str, ResourceSpec], address: str | None = None,
            init: dict[str, Any] | None = None) -> list[StageFailure]:
    """Submit every unfinished stage of ``graph`` as a Ray task; wait for all; return the failures."""
    import ray

    started = _start(address, dict(init or {}))
    try:
        check_shared_storage(out)
        task = ray.remote(_stage_task)
        refs: dict[str, Any] = {}
        for stage in graph:
            if stage.is_done():
                continue
            spec = resources.get(stage.kind, ResourceSpec())
            options: dict[str, Any] = {"name": stage.name, "num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus,
                                       "max_retries": spec.max_retries, "retry_exceptions": RETRY_EXCEPTIONS}
            if spec.memory:
                options["memory"] = spec.memory
            inputs = [refs[name] for name in stage.needs if name in refs]
            refs[stage.name] = task.options(**options).remote(stage, spec.threads, *inputs)
        logger.info("submitted %d stage(s) to Ray (%s)", len(refs), _cluster_text())
        return _collect(graph, refs)
    finally:
        if started:
            ray.shutdown()


def _cluster_text() -> str:
    import ray

    total = ray.cluster_resources()
    return f"{len(ray.nodes())} node(s), {total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU"


def _collect(graph: StageGraph, refs: dict[str, Any]) -> list[StageFailure]:
    """Wait for every task; return the failures of the stages that raised (not of those whose inputs failed)."""
    import ray

    names = {ref: name for name, ref in refs.items()}
    pending = list(refs.values())
    errors: dict[str, BaseException] = {}
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        name = names[ready[0]]
        try:
            ray.get(ready[0])
            logger.info("[ok  ] %s", name)
        except ray.exceptions.RayError as error:
            errors[name] = error
    downstream: set[str] = set()
    for stage in graph:
        if any(n in errors or n in downstream for n in stage.needs):
            downstream.add(stage.name)
    failures = []
    for stage in graph:
        if stage.name in errors and stage.name not in downstream:
            error = errors[stage.name]
            cause = getattr(error, "cause", None) or error
            if not isinstance(cause, SubjectgenError):
                logger.error("stage %s failed:\n%s", stage.name, error)
            failures.append(StageFailure(stage.name, describe(cause)))
    return failures

