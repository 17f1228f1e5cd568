"""Run ``subjectgen`` (``python -m subjectgen_training``) in real subprocesses, optionally under test probes.

A plain module beside the tests (imported as ``from _cli import ...``), not ``conftest``: it imports the same way
wherever pytest is started. Run as a script, it installs the probes named in ``$SUBJECTGEN_TEST_PROBES`` (JSON) and
then runs the real CLI, so a test can observe what the command does from outside:

- ``forbid_model_loads``: any ``from_pretrained`` of a diffusers model or pipeline or a transformers model raises
  :class:`ModelLoadedTooEarly` (a ``BaseException``, so no ``except Exception`` in the code under test hides it).
- ``pause_when``: ``{"dir": D, "name_startswith": P, "count": N}``: after the N-th file whose name starts with P is
  moved into place under D (``os.replace``, as every atomic write ends), the process stops (sleeps) until killed.
  ``{"torch_save_under": P}``: the process stops inside the first ``torch.save`` into a folder whose name starts
  with P, hidden (temporary) or not (a checkpoint half written). Either way the test watches for the file, then sends SIGKILL (or SIGINT): no race with
  the job's own speed. With ``"release_when": F`` the job waits only until file F exists, then carries on: a test
  installs the probe in its own process (:func:`install_probes` with ``monkeypatch.setattr``) to hold a server's
  training thread at a known step while it acts (the web UI's Stop), then lets it go.
- ``fake_hf_api``: ``huggingface_hub.HfApi`` becomes an autospec of the real class (a renamed parameter raises
  ``TypeError``) that records its calls, and the files present at upload time, into the given JSON file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROBES_ENV = "SUBJECTGEN_TEST_PROBES"


class ModelLoadedTooEarly(BaseException):
    """A model was loaded where the test forbids it."""


def cli_env(env: dict | None = None, probes: dict | None = None) -> dict:
    # Under pytest-xdist each worker owns one core: a subprocess with several OpenMP threads fights its sibling.
    threads = {"OMP_NUM_THREADS": "1"} if os.environ.get("PYTEST_XDIST_WORKER") else {}
    full = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", **threads, **(env or {})}
    if probes:
        full[PROBES_ENV] = json.dumps(probes)
    return full


def cli_command(args, probes: dict | None = None) -> list[str]:
    if probes:
        return [sys.executable, str(Path(__file__).resolve()), *args]
    return [sys.executable, "-m", "subjectgen_training", *args]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None,
            probes: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m subjectgen_training`` in a real subprocess; return the CompletedProcess."""
    return subprocess.run(cli_command(args, probes), cwd=cwd or REPO_ROOT, env=cli_env(env, probes),
                          capture_output=True, text=True, timeout=timeout)


def signal_when(args, ready: Callable[[], bool], *, probes: dict, sig: int = signal.SIGKILL, env: dict | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """Start the CLI under ``probes`` (which must hold it at a known point), wait until ``ready()``, send ``sig``
    (SIGKILL by default) and wait for the process to end; return its return code and stderr.

    The probe holds the job, so it cannot finish or move on before the signal lands: no race with its speed."""
    with tempfile.TemporaryFile("w+") as stderr:  # a file, not a pipe: a full pipe would block a chatty job
        # SIGINT back to its default in the child: a shell starts background jobs with it ignored, and a Python
        # started with SIGINT ignored never turns Ctrl-C into KeyboardInterrupt.
        process = subprocess.Popen(cli_command(args, probes), cwd=REPO_ROOT, env=cli_env(env, probes),
                                   stdout=subprocess.DEVNULL, stderr=stderr, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + timeout
            while not ready():
                if process.poll() is not None:
                    stderr.seek(0)
                    raise AssertionError(f"the job ended (rc {process.returncode}) before the signal point: "
                                         + stderr.read()[-3000:])
                if time.monotonic() > deadline:
                    raise AssertionError(f"the signal point was not reached within {timeout} s")
                time.sleep(0.05)
            process.send_signal(sig)
            process.wait(timeout=600)  # only a guard: the job ends after the signal (Ctrl-C lets it wind down)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        stderr.seek(0)
        return subprocess.CompletedProcess(args, process.returncode, None, stderr.read())


# -- the probes (run inside the subprocess) ------------------------------------------------------------------------
# Where each class whose ``from_pretrained`` every model load goes through is defined: diffusers models and pipelines,
# transformers models (tokenizers and scheduler configs are not models and stay loadable).
MODEL_LOAD_ENTRY_POINTS = (("diffusers.models.modeling_utils", "ModelMixin"),
                           ("diffusers.pipelines.pipeline_utils", "DiffusionPipeline"),
                           ("transformers.modeling_utils", "PreTrainedModel"))


def model_load_entry_points() -> list:
    """The classes of :data:`MODEL_LOAD_ENTRY_POINTS` (imports diffusers and transformers)."""
    import importlib

    return [getattr(importlib.import_module(module), name) for module, name in MODEL_LOAD_ENTRY_POINTS]


def _refuse_load(cls, *args, **kwargs):
    raise ModelLoadedTooEarly(f"{cls.__name__}.from_pretrained{args} was called")


def forbid_model_loads(setattr=setattr) -> None:
    """Make every model load raise :class:`ModelLoadedTooEarly`, now (pass ``monkeypatch.setattr`` to undo it later)."""
    for owner in model_load_entry_points():
        setattr(owner, "from_pretrained", classmethod(_refuse_load))


def forbid_model_loads_when_imported() -> None:
    """The same in a subprocess, without importing the libraries first: each class is patched right after the module
    defining it is imported (before any subclass or caller can use it), so a command that stops at a bad input runs
    with the imports it really makes."""
    from subjectgen_training.quiet import after_import

    for module, name in MODEL_LOAD_ENTRY_POINTS:
        after_import(module, lambda loaded, name=name: setattr(getattr(loaded, name), "from_pretrained",
                                                                classmethod(_refuse_load)))


def _hold(release_when: str | None = None) -> None:
    """Stop here until killed or, with ``release_when``, until that file exists (then carry on)."""
    sys.stderr.write("probe: stopped, waiting to be killed\n" if release_when is None
                     else f"probe: stopped until {release_when} exists\n")
    sys.stderr.flush()
    while release_when is None or not Path(release_when).exists():
        time.sleep(3600 if release_when is None else 0.05)


def _pause_when(spec: dict, setattr=setattr) -> None:
    release_when = spec.get("release_when")
    if "torch_save_under" in spec:
        import torch

        prefix, save = spec["torch_save_under"], torch.save

        def paused_save(obj, f, *args, **kwargs):
            if isinstance(f, (str, os.PathLike)) and Path(f).parent.name.lstrip(".").startswith(prefix):
                Path(f).write_bytes(b"")  # the file was opened, nothing written yet
                _hold(release_when)
            return save(obj, f, *args, **kwargs)

        setattr(torch, "save", paused_save)
        return
    folder, prefix, count = Path(spec["dir"]).resolve(), spec["name_startswith"], spec["count"]
    seen, replace = [], os.replace

    def counted_replace(src, dst, *args, **kwargs):
        replace(src, dst, *args, **kwargs)
        dst = Path(dst).resolve()
        if dst.parent == folder and dst.name.startswith(prefix) and dst.name not in seen:
            seen.append(dst.name)
            if len(seen) == count:
                _hold(release_when)

    setattr(os, "replace", counted_replace)


def _fake_hf_api(record: str) -> None:
    from unittest import mock

    import huggingface_hub

    real = huggingface_hub.HfApi
    calls = []

    def make_api(*args, **kwargs):
        real(*args, **kwargs)  # the real constructor accepts these arguments (it does no network I/O)
        api = mock.create_autospec(real, instance=True)

        def create_repo(*a, **k):
            calls.append({"method": "create_repo", "args": list(a), "kwargs": k})
            return f"https://huggingface.co/{k.get('repo_id')}"

        def upload_folder(*a, **k):
            files = sorted(p.name for p in Path(k["folder_path"]).iterdir())
            calls.append({"method": "upload_folder", "args": list(a), "kwargs": k, "files": files})
            return huggingface_hub.CommitInfo(
                commit_url=f"https://huggingface.co/{k['repo_id']}/commit/{'c' * 40}", commit_message="m",
                commit_description="", oid="c" * 40)

        api.create_repo.side_effect = create_repo
        api.upload_folder.side_effect = upload_folder
        return api

    class RecordingHfApi(real):  # a class, so annotations such as `HfApi | None` elsewhere still evaluate
        def __new__(cls, *args, **kwargs):
            return make_api(*args, **kwargs)

    huggingface_hub.HfApi = RecordingHfApi
    import atexit

    atexit.register(lambda: Path(record).write_text(json.dumps(calls, default=str)))


def install_probes(probes: dict, setattr=setattr, subprocess: bool = False) -> None:
    """Install ``probes`` in this process (pass ``monkeypatch.setattr`` to undo them after a test; ``fake_hf_api``
    is for subprocesses only; ``subprocess``: this process is the CLI under test, so a model-load probe waits for the
    libraries' own import instead of importing them)."""
    known = {"forbid_model_loads", "pause_when", "fake_hf_api"}
    if set(probes) - known:
        raise ValueError(f"unknown probes {sorted(set(probes) - known)}; known: {sorted(known)}")
    if probes.get("forbid_model_loads"):
        forbid_model_loads_when_imported() if subprocess else forbid_model_loads(setattr)
    if "pause_when" in probes:
        _pause_when(probes["pause_when"], setattr)
    if "fake_hf_api" in probes:
        _fake_hf_api(probes["fake_hf_api"])


if __name__ == "__main__":
    here = Path(__file__).resolve().parent  # the tests folder is not part of the program under test
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    install_probes(json.loads(os.environ.get(PROBES_ENV, "{}")), subprocess=True)
    from subjectgen_training.cli import main

    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)
