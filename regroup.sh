#!/usr/bin/env bash
# Regroup training/'s top-level modules into packages that read as the architecture (issue 27, item 5):
#   data/      photos, face analysis and prepare, captions, the latent cache, sample photos, the image-side rule
#   models/    built-in and tiny models, a base's parts, token rows, text features, style LoRAs
#   trainer/   the training config, the loop, its input checks and outputs, losses, checkpoints, the output lock
#   sampling/  generate (a subject over prompt sets) and regularize (class images)
#   experiment/ gains the report (report*.py: it reads only the results) and batch.py (many people, same stages)
# Left at the top: the command line (cli, __main__, extras, config_flags) and process settings (threads, quiet).
#
# Pure moves: `git mv` plus rewriting every reference (imports, dotted names in strings, `training/x.py` paths) in
# the repository's text files; no logic changes. Idempotent: a module already moved is skipped. Run from the
# repository root after merging the other branches:  bash regroup.sh && git commit -am "regroup training/"
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"

python3 - <<'PY'
import re
import subprocess
from pathlib import Path

MOVES = {  # old module (under subjectgen_training) -> new module
    "photos": "data.photos",
    "prepare": "data.prepare",
    "faces": "data.faces",
    "captions": "data.captions",
    "latent_cache": "data.latent_cache",
    "sample_photos": "data.sample_photos",
    "resolution": "data.resolution",
    "builtin_models": "models.builtin_models",
    "tiny_models": "models.tiny_models",
    "model_parts": "models.model_parts",
    "token_rows": "models.token_rows",
    "text_features": "models.text_features",
    "style_lora": "models.style_lora",
    "train_config": "trainer.config",
    "trainer": "trainer.loop",
    "losses": "trainer.losses",
    "checkpoints": "trainer.checkpoints",
    "run_lock": "trainer.run_lock",
    "train_inputs": "trainer.inputs",
    "train_outputs": "trainer.outputs",
    "generate": "sampling.generate",
    "regularize": "sampling.regularize",
    "report": "experiment.report",
    "report_tables": "experiment.report_tables",
    "report_markdown": "experiment.report_markdown",
    "report_html": "experiment.report_html",
    "batch": "experiment.batch",
}
DOCS = {
    "data": "Photos in, training data out: photo loading, face analysis and `prepare`, captions, the latent cache.",
    "models": "The models a run uses: built-in and tiny models, a base's parts, token rows, text features, style LoRAs.",
    "trainer": "Training one subject: the typed config, its input checks, the loop, losses, checkpoints, outputs, lock.",
    "sampling": "Images from a model: a subject over prompt sets (`generate`) and class images (`regularize`).",
}
root = Path("training")
if (root / "data" / "__init__.py").exists():
    raise SystemExit("training/ is regrouped already (training/data/ exists): nothing to do.")

# 1. git mv (trainer.py becomes trainer/loop.py: move it aside first, the package takes its name)
if (root / "trainer.py").exists():
    subprocess.run(["git", "mv", "training/trainer.py", "training/_trainer_loop.py"], check=True)
for package, doc in DOCS.items():
    init = root / package / "__init__.py"
    if not init.exists():
        init.parent.mkdir(exist_ok=True)
        init.write_text(f'"""{doc}"""\n', encoding="utf-8")
        subprocess.run(["git", "add", str(init)], check=True)
for old, new in MOVES.items():
    source = root / ("_trainer_loop.py" if old == "trainer" else f"{old}.py")
    target = root / (new.replace(".", "/") + ".py")
    if source.exists() and not target.exists():
        subprocess.run(["git", "mv", str(source), str(target)], check=True)

# 2. rewrite references in every tracked text file
dotted = re.compile(r"\bsubjectgen_training\.(" + "|".join(sorted(MOVES, key=len, reverse=True)) + r")\b(?![\w])")
from_import = re.compile(r"\bfrom subjectgen_training import (" + "|".join(MOVES) + r")\b(?: as (\w+))?")
slash = re.compile(r"\btraining/(" + "|".join(MOVES) + r")\.py\b")
pathlib = re.compile(r'"training" / "(' + "|".join(MOVES) + r')\.py"')


def new_dotted(match: re.Match) -> str:
    return "subjectgen_training." + MOVES[match.group(1)]


def new_from(match: re.Match) -> str:
    package, _, name = MOVES[match.group(1)].rpartition(".")
    alias = match.group(2) or (match.group(1) if name != match.group(1) else None)
    return f"from subjectgen_training.{package} import {name}" + (f" as {alias}" if alias else "")


def new_pathlib(match: re.Match) -> str:
    parts = MOVES[match.group(1)].split(".")
    return '"training" / ' + " / ".join(f'"{p}"' for p in parts[:-1]) + f' / "{parts[-1]}.py"'


files = subprocess.run(["git", "ls-files"], check=True, capture_output=True, text=True).stdout.split()
for name in files:
    path = Path(name)
    if path.suffix not in (".py", ".md", ".cfg", ".toml", ".in", ".yaml", ".txt", ".sh", ".json") or not path.is_file():
        continue
    if name == "regroup.sh":
        continue
    text = path.read_text(encoding="utf-8")
    new = dotted.sub(new_dotted, text)
    new = from_import.sub(new_from, new)
    new = slash.sub(lambda m: "training/" + MOVES[m.group(1)].replace(".", "/") + ".py", new)
    new = pathlib.sub(new_pathlib, new)
    if new != text:
        path.write_text(new, encoding="utf-8")

# 3. the new packages in setup.cfg's list (tests/test_packaging.py checks it against the folders)
cfg = Path("setup.cfg")
text = cfg.read_text(encoding="utf-8")
for package in DOCS:
    line = f"    subjectgen_training.{package}\n"
    if line not in text:
        text = text.replace("    subjectgen_training.evaluation\n", line + "    subjectgen_training.evaluation\n", 1) \
            if package < "evaluation" else text.replace("    subjectgen_training.toy\n", line + "    subjectgen_training.toy\n", 1)
lines = text.splitlines(keepends=True)
start = next(i for i, l in enumerate(lines) if l.startswith("packages ="))
end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("    "))
lines[start + 1:end] = sorted(lines[start + 1:end])
cfg.write_text("".join(lines), encoding="utf-8")
PY
git add -u
echo "regrouped; review with: git status --short && git diff --cached --stat"
