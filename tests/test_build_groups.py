"""build-groups: advantages on hand-computed groups, composition, EOS, bad input, and the CLI."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import gft, restamp

from gftrepro import config as cfg
from gftrepro import store
from gftrepro.build_groups import BuildGroupsConfig, run
from gftrepro.errors import GftError
from gftrepro.groups import Candidates, choose, compose, group_advantages

# ---------------------------------------------------------------- advantages


def test_unbiased_std_as_the_authors_code():
    # mean 0.25; unbiased std = sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    np.testing.assert_allclose(group_advantages([1, 0, 0, 0], "unbiased", 0.0), [1.5, -0.5, -0.5, -0.5])
    np.testing.assert_allclose(group_advantages([1, 0, 0, 0], "unbiased", 1e-6),
                               np.array([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-6))


def test_population_std_as_trl_and_mean_centring():
    pop = math.sqrt(0.1875)  # sqrt(mean of squared deviations) for [1, 0, 0, 0]
    np.testing.assert_allclose(group_advantages([1, 0, 0, 0], "population", 1e-4),
                               np.array([0.75, -0.25, -0.25, -0.25]) / (pop + 1e-4))
    np.testing.assert_allclose(group_advantages([1, 1, 0, 0, 0, 0, 0, 0], "none"), [0.75] * 2 + [-0.25] * 6)


def test_eps_matters_and_a_half_split_is_symmetric():
    np.testing.assert_allclose(group_advantages([1, 0, 0, 0], "unbiased", 1.0), [0.5, -1 / 6, -1 / 6, -1 / 6])
    a = group_advantages([1, 1, 1, 1, 0, 0, 0, 0], "unbiased", 0.0)
    # unbiased std = sqrt(2/7), so A = 0.5 / sqrt(2/7) = sqrt(7/8)
    np.testing.assert_allclose(a, [math.sqrt(7 / 8)] * 4 + [-math.sqrt(7 / 8)] * 4)
    assert abs(a.sum()) < 1e-12


@pytest.mark.parametrize("rewards", [[1, 1, 1, 1], [0, 0, 0], [0.5, 0.5], [1]])
def test_all_equal_rewards_and_groups_of_one_give_zero(rewards):
    for std in ("unbiased", "population", "none"):
        a = group_advantages(rewards, std, 1e-6)
        assert np.all(a == 0) and np.all(np.isfinite(a))


# ---------------------------------------------------------------- composition


def cands(n, rewards=None, source="self"):
    rewards = rewards or [0.0] * n
    return [{"sample_idx": i, "completion": f"{source}{i}", "reward": rewards[i], "logprobs": None, "source": source}
            for i in range(n)]


def test_seeded_choice_is_stable_and_depends_on_the_seed():
    pool = cands(10)
    a, b = choose(pool, 4, 0, "p", "self"), choose(pool, 4, 0, "p", "self")
    assert a == b and len(a) == 4 and [c["sample_idx"] for c in a] == sorted(c["sample_idx"] for c in a)
    assert any(choose(pool, 4, s, "p", "self") != a for s in range(1, 5))
    assert choose(pool[:3], 4, 0, "p", "self") == pool[:3]


def test_compose_k8_and_expert_fills():
    pools = Candidates(cands(1, [1.0], "expert"), cands(4, [1.0, 0.0, 1.0, 1.0], "teacher"), cands(6))
    members, reason, fills = compose(pools, BuildGroupsConfig(), "p")
    assert reason == "" and [m["source"] for m in members] == ["expert"] + ["teacher"] * 3 + ["self"] * 4
    two = BuildGroupsConfig(n_expert=2, n_teacher=0, n_self=6)
    members, _, fills = compose(pools, two, "p")
    assert [m["source"] for m in members[:2]] == ["expert", "teacher"] and fills == {"teacher": 1}
    assert members[1]["reward"] == 1.0  # only correct teacher completions fill demonstration slots
    members, _, fills = compose(pools, BuildGroupsConfig(n_expert=3, n_teacher=3, n_self=2), "p")
    assert fills == {"teacher": 1, "repeat": 1}  # one spare correct teacher left after 3 were chosen
    members, reason, _ = compose(pools, BuildGroupsConfig(n_expert=2, n_teacher=0, n_self=2, expert_fill=[]), "p")
    assert members is None and reason == "too few expert solutions"
    members, reason, _ = compose(pools, BuildGroupsConfig(n_self=7), "p")
    assert members is None and reason == "too few self completions"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"n_expert": 0, "n_teacher": 0, "n_self": 0}, "sums to 0"),
    ({"n_expert": 1, "n_teacher": 0, "n_self": 0}, "K >= 2"),
    ({"std": "sample"}, "std must be one of"),
    ({"expert_fill": "teacher,clone"}, "unknown expert_fill 'clone'"),
])
def test_invalid_configs(overrides, message):
    with pytest.raises(GftError, match=message):
        cfg.load(BuildGroupsConfig, None, overrides)


# ---------------------------------------------------------------- the stage on hand-made inputs


def fake_run(run: Path, rewards: list[tuple], finish: str = "stop") -> None:
    """Complete sample-teacher / sample-self / verify versions written by hand.

    ``rewards``: (prompt_id, source, sample_idx, reward, status) rows; completions exist for each
    teacher/self row."""
    problems = pa.table({"prompt_id": ["p1", "p2"], "question": ["1+1?", "2+2?"],
                         "solution": ["So \\boxed{2}.", "So \\boxed{4}."], "answer": ["2", "4"]})
    inputs = {}
    for source in ("teacher", "self"):
        settings = {"model": "testbed:student", "system_prompt": "", "prompt_template": "auto"}
        v = store.open_version(run, f"sample-{source}", settings, {}, settings)
        store.write_table(v.path / "problems.parquet", problems)
        rows = [r for r in rewards if r[1] == source]
        store.write_table(v.shard_path(0, 1), pa.table({
            "prompt_id": [r[0] for r in rows], "sample_idx": pa.array([r[2] for r in rows], pa.int32()),
            "completion": [f"answer {r[3]}" for r in rows], "finish_reason": [finish] * len(rows),
            "logprobs": pa.array([[-0.5, -0.25]] * len(rows), pa.list_(pa.float32()))}))
        store.finalize(v, 1, {"summary": {}})
        inputs[f"sample-{source}"] = v.version
    v = store.open_version(run, "verify", {}, inputs, {})
    store.write_table(v.shard_path(0, 1), pa.table({
        "prompt_id": [r[0] for r in rewards], "sample_idx": pa.array([r[2] for r in rewards], pa.int32()),
        "source": [r[1] for r in rewards], "reward": pa.array([r[3] for r in rewards], pa.float32()),
        "status": [r[4] for r in rewards], "extracted": ["x"] * len(rewards), "gold": ["2"] * len(rewards)}))
    store.finalize(v, 1, {"summary": {}})


def group_rows(p1_self=(1.0, 0.0, 0.0, 0.0), p1_status="correct"):
    rows = [("p1", "expert", 0, 1.0, "correct"), ("p2", "expert", 0, 1.0, "correct")]
    for pid in ("p1", "p2"):
        rows += [(pid, "teacher", i, 1.0, "correct") for i in range(3)]
    rows += [("p1", "self", i, r, p1_status if i == 0 else "correct" if r else "wrong") for i, r in enumerate(p1_self)]
    rows += [("p2", "self", i, 1.0, "correct") for i in range(4)]  # p2: all correct, zero variance
    return rows


def read_groups(run: Path) -> pd.DataFrame:
    (v,) = (run / "build-groups").iterdir()
    return pd.concat([pd.read_parquet(p) for p in sorted(v.glob("shard-*.parquet"))], ignore_index=True)


def test_stage_writes_groups_with_eos_and_counts_zero_variance(tmp_path, student_path):
    from transformers import AutoTokenizer

    fake_run(tmp_path, group_rows())
    manifest = run(BuildGroupsConfig(), tmp_path)
    df = read_groups(tmp_path)
    assert set(df.prompt_id) == {"p1"} and len(df) == 8  # p2's all-correct group is left out
    assert manifest["summary"]["zero_variance"] == {"all correct": 1}
    expected = group_advantages(df.reward.to_numpy(), "unbiased", 1e-6)
    np.testing.assert_allclose(df.advantage, expected, rtol=1e-6)
    tok = AutoTokenizer.from_pretrained(student_path)
    assert df.completion.str.endswith(tok.eos_token).all()
    ids = tok(df.completion[0], add_special_tokens=False)["input_ids"]
    assert ids[-1] == tok.eos_token_id  # EOS is one token the trainer keeps in the loss
    assert df.prompt[0].startswith("<|im_start|>user\n1+1?")
    assert df[df.source == "self"].logprobs.map(len).eq(2).all() and df[df.source == "expert"].logprobs.isna().all()
    (v,) = (tmp_path / "build-groups").iterdir()
    sft, mix = pd.read_parquet(v / "sft.parquet"), pd.read_parquet(v / "sft-mix.parquet")
    assert list(sft.source) == ["expert", "expert"] and len(mix) == 2 + 6 and (sft.advantage == 1.0).all()


def test_keep_zero_variance_and_truncated_self_samples_get_no_eos(tmp_path, student_path):
    fake_run(tmp_path, group_rows(), finish="length")
    run(BuildGroupsConfig(keep_zero_variance=True), tmp_path)
    df = read_groups(tmp_path)
    assert len(df) == 16 and (df[df.prompt_id == "p2"].advantage == 0).all()
    assert not df[df.source == "self"].completion.str.endswith("<|im_end|>").any()
    assert df[df.source == "teacher"].completion.str.endswith("<|im_end|>").all()


def test_error_status_is_excluded_and_counted(tmp_path, student_path):
    fake_run(tmp_path, group_rows(p1_status="error"))
    manifest = run(BuildGroupsConfig(), tmp_path)
    assert manifest["summary"]["excluded"] == {"self error": 1}
    assert manifest["summary"]["dropped"] == {"too few self completions": 1}


@pytest.mark.parametrize("bad", [float("nan"), 1.5, -0.1])
def test_rewards_outside_0_1_are_refused(tmp_path, student_path, bad):
    fake_run(tmp_path, group_rows(p1_self=(bad, 0.0, 0.0, 0.0)))
    with pytest.raises(GftError, match="is not a number in \\[0, 1\\]"):
        run(BuildGroupsConfig(), tmp_path)
    assert not list(tmp_path.glob("build-groups/*/manifest.json"))


def test_rewards_without_a_completion_are_refused(tmp_path, student_path):
    fake_run(tmp_path, group_rows())
    (v,) = (tmp_path / "sample-self").iterdir()
    df = pd.read_parquet(v / "shard-00000-of-00001.parquet")
    df.iloc[1:].to_parquet(v / "shard-00000-of-00001.parquet")
    restamp(v)
    with pytest.raises(GftError, match="matches no completion"):
        run(BuildGroupsConfig(), tmp_path)


@pytest.mark.slow
def test_cli_on_the_embedded_default_with_paper_ratios(tmp_path):
    small = ["--limit", "16", "--shard-size", "8", "--max-new-tokens", "16", "--run", str(tmp_path)]
    gft("sample-teacher", *small, check=True)
    gft("sample-self", *small, "--n", "6", check=True)
    gft("verify", "--run", str(tmp_path), check=True)
    first = gft("build-groups", "--run", str(tmp_path), check=True)
    assert "16/16 groups" in first.stdout
    assert "nothing to do" in gft("build-groups", "--run", str(tmp_path), check=True).stdout
    gft("build-groups", "--run", str(tmp_path), "--expert", "2", "--teacher", "0", "--self", "6", check=True)
    eight = gft("build-groups", "--run", str(tmp_path), "--expert", "8", "--teacher", "0", "--self", "0", check=True)
    assert "0/16 groups (16 zero-var: all correct)" in eight.stdout  # pure imitation carries no group signal
    bad = gft("build-groups", "--run", str(tmp_path), "--expert", "0", "--teacher", "0", "--self", "0")
    assert bad.returncode == 2 and "sums to 0" in bad.stderr
    assert len(list(tmp_path.glob("build-groups/*/manifest.json"))) == 3
