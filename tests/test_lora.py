"""--lora-rank (PEFT): only the adapters train, the reference is the model with adapters off, the saved model is
a plain merged folder both backends load (the adapter beside it), checkpoints hold only adapter and optimizer
state and resume bit-identically after SIGKILL, on-policy training syncs merged weights, bad combinations are
one line."""

import json
import shutil

import pytest
import torch
from conftest import copy_run, gft, kill_midway, weights

from gftrepro.engine.config import TrainConfig
from gftrepro.errors import GftError

LORA = ["--lora-rank", "4", "--lora-alpha", "8"]


@pytest.fixture(scope="module")
def grouped_run(tmp_path_factory, grouped_template):
    return copy_run(grouped_template, tmp_path_factory.mktemp("lora") / "run")


def only_version(run):
    (v,) = [p for p in (run / "train").iterdir() if p.is_dir()]
    return v


@pytest.mark.slow
def test_only_adapters_train_and_the_merged_folder_is_plain(grouped_run, student_path, tmp_path):
    run = copy_run(grouped_run, tmp_path / "run")
    gft("train", "--run", str(run), "--method", "gft", "--max-steps", "2", "--batch-size", "2", "--kl-every", "1",
        *LORA, check=True)
    v = only_version(run)
    base, merged = weights(student_path), weights(v / "model")
    assert set(base) == set(merged)  # the base model's own names: a plain transformers folder
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(k.endswith("proj.weight") for k in changed)  # only adapted linear layers moved
    assert all(torch.equal(base[k], merged[k]) for k in base if "norm" in k or "embed" in k)
    assert not (v / "model" / "adapter_config.json").exists() and (v / "adapter" / "adapter_config.json").exists()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(student_path), v / "adapter")
    remerged = again.merge_and_unload().state_dict()
    for k in changed:
        torch.testing.assert_close(remerged[k], merged[k], rtol=1e-6, atol=1e-6)
    first = json.loads((v / "metrics.jsonl").read_text().splitlines()[0])
    assert abs(first["kl_ref"]) < 1e-7  # the reference is the start (adapters off): B = 0 before the first update
    files = [f["name"] for f in json.loads((v / "manifest.json").read_text())["files"]]
    assert "adapter/adapter_model.safetensors" in files and "model/model.safetensors" in files
    out = gft("eval", "--run", str(run), "--model", str(v / "model"), "--limit", "2", "--pass-k", "1",
              "--max-new-tokens", "16", check=True)
    assert "done:" in out.stdout


@pytest.mark.slow
def test_adapter_checkpoint_resumes_bit_identically_after_sigkill(grouped_run, tmp_path):
    args = ["train", "--method", "dft", "--max-steps", "6", "--batch-size", "4", "--save-every", "2", *LORA]
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    for run in (killed, fresh):
        shutil.copytree(grouped_run, run, ignore=shutil.ignore_patterns("train"))
    kill_midway([*args, "--run", str(killed)], killed, "train/*/checkpoint/trainer_state.json")
    v = only_version(killed)
    from safetensors.torch import load_file

    saved = load_file(str(v / "checkpoint" / "model.safetensors"))
    assert saved and all("lora_" in k for k in saved)  # adapters only, no base weight
    assert "resuming at step" in gft(*args, "--run", str(killed), check=True).stdout
    gft(*args, "--run", str(fresh), check=True)
    a, b = weights(v / "model"), weights(only_version(fresh) / "model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


@pytest.mark.slow
def test_on_policy_training_with_adapters_syncs_merged_weights(grouped_run, tmp_path):
    run = copy_run(grouped_run, tmp_path / "run")
    out = gft("train", "--run", str(run), "--method", "gft", "--online", "--max-steps", "2", "--prompts-per-step",
              "2", "--rollout-max-new-tokens", "16", *LORA, check=True)
    assert "LoRA rank 4" in out.stdout and (only_version(run) / "adapter" / "adapter_config.json").exists()


def test_bad_lora_settings_are_one_line():
    for keys, words in [({"lora_rank": 4, "fsdp": True}, "--lora-rank with --fsdp is not supported"),
                        ({"lora_rank": 4, "lora_dropout": 1.0}, "--lora-dropout in"),
                        ({"lora_rank": -1}, "--lora-rank must be > 0")]:
        with pytest.raises(GftError, match=words):
            TrainConfig(**keys).validate()
    from gftrepro import config as cfg

    assert cfg.versioned_dict(TrainConfig()) == cfg.versioned_dict(TrainConfig(lora_alpha=16.0))  # defaults: old ids


def test_plan_counts_lora_memory():
    from gftrepro import plan as planner

    a = planner.Assumptions(600, 200, 15_000, 80)
    full = planner.memory_note("Qwen/Qwen2.5-Math-7B", a, TrainConfig())
    lora = planner.memory_note("Qwen/Qwen2.5-Math-7B", a, TrainConfig(lora_rank=16, param_dtype="bfloat16"))
    assert "does NOT fit" in full and "LoRA rank 16" in lora and "fits" in lora and "NOT" not in lora


def test_lora_defaults_leave_every_version_id_as_it_was():
    """A list-valued key added with versioned='unless-default' (lora_target) must compare with its factory's
    value: at the defaults, train versions made before LoRA keep their ids."""
    from gftrepro import config as cfg

    assert not {k for k in cfg.versioned_dict(TrainConfig()) if k.startswith("lora")}
    assert "lora_target" in cfg.versioned_dict(TrainConfig(lora_target=["q_proj"]))
