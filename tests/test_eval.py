"""gft eval: benchmark readers on fixture extracts, the CLI, larger k reusing samples, resume, compare."""

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, cli, gft, kill_midway

from gftrepro.answers import score
from gftrepro.errors import GftError
from gftrepro.evalsets import REGISTRY, load_benchmark, resolve_names

FIXTURES = REPO / "tests" / "fixtures" / "benchmarks"
SHIPPED = REPO / "data" / "benchmarks"
EXPECTED_GOLD = {"math500": "\\left( 3, \\frac{\\pi}{2} \\right)", "minerva_math": "1.6", "olympiadbench": "2",
                 "aime24": "204", "aime25": "468", "amc23": "27", "college_math": "10-4 n", "sat_math": "A",
                 "mmlu_stem": "C", "mawps": "43", "svamp": "145", "gsm8k": "18",
                 "gaokao2023en": "\\{x|-2\\leq x < 1\\}"}


@pytest.mark.parametrize("name", sorted(EXPECTED_GOLD))
def test_reader_on_fixture_extract(name):
    problems, source = load_benchmark(REGISTRY[name], str(FIXTURES))
    assert len(problems) == 4 and source.endswith("test.jsonl")
    assert problems[0]["gold"] == EXPECTED_GOLD[name]
    assert all(p["question"].strip() and p["gold"] for p in problems)
    assert score(f"So the answer is $\\boxed{{{problems[0]['gold']}}}$.", problems[0]["gold"]).correct


def test_multiple_choice_questions_show_their_options():
    (q, *_), _ = load_benchmark(REGISTRY["mmlu_stem"], str(FIXTURES))
    assert "\nA. " in q["question"] and "\nD. " in q["question"]
    (s, *_), _ = load_benchmark(REGISTRY["sat_math"], str(FIXTURES))
    assert "A)" in s["question"]


@pytest.mark.parametrize("name", sorted(EXPECTED_GOLD))
def test_reader_parses_the_copy_shipped_in_the_repo(name):
    problems, source = load_benchmark(REGISTRY[name], "")  # no --benchmark-dir: data/benchmarks
    assert source.startswith(str(SHIPPED))
    assert len(problems) >= 29 and all(p["gold"].strip() for p in problems)
    assert ("2 rows without a gold answer skipped" in source) == (name == "gaokao2023en")


def test_unknown_benchmark_lists_the_known_ones_and_missing_files_say_where():
    known = r"\(known: testbed, testbed-probe, testbed-probe-hard, testbed-heldout, math500"
    with pytest.raises(GftError, match=r"unknown benchmark 'math5000' " + known):
        resolve_names(["math5000"])
    assert len(resolve_names(["paper"])) == 11
    with pytest.raises(GftError, match="file not found"):
        load_benchmark(REGISTRY["tabmwp"], str(FIXTURES))
    with pytest.raises(GftError, match="no copy in .* and no hub source known"):
        load_benchmark(REGISTRY["tabmwp"], "")  # the one paper benchmark not shipped


def test_a_missing_field_is_named(tmp_path):
    (tmp_path / "aime24").mkdir()
    (tmp_path / "aime24" / "test.jsonl").write_text(json.dumps({"problem": "x?", "solution": "y"}) + "\n")
    with pytest.raises(GftError, match="row 0: missing or bad field 'answer'"):
        load_benchmark(REGISTRY["aime24"], str(tmp_path))


def eval_args(run: Path, *extra: str) -> list[str]:
    return ["eval", "--run", str(run), "--limit", "12", "--shard-size", "4", "--max-new-tokens", "24",
            "--benchmarks", "testbed", *extra]


def samples(run: Path) -> pd.DataFrame:
    (v,) = (run / "eval").iterdir()
    return pd.concat([pd.read_parquet(p) for p in sorted(v.glob("*/shard-p*.parquet"))], ignore_index=True)


@pytest.mark.slow
def test_cli_eval_then_larger_k_reuses_the_samples(tmp_path):
    first = gft(*eval_args(tmp_path, "--pass-k", "4"), check=True)
    assert "pass@4" in first.stdout and "avg@4" in first.stdout
    before = samples(tmp_path)
    assert len(before) == 12 * 4
    second = gft(*eval_args(tmp_path, "--pass-k", "8"), check=True)
    after = samples(tmp_path)
    assert len(after) == 12 * 8 and "pass@8" in second.stdout
    merged = after.merge(before, on=["prompt_id", "sample_idx"], suffixes=("", "_old"))
    assert len(merged) == 48 and (merged.completion == merged.completion_old).all()  # old samples kept
    (v,) = (tmp_path / "eval").iterdir()
    metrics = json.loads((v / "metrics-n8.json").read_text())
    assert metrics["ks"] == [1, 2, 4, 8] and (v / "passk-n8.png").exists() and (v / "report-n8.md").exists()
    again = gft(*eval_args(tmp_path, "--pass-k", "8"), check=True)
    assert "nothing to sample" in again.stdout


@pytest.mark.parametrize(("extra", "message"), [
    (["--benchmarks", "nope"], "unknown benchmark 'nope'"),
    (["--pass-k", "8", "--n", "4"], "k = 8 > n = 4"),
    (["--n", "0", "--pass-k", "0"], "--pass-k must be at least 1 (got 0)"),
    (["--model", "./missing/model"], "model path does not exist"),
])
def test_cli_bad_input(tmp_path, extra, message):
    proc = cli(*eval_args(tmp_path, *extra))
    assert proc.returncode == 2 and message in proc.stderr
    assert not list(tmp_path.glob("eval/*/manifest.json"))


@pytest.mark.slow
def test_cli_compare_two_models(tmp_path, teacher_path):
    gft(*eval_args(tmp_path / "a", "--pass-k", "4"), check=True)
    gft(*eval_args(tmp_path / "b", "--pass-k", "4", "--model", str(teacher_path)), check=True)
    out = gft("eval", "--run", str(tmp_path), "--compare", f"{tmp_path / 'a' / 'eval'},{tmp_path / 'b' / 'eval'}",
              check=True)
    assert "pass@4" in out.stdout and "testbed" in out.stdout
    assert (tmp_path / "compare" / "compare.md").exists() and (tmp_path / "compare" / "compare.png").exists()


@pytest.mark.slow
def test_sigkill_mid_eval_then_resume_equals_uninterrupted(tmp_path):
    args = ["eval", "--limit", "24", "--shard-size", "2", "--max-new-tokens", "32", "--pass-k", "4",
            "--batch-size", "8"]
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    kill_midway([*args, "--run", str(killed)], killed, "eval/*/*/shard-p*.parquet", 2)
    done = len(list(killed.glob("eval/*/*/shard-p*.parquet")))
    assert 2 <= done < 12 and not list(killed.glob("eval/*/manifest.json"))
    gft(*args, "--run", str(killed), check=True)
    gft(*args, "--run", str(fresh), check=True)
    a = samples(killed).sort_values(["prompt_id", "sample_idx"]).reset_index(drop=True)
    b = samples(fresh).sort_values(["prompt_id", "sample_idx"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
