"""The page's generation pipeline: the base model loaded once, one subject loaded into it or none.

The Subjects tab loads and unloads a subject (:meth:`subjectgen_diffusers.SubjectPipeline.load_subject` /
``unload_subject``, which restores the base's exact output); Generate draws the subject's images with it loaded and
the base model's images with it unloaded for that call. One lock orders every use: the page's requests may come from
several threads.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Loaded:
    name: str  # the subject's name in the workdir
    path: Path  # its subject folder
    token: str  # the token its prompts use
    scale: float
    stamp: tuple  # its files' names and modification times: a subject trained again is loaded again


def files_stamp(path: Path) -> tuple:
    return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in Path(path).iterdir() if p.is_file()))


class GenerationPipeline:
    def __init__(self, base: str):
        self.base = base
        self.lock = threading.RLock()
        self._pipe = None
        self.loaded: Loaded | None = None

    @property
    def pipe(self):
        """The base model's :class:`SubjectPipeline`, built on first use (as ``subjectgen generate`` builds it)."""
        if self._pipe is None:
            from subjectgen_training.sampling.generate import GenerateConfig, load_pipeline

            self._pipe = load_pipeline(GenerateConfig(base=self.base, prompts="{}", out="unused"))
        return self._pipe

    def load(self, name: str, path: Path, scale: float = 1.0) -> Loaded:
        """Load the subject at ``path`` (replacing the one loaded before), or set its scale if it is the loaded one."""
        from subjectgen_diffusers.subject_check import check_subject

        with self.lock:
            path = Path(path)
            if self.loaded is not None and self.loaded.path == path and self.loaded.stamp == files_stamp(path):
                if self.loaded.scale != scale:
                    self.pipe.set_subject_scale(self.loaded.token, scale)
                    self.loaded = Loaded(name, path, self.loaded.token, scale, self.loaded.stamp)
                return self.loaded
            check_subject(str(path), self.base)  # damaged files or another base: said before anything changes
            self.unload()
            stamp = files_stamp(path)
            token = self.pipe.load_subject(str(path), scale=scale)
            self.loaded = Loaded(name, path, token, scale, stamp)
            return self.loaded

    def unload(self) -> None:
        with self.lock:
            if self.loaded is not None:
                self.pipe.unload_subject()
                self.loaded = None

    @contextlib.contextmanager
    def without_subject(self):
        """The base model alone for the block (the base images beside the subject's), then the subject back."""
        with self.lock:
            loaded = self.loaded
            self.unload()
            try:
                yield self.pipe
            finally:
                if loaded is not None:
                    self.load(loaded.name, loaded.path, loaded.scale)
