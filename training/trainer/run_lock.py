"""One training run per output folder: ``<out>/train.lock`` holds the writer's PID and host while it trains.

The lock is an advisory ``fcntl.flock`` on that file, which the kernel releases when its process ends in any way
(killed included), so a dead run never leaves the folder stuck and ``--resume`` after a crash simply takes it: a
lock counts only while a live process holds it, whatever the file says. The PID and host written into the file
are for the message a second run prints. The file is removed when the run ends.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from subjectgen_diffusers.errors import SubjectgenError

LOCK_NAME = "train.lock"


class OutputBusyError(SubjectgenError):
    """Another live run is writing the same output folder."""


def check_output_folder(out: Path) -> None:
    """``out`` must be a folder or not exist yet (a file there is the user's, never overwritten)."""
    if out.exists() and not out.is_dir():
        raise SubjectgenError(f"--out {out} is an existing file, not a folder; choose a new folder name for the "
                              f"subject (it is created) or an existing subject folder to resume.")


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    return f"process {info.get('pid', '?')} on host {info.get('host', '?')} (since {info.get('started', '?')})"


@contextmanager
def output_lock(out: str | Path):
    """Hold ``out``'s lock for the block; raise :class:`OutputBusyError` at once if a live run holds it."""
    import fcntl

    out = Path(out)
    check_output_folder(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusyError(
                f"{out} is being written by another training run: {_holder(path)}. Wait for it to finish, stop it, "
                f"or choose another --out.") from None
        try:  # the holder may have removed the file between our open and our lock: then lock the new one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        yield path
    finally:
        try:
            path.unlink(missing_ok=True)
            if created and not any(out.iterdir()):  # a run that failed before writing anything leaves no trace
                out.rmdir()
        finally:
            os.close(fd)
