"""Shared fixtures: an isolated model cache and offline hub settings for every test.

The tiny testbed models are built once per test session into a temporary ``GFT_CACHE``;
subprocesses started by tests inherit the same environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("env")
    os.environ["GFT_CACHE"] = str(root / "gft-cache")
    os.environ["HF_HOME"] = str(root / "hf-home")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["VLLM_CACHE_ROOT"] = str(root / "vllm-cache")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


@pytest.fixture(scope="session")
def teacher_path(isolated_env: None) -> Path:
    from gftrepro.testbed.models import ensure_model

    return ensure_model("teacher")


@pytest.fixture(scope="session")
def student_path(isolated_env: None) -> Path:
    from gftrepro.testbed.models import ensure_model

    return ensure_model("student")


def gft(*args: str, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would."""
    proc = subprocess.run([sys.executable, "-m", "gftrepro.cli", *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"gft {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def cli(*args: str) -> subprocess.CompletedProcess:
    """Run the CLI in this process (Typer's CliRunner), for error cases: what the user sees (stdout, stderr,
    exit code) without starting a fresh interpreter. Commands that train, sample or spawn workers use ``gft``."""
    from typer.testing import CliRunner

    from gftrepro.cli import STATE, app

    debug = STATE["debug"]
    try:
        result = CliRunner().invoke(app, list(args), prog_name="gft")
    finally:
        STATE["debug"] = debug
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # an escaped exception is a bug: show it, as a subprocess would print it
    return subprocess.CompletedProcess(["gft", *args], result.exit_code, result.stdout, result.stderr)


def kill_midway(args: list[str], root: Path, pattern: str, at_least: int = 1) -> None:
    """Start ``gft *args``, SIGKILL it as soon as ``root.glob(pattern)`` finds ``at_least`` files."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "gftrepro.cli", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(root.glob(pattern))) < at_least and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def prepared_run(run: Path, small: list[str], groups: bool = False) -> Path:
    """sample-teacher -> sample-self -> verify (-> build-groups) through the CLI on a few bundled problems."""
    gft("sample-teacher", "--run", str(run), *small, check=True)
    gft("sample-self", "--run", str(run), *small, check=True)
    gft("verify", "--run", str(run), check=True)
    if groups:
        gft("build-groups", "--run", str(run), check=True)
    return run


GROUPED = ["--limit", "16", "--shard-size", "8", "--max-new-tokens", "24"]


@pytest.fixture(scope="session")
def grouped_template(tmp_path_factory: pytest.TempPathFactory, isolated_env: None) -> Path:
    """sample-teacher -> sample-self -> verify -> build-groups on 16 bundled problems (``GROUPED``), made once per
    test session. Modules that add versions to a run take their own copy (``copy_run``), never this one."""
    return prepared_run(tmp_path_factory.mktemp("grouped") / "run", GROUPED, groups=True)


def copy_run(template: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(template, dest, symlinks=True)
    return dest


def weights(folder: Path) -> dict:
    """A saved model's tensors, by name."""
    from safetensors.torch import load_file

    return {k: v.clone() for k, v in load_file(str(next(folder.glob("*.safetensors")))).items()}  # not mmapped


def restamp(version: Path) -> None:
    """Record the current sizes and hashes of a version's files in its manifest: a version whose content
    was written wrong by the stage itself (what the stage-level checks must catch), not a damaged one."""
    from gftrepro import store

    path = version / store.MANIFEST
    manifest = json.loads(path.read_text())
    for key in ("shards", "files"):
        manifest[key] = [{**rec, **store.file_record(version / rec["name"], version)} for rec in manifest.get(key, [])]
    path.write_text(json.dumps(manifest))
