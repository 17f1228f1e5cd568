"""The suite itself: fixtures come from pytest (no test imports conftest), and a hang fails one test, not the run."""

from __future__ import annotations

import ast
import configparser
import subprocess
import sys
import textwrap
from pathlib import Path

from _cli import REPO_ROOT

TESTS = Path(__file__).resolve().parent


def test_no_test_imports_conftest():
    """conftest.py is pytest's to load; importing it makes a second module object (fixtures, state and hooks run
    twice or not at all) and fails wherever the rootdir differs. Shared helpers live in _cli.py / _plugin_fixtures.py."""
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}:{node.lineno} imports {name}" for name in names
                          if name.split(".")[-1] == "conftest" or name.startswith("tests.")]
    assert offenders == []


def configured_timeout() -> float:
    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "setup.cfg")
    return float(parser["tool:pytest"]["timeout"])


def test_every_test_has_a_timeout_from_setup_cfg(pytestconfig):
    """pytest-timeout is configured for every test (setup.cfg); the value fits the slowest legitimate test, the toy
    CI experiment (tests/test_toy_experiment.py), with room for a loaded machine, and stays below the suite's budget."""
    assert pytestconfig.pluginmanager.hasplugin("timeout")
    assert float(pytestconfig.getini("timeout")) == configured_timeout()
    assert 600 <= configured_timeout() <= 1200


def test_a_hanging_test_fails_alone_and_the_run_goes_on(tmp_path):
    """The mechanism, in a separate pytest run with the repository's configuration and a short timeout."""
    (tmp_path / "test_hang.py").write_text(textwrap.dedent("""
        import time

        def test_hangs():
            time.sleep(600)

        def test_after():
            assert True
    """))
    result = subprocess.run([sys.executable, "-m", "pytest", "-c", str(REPO_ROOT / "setup.cfg"), "--rootdir",
                             str(tmp_path), "-o", "timeout=2", "-p", "no:cacheprovider", "-q", str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "Timeout (>2.0s)" in result.stdout and "1 failed, 1 passed" in result.stdout, result.stdout[-2000:]
