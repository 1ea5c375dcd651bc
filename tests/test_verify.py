"""The verify stage: the deadline pool with a pathological input, bad inputs, and the CLI."""

import json
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import gft

from gftrepro import schema, store
from gftrepro.answers import STATUSES, judge
from gftrepro.errors import GftError
from gftrepro.pool import TIMED_OUT, DeadlinePool
from gftrepro.verify import VerifyConfig, run


def test_pathological_answer_times_out_within_the_deadline_and_the_pool_goes_on():
    items = [("slow", ("9^{9^{9^{9}}}", "1"))] + [(i, (str(i), str(i))) for i in range(6)]
    got, when = {}, {}
    with DeadlinePool(judge, workers=2, timeout=2.0, preload=["math_verify", "gftrepro.answers"]) as pool:
        t0 = time.monotonic()
        for key, ok, result in pool.run(items):
            got[key], when[key] = (ok, result), time.monotonic() - t0
        assert pool.timeouts in (0, 1)
    ok, result = got["slow"]
    assert result is TIMED_OUT or (ok and result.status == "wrong")
    assert when["slow"] <= 2.0 + 1.0
    assert all(got[i][1].status == "correct" for i in range(6))


def test_a_worker_exception_is_reported_not_raised():
    with DeadlinePool(int, workers=1, timeout=5.0) as pool:
        results = {k: (ok, r) for k, ok, r in pool.run([("a", ("12",)), ("b", ("x",)), ("c", ("3",))])}
    assert results["a"] == (True, 12) and results["c"] == (True, 3)
    assert results["b"][0] is False and "ValueError" in results["b"][1]


def fake_sampling_run(run: Path, completions: pa.Table | None = None, problems: pd.DataFrame | None = None) -> Path:
    """A complete sample-teacher version written by hand (what the stage would have produced)."""
    v = store.open_version(run, "sample-teacher", {"fake": True}, {}, {"fake": True})
    if problems is None:
        problems = pd.DataFrame({"prompt_id": ["p1", "p2"], "question": ["1+1?", "2+2?"],
                                 "solution": ["\\boxed{2}", "\\boxed{4}"], "answer": ["2", None]})
    store.write_table(v.path / "problems.parquet", pa.Table.from_pandas(problems, preserve_index=False))
    if completions is None:
        completions = pa.table({"prompt_id": ["p1", "p1", "p2", "p2"], "sample_idx": [0, 1, 0, 1],
                                "completion": ["\\boxed{2}", "", "The answer is 4", "x" * 100_000]})
    store.write_table(v.shard_path(0, 1), completions)
    store.finalize(v, 1, {"summary": {}})
    return v.path


def rewards(run: Path) -> pd.DataFrame:
    (v,) = (run / "verify").iterdir()
    return pd.concat([pd.read_parquet(p) for p in sorted(v.glob("shard-*.parquet"))], ignore_index=True)


def test_stage_scores_experts_and_completions_with_statuses(tmp_path):
    fake_sampling_run(tmp_path)
    manifest = run(VerifyConfig(sources=["expert", "teacher"], workers=1), tmp_path)
    df = rewards(tmp_path)
    assert list(df.source) == ["expert", "expert", "teacher", "teacher", "teacher", "teacher"]
    assert list(df.status) == ["correct", "correct", "correct", "no_answer", "correct", "no_answer"]
    assert list(df.gold) == ["2", "4", "2", "2", "4", "4"]  # p2's gold comes from its solution's box
    assert df.reward.tolist() == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert manifest["summary"]["by_source"]["teacher"]["correct"] == 2


def test_missing_completion_column_names_file_and_column(tmp_path):
    fake_sampling_run(tmp_path, completions=pa.table({"prompt_id": ["p1"], "sample_idx": [0], "text": ["2"]}))
    with pytest.raises(GftError, match=r"shard-00000-of-00001.parquet has no column 'completion'"):
        run(VerifyConfig(sources=["teacher"], workers=1), tmp_path)
    assert not any(p.name == "manifest.json" for p in (tmp_path / "verify").rglob("*"))


def test_no_gold_answers_at_all_is_an_error(tmp_path):
    problems = pd.DataFrame({"prompt_id": ["p1"], "question": ["?"], "solution": [None], "answer": [None]},
                            dtype=object)
    fake_sampling_run(tmp_path, problems=problems)
    with pytest.raises(GftError, match="no gold answers"):
        run(VerifyConfig(sources=["teacher"], workers=1), tmp_path)


def test_non_string_and_invalid_utf8_completions_never_crash(tmp_path):
    raw = pa.array([b"\\boxed{2}", b"\xff\xfe bad", b"\\boxed{4}"], type=pa.binary())
    table = pa.table({"prompt_id": ["p1", "p1", "p2"], "sample_idx": [0, 1, 0], "completion": raw})
    fake_sampling_run(tmp_path, completions=table)
    try:
        run(VerifyConfig(sources=["teacher"], workers=1), tmp_path)
    except GftError as e:  # a structural problem is one clear error naming the file
        assert "shard-00000-of-00001.parquet" in str(e)
    else:
        assert set(rewards(tmp_path).status) <= {"error", "correct", "wrong", "no_answer"}


@pytest.mark.slow
def test_cli_verify_on_the_embedded_default_and_second_run(tmp_path):
    small = ["--limit", "16", "--shard-size", "8", "--max-new-tokens", "16", "--run", str(tmp_path)]
    gft("sample-teacher", *small, check=True)
    gft("sample-self", *small, check=True)
    first = gft("verify", "--run", str(tmp_path), "--workers", "2", "--timeout", "5", check=True)
    assert "correct: expert 100%" in first.stdout and "scored" in first.stdout
    df = rewards(tmp_path)
    assert (df[df.source == "expert"].status == "correct").all()  # every bundled expert solution verifies
    assert len(df) == 16 + 16 * 3 + 16 * 4
    assert set(df.status) <= set(STATUSES)
    second = gft("verify", "--run", str(tmp_path), check=True)
    assert "nothing to do" in second.stdout
    (v,) = (tmp_path / "verify").iterdir()
    assert json.loads((v / "manifest.json").read_text())["inputs"].keys() == {"sample-teacher", "sample-self"}


@pytest.mark.slow
def test_cli_verify_without_sampling_is_a_clear_error(tmp_path):
    proc = gft("verify", "--run", str(tmp_path))
    assert proc.returncode == 2 and "run `gft sample-teacher` first" in proc.stderr
    proc = gft("verify", "--run", str(tmp_path), "--sources", "expert,oracle")
    assert proc.returncode == 2 and "sources must be" in proc.stderr


def test_written_rewards_match_the_schema(tmp_path):
    fake_sampling_run(tmp_path)
    run(VerifyConfig(workers=1, sources=["teacher"]), tmp_path)
    (v,) = (tmp_path / "verify").iterdir()
    assert pq.read_schema(v / "shard-00000-of-00001.parquet").names == schema.REWARDS.names
