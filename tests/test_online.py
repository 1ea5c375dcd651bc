"""On-policy training (gft --online, grpo): rollouts as artifacts, resume, two processes, chains, bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, gft, kill_midway, prepared_run, weights

from gftrepro.groups import group_advantages
from gftrepro.online import ROLLOUTS

SMALL = ["--limit", "16", "--shard-size", "8", "--max-new-tokens", "32"]
ONLINE = ["--prompts-per-step", "4", "--rollout-max-new-tokens", "32"]


@pytest.fixture(scope="module")
def verified_run(tmp_path_factory) -> Path:
    """sample-teacher -> sample-self -> verify on 16 bundled problems (what on-policy training reads)."""
    return prepared_run(tmp_path_factory.mktemp("onlinerun"), SMALL)


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("train"))
    return dst


def only_version(run: Path) -> Path:
    (v,) = (run / "train").iterdir()
    return v


def rollouts(v: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted((v / "rollouts").glob("step-*.parquet"))])


@pytest.mark.slow
@pytest.mark.parametrize(("method", "k", "sources"), [("gft", 8, {"expert": 1, "teacher": 3, "self": 4}),
                                                      ("grpo", 8, {"self": 8})])
def test_online_training_writes_rollouts_metrics_and_a_loadable_model(verified_run, tmp_path, method, k, sources):
    from transformers import AutoModelForCausalLM

    run = copy_run(verified_run, tmp_path / "run")
    args = ["train", "--run", str(run), "--method", method, "--max-steps", "3", *ONLINE, "--kl-every", "1"]
    if method == "gft":
        args.append("--online")
    gft(*args, check=True)
    v = only_version(run)
    df = rollouts(v)
    assert list(df.columns) == ROLLOUTS.names
    assert sorted(df["step"].unique()) == [1, 2, 3]
    for _, g in df.groupby("group_id"):
        assert len(g) == k and g["source"].value_counts().to_dict() == sources
        expected = group_advantages(g["reward"].to_numpy(), "unbiased", 1e-6)
        np.testing.assert_allclose(g["advantage"].to_numpy(), expected, rtol=1e-6, atol=1e-6)
    assert df["prompt_id"].nunique() == 12  # 3 steps x 4 distinct prompts of the 16
    metrics = [json.loads(x) for x in (v / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for key in ("loss", "entropy", "rectified_share", "kl_ref", "reward/self", "zero_variance_share",
                "sample_seconds", "verify_seconds", "update_seconds"):
        assert all(key in m for m in metrics), key
    assert metrics[0]["reward/self"] == pytest.approx(df[(df.step == 1) & (df.source == "self")]["reward"].mean())
    AutoModelForCausalLM.from_pretrained(v / "model")
    manifest = json.loads((v / "manifest.json").read_text())
    assert manifest["summary"]["online"] and manifest["inputs"]["verify"]
    assert "nothing to do" in gft(*args, check=True).stdout


@pytest.mark.slow
def test_sigkill_mid_online_training_then_resume_equals_uninterrupted(verified_run, tmp_path):
    args = ["train", "--method", "gft", "--online", "--max-steps", "6", "--save-every", "2", "--seed", "7", *ONLINE]
    killed, fresh = copy_run(verified_run, tmp_path / "killed"), copy_run(verified_run, tmp_path / "fresh")
    kill_midway([*args, "--run", str(killed)], killed, "train/*/checkpoint/trainer_state.json")
    v = only_version(killed)
    assert (v / "checkpoint").exists() and not (v / "manifest.json").exists()
    resumed = gft(*args, "--run", str(killed), check=True)
    assert "resuming at step" in resumed.stdout
    gft(*args, "--run", str(fresh), check=True)
    v_fresh = only_version(fresh)
    a, b = weights(v / "model"), weights(v_fresh / "model")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    pd.testing.assert_frame_equal(rollouts(v).reset_index(drop=True), rollouts(v_fresh).reset_index(drop=True))
    assert [json.loads(x)["step"] for x in (v / "metrics.jsonl").read_text().splitlines()] == list(range(1, 7))


@pytest.mark.slow
def test_two_processes_equal_one_online(verified_run, tmp_path):
    """Each process samples its share of the step's prompts (whole groups); global token-mean."""
    args = ["-m", "gftrepro.cli", "train", "--method", "grpo", "--max-steps", "2", "--seed", "5", *ONLINE,
            "--self-k", "4"]
    one, two = copy_run(verified_run, tmp_path / "one"), copy_run(verified_run, tmp_path / "two")
    subprocess.run([sys.executable, *args, "--run", str(one)], cwd=REPO, check=True, capture_output=True)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *args,
                           "--run-dir", str(two)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    v1, v2 = only_version(one), only_version(two)
    assert json.loads((v2 / "manifest.json").read_text())["summary"]["world_size"] == 2
    pd.testing.assert_frame_equal(rollouts(v1).reset_index(drop=True), rollouts(v2).reset_index(drop=True))
    a, b = weights(v1 / "model"), weights(v2 / "model")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_init_from_an_earlier_train_version_chains_sft_then_grpo(verified_run, tmp_path):
    run = copy_run(verified_run, tmp_path / "run")
    gft("build-groups", "--run", str(run), check=True)
    gft("train", "--run", str(run), "--method", "sft", "--max-steps", "2", "--batch-size", "4", check=True)
    (sft,) = [v for v in (run / "train").iterdir()]
    gft("train", "--run", str(run), "--method", "grpo", "--init", sft.name, "--max-steps", "1", *ONLINE, check=True)
    grpo = [v for v in (run / "train").iterdir() if v != sft][0]
    inputs = json.loads((grpo / "manifest.json").read_text())["inputs"]
    assert inputs["model"]["ref"] == str(sft / "model")


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "sft", "--online"], "has no on-policy form"),
    (["--method", "dft", "--online"], "has no on-policy form"),
    (["--method", "grpo", "--self-k", "1"], "grpo needs self_k >= 2"),
    (["--method", "gft", "--online", "--ppo-epochs", "2"], "ppo_epochs > 1 needs"),
    (["--method", "grpo", "--init", "0123456789ab"], "train version 0123456789ab does not exist"),
    (["--method", "grpo", "--init", "no/such/folder"], "neither a train version"),
    (["--method", "grpo", "--lr", "inf"], "lr must be a finite number"),
    (["--method", "sft", "--max-steps", "-5"], "max_steps must be >= 0"),
])
def test_bad_online_input(verified_run, args, message):
    proc = gft("train", "--run", str(verified_run), *args, *ONLINE)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not list(verified_run.glob("train/*/manifest.json"))


def test_init_naming_an_incomplete_version_is_refused(verified_run, tmp_path):
    run = copy_run(verified_run, tmp_path / "run")
    (run / "train" / "abcdefabcdef").mkdir(parents=True)
    proc = gft("train", "--run", str(run), "--method", "grpo", "--init", "abcdefabcdef", *ONLINE)
    assert proc.returncode == 2 and "abcdefabcdef is not complete" in proc.stderr


@pytest.mark.slow
def test_vllm_backend_without_vllm_installed_is_one_line(verified_run, tmp_path):
    run = copy_run(verified_run, tmp_path / "run")
    code = ("import sys; sys.modules['vllm'] = None; sys.argv = ['gft'] + sys.argv[1:]; "
            "from gftrepro.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code, "train", "--run", str(run), "--method", "grpo",
                           "--rollout-backend", "vllm", *ONLINE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "needs the vllm package" in proc.stderr, proc.stderr
    assert not list(run.glob("train/*/manifest.json"))
