"""Artifacts prove they are complete, and one process writes a version at a time.

Each test first does what a user, a crash or a copy does to a finished run (delete, truncate,
corrupt, run twice at once) and then checks that gft names the damage, refuses to read it, and
repairs it by rerunning the stage, redoing only the damaged parts and losing nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, gft, prepared_run, weights

from gftrepro import locks, store
from gftrepro.errors import GftError

SMALL = ["--limit", "16", "--shard-size", "4", "--max-new-tokens", "16"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    return prepared_run(tmp_path_factory.mktemp("integrity"), SMALL, groups=True)


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    """A private copy of the finished run."""
    shutil.copytree(base_run, tmp_path / "run")
    return tmp_path / "run"


def only_version(run: Path, stage: str) -> Path:
    (v,) = (p for p in (run / stage).iterdir() if p.is_dir())
    return v


def status(run: Path, *extra: str) -> dict[str, str]:
    """{stage: "<state> <what>" of its (last) version}; `gft status` itself must print and exit 0."""
    gft("status", "--run", str(run), *extra, check=True)
    return {r["stage"]: f"{r['state']} {r['what']}" for r in store.status_rows(run, hashes="--verify" in extra)}


def table(path: Path):
    import pyarrow.parquet as pq

    return pq.read_table(path)


@pytest.mark.slow
def test_a_deleted_shard_is_named_refused_downstream_and_redone_alone(run):
    teacher = only_version(run, "sample-teacher")
    others = {p.name: p.stat().st_mtime_ns for p in teacher.glob("shard-*.parquet")}
    lost = table(teacher / "shard-00001-of-00004.parquet")
    (teacher / "shard-00001-of-00004.parquet").unlink()
    del others["shard-00001-of-00004.parquet"]

    assert "damaged" in status(run)["sample-teacher"] and "complete" in status(run)["verify"]
    proc = gft("verify", "--run", str(run), "--workers", "1")
    assert proc.returncode == 2 and "sample-teacher version" in proc.stderr and "is damaged" in proc.stderr
    assert "shard-00001-of-00004.parquet: missing" in proc.stderr

    redo = gft("sample-teacher", "--run", str(run), *SMALL, check=True)
    assert "damaged, redoing" in redo.stdout and "already complete" not in redo.stdout
    assert {p.name: p.stat().st_mtime_ns for p in teacher.glob("shard-*.parquet") if p.name in others} == others
    assert table(teacher / "shard-00001-of-00004.parquet").equals(lost)  # seeded sampling: the same rows
    assert "complete" in status(run)["sample-teacher"]
    gft("verify", "--run", str(run), check=True)


@pytest.mark.slow
def test_a_truncated_shard_is_damaged_and_without_its_manifest_is_not_done(run):
    verify = only_version(run, "verify")
    shard = sorted(verify.glob("shard-*.parquet"))[1]
    good = shard.read_bytes()
    rows = table(shard)
    shard.write_bytes(good[: len(good) // 2])
    row = status(run)["verify"]
    assert "damaged" in row and "bytes, the manifest says" in row
    proc = gft("build-groups", "--run", str(run), "--groups-per-shard", "2")
    assert proc.returncode == 2 and "verify version" in proc.stderr and shard.name in proc.stderr
    assert "internal error" not in proc.stderr

    (verify / "manifest.json").unlink()  # a kill before the manifest: the truncated shard must not count as done
    assert "partial" in status(run)["verify"]
    redo = gft("verify", "--run", str(run), check=True)
    assert "unreadable, redoing" in redo.stdout and shard.name in redo.stdout
    assert table(shard).equals(rows)
    gft("build-groups", "--run", str(run), "--groups-per-shard", "2", check=True)


@pytest.mark.slow
def test_same_size_corruption_is_found_by_hash(run):
    groups = only_version(run, "build-groups")
    shard = sorted(groups.glob("shard-*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert "complete" in status(run)["build-groups"]  # sizes match: only the hashes can tell
    assert "content differs from its sha256" in status(run, "--verify")["build-groups"]
    proc = gft("train", "--run", str(run), "--max-steps", "1")
    assert proc.returncode == 2 and "build-groups version" in proc.stderr and "content differs" in proc.stderr
    assert not (run / "train").exists() or not list((run / "train").glob("*/manifest.json"))


@pytest.mark.slow
@pytest.mark.parametrize("text", ['{"stage": "sample-te', "{}", '{"complete": true, "config": {}, "summary": {}, '
                                  '"shards": [{"name": 3}]}'])
def test_a_corrupt_manifest_marks_one_version_and_status_goes_on(run, text):
    teacher = only_version(run, "sample-teacher")
    (teacher / "manifest.json").write_text(text)
    rows = status(run)
    assert "damaged" in rows["sample-teacher"] and "manifest.json" in rows["sample-teacher"]
    assert "complete" in rows["sample-self"] and "complete" in rows["build-groups"]
    proc = gft("verify", "--run", str(run))
    assert proc.returncode == 2 and "is damaged" in proc.stderr and "internal error" not in proc.stderr
    redo = gft("sample-teacher", "--run", str(run), *SMALL, check=True)
    assert "damaged, redoing" in redo.stdout
    assert "complete" in status(run)["sample-teacher"]


@pytest.mark.slow
def test_a_truncated_model_is_refused_and_retrained(run):
    args = ["train", "--run", str(run), "--method", "sft", "--max-steps", "2", "--batch-size", "4"]
    gft(*args, check=True)
    model = only_version(run, "train") / "model"
    original = weights(model)
    tensors = model / "model.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:1000])
    assert "damaged" in status(run)["train"]
    proc = gft("eval", "--run", str(run), "--model", str(model), "--limit", "2", "--pass-k", "1")
    assert proc.returncode == 2 and "train version" in proc.stderr and "model/model.safetensors" in proc.stderr
    redo = gft(*args, check=True)
    assert "damaged, redoing" in redo.stdout and "already complete" not in redo.stdout
    for name, t in weights(model).items():
        assert t.equal(original[name])


@pytest.mark.slow
def test_damaged_eval_samples_are_resampled(run):
    gft("eval", "--run", str(run), "--limit", "8", "--pass-k", "2", "--shard-size", "4", check=True)
    version = only_version(run, "eval")
    metrics = json.loads(next(version.glob("metrics-n*.json")).read_text())
    shard = sorted(version.rglob("shard-p*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:200])
    assert "damaged" in status(run)["eval"]
    redo = gft("eval", "--run", str(run), "--limit", "8", "--pass-k", "2", "--shard-size", "4", check=True)
    assert "damaged, redoing" in redo.stdout
    assert store.readable_parquet(shard)
    assert json.loads(next(version.glob("metrics-n*.json")).read_text())["benchmarks"] == metrics["benchmarks"]
    assert "complete" in status(run)["eval"]


# ---------------------------------------------------------------- one writer per version


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def plant_lock(vdir: store.VersionDir, pid: int, name: str = ".lock") -> None:
    (vdir.path / name).write_text(json.dumps({"pid": pid, "host": os.uname().nodename, "since": "earlier",
                                              "start": locks.process_start(pid), "command": "gft sample-self"}))


def test_a_live_writer_excludes_a_second_and_a_dead_ones_lock_is_taken_over(tmp_path):
    vdir = store.open_version(tmp_path, "sample-self", {}, {}, {})
    holder = sleeper()
    try:
        plant_lock(vdir, holder.pid)
        with pytest.raises(GftError, match=f"is being written by pid {holder.pid}"), locks.writer_lock(vdir):
            pass
        assert locks.running(vdir)["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    with locks.writer_lock(vdir):  # its holder died: stale, taken over
        assert json.loads((vdir.path / ".lock").read_text())["pid"] == os.getpid()
    assert not (vdir.path / ".lock").exists() and locks.running(vdir) is None


def test_parts_of_a_sharded_stage_write_together_but_never_beside_a_whole_writer(tmp_path):
    vdir = store.open_version(tmp_path, "sample-self", {}, {}, {})
    holder = sleeper()
    try:
        plant_lock(vdir, holder.pid, ".lock-part-0-of-2")
        with locks.writer_lock(vdir, "part-1-of-2"):
            pass  # another part: fine
        with pytest.raises(GftError, match="is being written"), locks.writer_lock(vdir):
            pass
        with pytest.raises(GftError, match="is being written"), locks.writer_lock(vdir, "part-0-of-2"):
            pass
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_two_identical_commands_at_once_one_writes_the_other_says_so(tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "gftrepro.cli", "sample-self", "--run", str(run), "--limit", "512", "--n", "48",
            "--shard-size", "8", "--max-new-tokens", "24"]
    first = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(run.glob("sample-self/*/.lock")) and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, "the first writer ended before the test could start the second"
        second = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and f"is being written by pid {first.pid}" in second.stderr
        assert "running" in status(run)["sample-self"]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    resumed = gft(*args[3:], check=True)  # the killed holder's lock is stale: taken over, work resumed
    assert "resuming" in resumed.stdout or "done" in resumed.stdout
    assert "complete" in status(run)["sample-self"]
