"""The sampling stages through the real CLI, in subprocesses, as a user runs them."""

import hashlib
from pathlib import Path

import pandas as pd
import pytest
from conftest import cli, gft, kill_midway

SMALL = ["--limit", "12", "--shard-size", "4", "--max-new-tokens", "16"]


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def rows(version_dir: Path) -> pd.DataFrame:
    frames = [pd.read_parquet(p) for p in sorted(version_dir.glob("shard-*.parquet"))]
    return pd.concat(frames, ignore_index=True)


def only_version(run: Path, stage: str) -> Path:
    (folder,) = [p for p in (run / stage).iterdir() if p.is_dir()]
    return folder


@pytest.fixture(scope="module")
def done_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    gft("sample-teacher", "--run", str(run), *SMALL, check=True)
    return run


@pytest.mark.slow
def test_sample_teacher_writes_versioned_shards_and_manifest(done_run):
    v = only_version(done_run, "sample-teacher")
    manifest = (v / "manifest.json").read_text()
    assert '"complete": true' in manifest and '"rows": 36' in manifest
    df = rows(v)
    assert len(df) == 36 and set(df.source) == {"teacher"} and df.groupby("prompt_id").size().eq(3).all()
    assert set(df.finish_reason) <= {"stop", "length"} and (df.completion_tokens <= 16).all()
    assert df.prompt.str.startswith("<|im_start|>system\nPlease reason step by step").all()
    assert (v / "problems.parquet").exists() and len(pd.read_parquet(v / "problems.parquet")) == 12


def test_second_run_does_no_work(done_run):
    before = tree_digest(done_run)
    proc = gft("sample-teacher", "--run", str(done_run), *SMALL, check=True)
    assert "nothing to do" in proc.stdout
    assert tree_digest(done_run) == before


@pytest.mark.slow
def test_changed_config_makes_a_new_version_and_keeps_the_old(done_run):
    before = tree_digest(done_run)
    gft("sample-teacher", "--run", str(done_run), *SMALL, "--temperature", "0.7", check=True)
    after = tree_digest(done_run)
    assert all(after[k] == v for k, v in before.items())
    assert len([p for p in (done_run / "sample-teacher").iterdir() if p.is_dir()]) == 2


@pytest.mark.slow
def test_sample_self_from_a_local_checkpoint_folder_and_status(done_run, student_path):
    gft("sample-self", "--run", str(done_run), *SMALL, "--model", str(student_path), "--n", "2", check=True)
    df = rows(only_version(done_run, "sample-self"))
    assert len(df) == 24 and set(df.source) == {"self"} and set(df.model) == {str(student_path)}
    status = gft("status", "--run", str(done_run), check=True).stdout
    assert "sample-self" in status and status.split().count("complete") == 3


def test_status_of_a_missing_run_is_an_error(tmp_path):
    proc = cli("status", "--run", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--question-field", "probem"], "no question field 'probem'; columns: problem, solution, answer"),
    (["--model", "./no/such/model"], "model path does not exist"),
    (["--backend", "tgi"], "unknown backend 'tgi'"),
    (["--n", "0"], "n must be at least 1"),
    (["--dataset", "./missing.jsonl"], "dataset path does not exist"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_marked_complete(done_run, args, message):
    before = tree_digest(done_run)
    proc = cli("sample-teacher", "--run", str(done_run), *SMALL, *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert tree_digest(done_run) == before  # earlier complete shards untouched, no new manifest


@pytest.mark.slow
def test_unknown_config_key_and_unwritable_output(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("n: 2\nmax_tokens: 5\n")
    proc = cli("sample-self", "--run", str(tmp_path / "run"), "--config", str(config))
    assert proc.returncode == 2 and "unknown config key 'max_tokens'" in proc.stderr
    (tmp_path / "file").write_text("x")
    proc = cli("sample-self", "--run", str(tmp_path / "file" / "run"))
    assert proc.returncode == 2 and "is not writable" in proc.stderr
    proc = cli("sample-self", "--run", str(tmp_path / "file"))  # --run naming a file: said so, not "File exists"
    assert proc.returncode == 2 and "file" in proc.stderr and "is a file, not a folder" in proc.stderr
    proc = cli("status", "--run", str(tmp_path / "file"))
    assert proc.returncode == 2 and "is a file, not a run folder" in proc.stderr


def test_debug_flag_shows_the_traceback(tmp_path):
    proc = gft("--debug", "sample-self", "--run", str(tmp_path), "--n", "0")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume_equals_uninterrupted(tmp_path):
    args = ["sample-teacher", "--limit", "48", "--shard-size", "4", "--max-new-tokens", "48", "--batch-size", "4"]
    killed = tmp_path / "killed"
    kill_midway([*args, "--run", str(killed)], killed, "sample-teacher/*/shard-*.parquet", 2)
    v = only_version(killed, "sample-teacher")
    done_before = len(list(v.glob("shard-*.parquet")))
    assert 2 <= done_before < 12 and not (v / "manifest.json").exists()
    resumed = gft(*args, "--run", str(killed), check=True)
    assert f"{done_before} of this process's 12 already done" in resumed.stdout
    fresh = tmp_path / "fresh"
    gft(*args, "--run", str(fresh), check=True)
    v_fresh = only_version(fresh, "sample-teacher")
    assert v_fresh.name == v.name
    pd.testing.assert_frame_equal(rows(v), rows(v_fresh))


@pytest.mark.slow
def test_shards_split_over_processes_equal_one_process(tmp_path):
    split, single = tmp_path / "split", tmp_path / "single"
    first = gft("sample-self", "--run", str(split), *SMALL, "--shard-index", "0", "--num-shards", "2", check=True)
    assert "manifest not written yet" in first.stdout
    assert not (only_version(split, "sample-self") / "manifest.json").exists()
    gft("sample-self", "--run", str(split), *SMALL, "--shard-index", "1", "--num-shards", "2", check=True)
    gft("sample-self", "--run", str(single), *SMALL, check=True)
    a, b = only_version(split, "sample-self"), only_version(single, "sample-self")
    assert a.name == b.name and (a / "manifest.json").exists()
    pd.testing.assert_frame_equal(rows(a), rows(b))
