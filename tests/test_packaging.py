"""What ``pip install subjectgen-diffusers`` gives a user: import names of its own, declared packages and data,
extras that match the code, and a command that names a missing extra instead of raising ImportError."""

from __future__ import annotations

import argparse
import ast
import configparser
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from _cli import REPO_ROOT, cli_env

from subjectgen_training.cli import COMMANDS
from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_training.extras import COMMAND_EXTRAS, EXTRA_MODULES, OPTION_EXTRAS, require_command_extra


def _setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / "setup.cfg", encoding="utf-8")
    return config


def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip() and not line.strip().startswith("#")]


def _dist_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _extra_dists(extra: str, extras: dict[str, list[str]]) -> set[str]:
    """The distributions an extra installs, following ``subjectgen-diffusers[a,b]`` references."""
    names = set()
    for requirement in extras[extra]:
        own = re.fullmatch(r"subjectgen-diffusers\[([\w,\s]+)\]", requirement)
        if own:
            for inner in own.group(1).split(","):
                names |= _extra_dists(inner.strip(), extras)
        else:
            names.add(_dist_name(requirement))
    return names


def _import_dir(package: str, package_dir: dict[str, str]) -> Path:
    """The folder setuptools takes ``package`` from (longest ``package_dir`` prefix wins)."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in package_dir:
            return REPO_ROOT / package_dir[prefix] / Path(*parts[cut:])
    return REPO_ROOT / Path(*parts)


def test_every_source_folder_is_a_declared_package_under_a_name_of_ours():
    options = _setup_cfg()["options"]
    package_dir = dict(line.split(" = ") for line in _lines(options["package_dir"]))
    packages = _lines(options["packages"])
    assert {p.split(".")[0] for p in packages} == {"subjectgen_diffusers", "subjectgen_training"}
    declared = {_import_dir(p, package_dir).resolve() for p in packages}
    assert all(folder.is_dir() for folder in declared), sorted(map(str, declared - {f for f in declared if f.is_dir()}))
    roots = [REPO_ROOT / "subjectgen_diffusers", REPO_ROOT / "training", REPO_ROOT / "hub_cards"]
    undeclared = []
    for root in roots:
        for folder in [root, *root.rglob("*")]:
            parts = folder.relative_to(root).parts
            if not folder.is_dir() or "__pycache__" in parts or not all(part.isidentifier() for part in parts):
                continue  # toy/weights/toy-base/... is data inside the subjectgen_training.toy.weights package
            if any(child.is_file() for child in folder.iterdir()) and folder.resolve() not in declared:
                undeclared.append(str(folder.relative_to(REPO_ROOT)))
    assert not undeclared, f"add these folders to setup.cfg [options] packages (with their package_data): {undeclared}"


def _third_party_imports(folders: list[Path]) -> set[str]:
    names = set()
    for folder in folders:
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    own = {"subjectgen_diffusers", "subjectgen_training"}
    return {name for name in names if name not in sys.stdlib_module_names and name not in own}


def test_the_plug_in_alone_installs_every_package_it_imports():
    """``pip install subjectgen-diffusers`` (no extra) must be enough to load a subject into a pipeline."""
    required = {_dist_name(line) for line in _lines(_setup_cfg()["options"]["install_requires"])}
    dists = metadata.packages_distributions()
    imports = _third_party_imports([REPO_ROOT / "subjectgen_diffusers", REPO_ROOT / "hub_cards"])
    assert {"torch", "diffusers", "transformers", "safetensors", "huggingface_hub"} <= imports
    undeclared = {name: dists.get(name) for name in imports
                  if not {d.lower().replace("_", "-") for d in dists.get(name, [name])} & required}
    assert not undeclared, f"the plug-in imports these, which setup.cfg install_requires lacks: {undeclared}"


def test_each_extra_installs_the_modules_the_cli_checks_for_it():
    extras = {name: _lines(value) for name, value in _setup_cfg()["options.extras_require"].items()}
    assert {"train", "face", "ui", "demo", "dev"} <= set(extras)
    dists = metadata.packages_distributions()
    for extra, modules in EXTRA_MODULES.items():
        installs = _extra_dists(extra, extras)
        for module in modules:
            assert {d.lower() for d in dists[module]} & installs, f"extra '{extra}' lacks the package of {module}"
    assert {"dlib-bin", "face-recognition-models"} <= _extra_dists("face", extras)
    assert _extra_dists("dev", extras) >= _extra_dists("demo", extras) | _extra_dists("ui", extras)
    # Every command says what it needs; a new command must be added to COMMAND_EXTRAS (None: the plug-in suffices).
    assert set(COMMAND_EXTRAS) == set(COMMANDS)
    assert {extra for extra in COMMAND_EXTRAS.values() if extra} <= set(EXTRA_MODULES)
    for extra, modules in OPTION_EXTRAS.values():
        assert {d.lower() for module in modules for d in dists[module]} <= _extra_dists(extra, extras)


def _run_without(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess where ``module`` cannot be found (as if its extra were not installed)."""
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from subjectgen_training.cli import main\n"
            f"sys.exit(main({list(args)!r}))")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=cli_env(), capture_output=True, text=True,
                          timeout=300)


def test_a_command_whose_extra_is_missing_names_the_extra_to_install(tmp_path):
    result = _run_without("gradio", "ui", "--workdir", str(tmp_path / "ui"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("error: `subjectgen ui` needs the 'ui' extra (gradio not installed): "
                                    'pip install "subjectgen-diffusers[ui]"'), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (tmp_path / "ui").exists()

    result = _run_without("peft", "demo", "--out", str(tmp_path / "demo"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert 'pip install "subjectgen-diffusers[demo]"' in result.stderr and "peft" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "demo").exists()


def test_an_option_that_needs_an_extra_is_checked_only_when_given(monkeypatch):
    """``generate`` runs on the plug-in alone, ``generate --lora`` needs peft (diffusers' LoRA loading)."""
    monkeypatch.setitem(sys.modules, "peft", None)
    require_command_extra("generate", argparse.Namespace(lora=None))
    with pytest.raises(SubjectgenError, match=r"`subjectgen generate --lora` needs the 'train' extra \(peft not "
                                              r'installed\): pip install "subjectgen-diffusers\[train\]"'):
        require_command_extra("generate", argparse.Namespace(lora="style.safetensors"))
