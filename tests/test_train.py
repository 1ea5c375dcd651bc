"""gft train on the embedded default: every method, invariants of the loop, resume, two processes."""

import contextlib
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, cli, copy_run, gft, kill_midway, restamp, weights

from gftrepro import store
from gftrepro.engine.batches import collate, tokenize
from gftrepro.engine.config import TrainConfig
from gftrepro.engine.step import backward_step


@pytest.fixture(scope="module")
def grouped_run(tmp_path_factory, grouped_template) -> Path:
    """sample-teacher -> sample-self -> verify -> build-groups on 16 bundled problems (a copy of the session's)."""
    return copy_run(grouped_template, tmp_path_factory.mktemp("trainrun") / "run")


def train_dir(run: Path, method: str) -> Path:
    for v in (run / "train").iterdir():
        m = v / "manifest.json"
        if m.exists() and json.loads(m.read_text())["summary"]["method"] == method:
            return v
    raise AssertionError(f"no complete train version for {method}")


@pytest.mark.slow
def test_every_method_trains_and_writes_a_loadable_checkpoint(grouped_run, student_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for method in ("gft", "sft", "sft-mix", "dft", "gft-no-dcr", "gft-no-gal"):
        gft("train", "--run", str(grouped_run), "--method", method, "--max-steps", "2", "--batch-size", "8",
            "--kl-every", "1", check=True)
        v = train_dir(grouped_run, method)
        metrics = [json.loads(line) for line in (v / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics] == [1, 2]
        for key in ("loss", "lr", "grad_norm", "tokens_per_s", "entropy", "mean_token_prob", "rectified_share",
                    "kl_ref"):
            assert all(key in m for m in metrics), key
        AutoModelForCausalLM.from_pretrained(v / "model")
        assert AutoTokenizer.from_pretrained(v / "model").eos_token == "<|im_end|>"
        assert not (v / "checkpoint").exists()
    gft_metrics = json.loads((train_dir(grouped_run, "gft") / "metrics.jsonl").read_text().splitlines()[0])
    assert "advantage/expert" in gft_metrics and "logprob/self" in gft_metrics
    again = gft("train", "--run", str(grouped_run), "--method", "gft", "--max-steps", "2", "--batch-size", "8",
                "--kl-every", "1", check=True)
    assert "nothing to do" in again.stdout


@pytest.mark.slow
def test_every_parameter_changes_after_two_steps(grouped_run, student_path):
    gft("train", "--run", str(grouped_run), "--method", "sft", "--max-steps", "2", "--batch-size", "8",
        "--lr", "1e-2", "--weight-decay", "0", "--warmup-ratio", "0", check=True)
    before = weights(student_path)
    v = [v for v in (grouped_run / "train").iterdir() if json.loads((v / "config.json").read_text())["config"]["lr"]
         == 1e-2][0]
    after = weights(v / "model")
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, unchanged


@pytest.mark.slow
def test_sampling_from_a_trained_checkpoint(grouped_run):
    model = train_dir(grouped_run, "gft") / "model"
    gft("sample-self", "--run", str(grouped_run), "--model", str(model), "--limit", "4", "--max-new-tokens", "8",
        check=True)


def test_one_batch_of_8_equals_8_micro_batches_of_1(grouped_run, student_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gftrepro import store
    from gftrepro.logprobs import Policy
    from gftrepro.train import read_rows

    tok = AutoTokenizer.from_pretrained(student_path)
    bg = store.latest_complete(grouped_run, "build-groups")
    examples, _ = tokenize(read_rows(bg, "groups")[:8], tok, 512, "keep")
    config = TrainConfig(method="gft", tau=0.7)
    grads = []
    for micro in (8, 1):
        torch.manual_seed(0)
        policy = Policy(AutoModelForCausalLM.from_pretrained(student_path))
        batches = [collate(examples[k : k + micro], tok.pad_token_id, torch.device("cpu")) for k in range(0, 8, micro)]
        n_tokens = sum(len(e.ids) - e.prompt_len for e in examples)
        backward_step(policy, batches, config, n_tokens, 8, 1.0, lambda m: __import__("contextlib").nullcontext())
        grads.append({n: p.grad.clone() for n, p in policy.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method,agg", [("gft", "token-mean"), ("dft", "seq-mean-token-mean"),
                                        ("grpo", "seq-mean-token-sum")])
def test_fused_loss_pass_equals_log_probs_then_loss(grouped_run, student_path, method, agg):
    """The training step with the fused LM-head pass (the default) against --no-fused-loss: the same
    loss, metrics and gradients of every parameter, with micro-batches and a later PPO epoch's old
    log-probs (grpo)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gftrepro import store
    from gftrepro.logprobs import Policy
    from gftrepro.train import read_rows

    tok = AutoTokenizer.from_pretrained(student_path)
    examples, _ = tokenize(read_rows(store.latest_complete(grouped_run, "build-groups"), "groups")[:8], tok, 512,
                           "keep")
    n_tokens = sum(len(e.ids) - e.prompt_len for e in examples)
    results = []
    for fused in (True, False):
        config = TrainConfig(method=method, agg=agg, fused_loss=fused, logprob_chunk=16)
        policy = Policy(AutoModelForCausalLM.from_pretrained(student_path), chunk=16)
        batches = [collate(examples[k : k + 3], tok.pad_token_id, torch.device("cpu")) for k in range(0, 8, 3)]
        if method == "grpo":
            g = torch.Generator().manual_seed(0)
            for b in batches:
                with torch.no_grad():
                    lp, _ = policy(b["input_ids"], b["attention_mask"], b["response_mask"])
                b["old_logprobs"] = lp + 0.3 * torch.randn(lp.shape, generator=g)
        stats = backward_step(policy, batches, config, n_tokens, 8, 2.0,
                              lambda m: __import__("contextlib").nullcontext())
        results.append((stats, {n: p.grad.clone() for n, p in policy.named_parameters()}))
    (fused_stats, fused_grads), (plain_stats, plain_grads) = results
    for key in ("loss", "tokens", "entropy", "prob", "rectified", "clipped"):
        assert fused_stats[key] == pytest.approx(plain_stats[key], rel=1e-5, abs=1e-7), key
    for name in fused_grads:
        # float32 on both sides with the softmax formed in another order (the float64 tests in test_logprobs
        # show the fused pass exact): measured differences up to 2.5e-5 of a tensor's largest entry
        scale = float(plain_grads[name].abs().max())
        torch.testing.assert_close(fused_grads[name], plain_grads[name], atol=1e-4 * scale, rtol=1e-5)


@pytest.mark.slow
def test_compiled_layers_give_the_same_training_step(grouped_run, student_path):
    """--compile (every decoder layer through torch.compile, dynamic shapes): micro-batches of different
    lengths, the same loss, metrics and parameter gradients as eager, and unchanged parameter names."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gftrepro import store
    from gftrepro.engine.trainer import compile_layers
    from gftrepro.logprobs import Policy
    from gftrepro.train import read_rows

    tok = AutoTokenizer.from_pretrained(student_path)
    examples, _ = tokenize(read_rows(store.latest_complete(grouped_run, "build-groups"), "groups")[:8], tok, 512,
                           "keep")
    n_tokens = sum(len(e.ids) - e.prompt_len for e in examples)
    config = TrainConfig(method="gft", logprob_chunk=16)
    results = []
    for compiled in (True, False):
        net = AutoModelForCausalLM.from_pretrained(student_path)
        names = list(net.state_dict())
        if compiled:
            compile_layers(net)
            assert list(net.state_dict()) == names
        policy = Policy(net, chunk=16)
        batches = [collate(examples[k : k + 3], tok.pad_token_id, torch.device("cpu")) for k in range(0, 8, 3)]
        assert len({b["input_ids"].shape[1] for b in batches}) > 1  # micro-batches of different lengths
        stats = backward_step(policy, batches, config, n_tokens, 8, 1.0, lambda m: contextlib.nullcontext())
        results.append((stats, {n: p.grad.clone() for n, p in policy.named_parameters()}))
    (c_stats, c_grads), (e_stats, e_grads) = results
    for key in ("loss", "tokens", "entropy", "prob", "rectified"):
        assert c_stats[key] == pytest.approx(e_stats[key], rel=1e-5, abs=1e-7), key
    for name in e_grads:  # float32 both ways, kernels fused in another order
        scale = float(e_grads[name].abs().max())
        torch.testing.assert_close(c_grads[name], e_grads[name], atol=1e-4 * scale, rtol=1e-5)


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_equals_uninterrupted(grouped_run, tmp_path):
    args = ["train", "--method", "gft", "--max-steps", "8", "--batch-size", "4", "--save-every", "2", "--seed", "7"]
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    for run in (killed, fresh):
        shutil.copytree(grouped_run, run, ignore=shutil.ignore_patterns("train"))
    kill_midway([*args, "--run", str(killed)], killed, "train/*/checkpoint/trainer_state.json")
    (v,) = (killed / "train").iterdir()
    assert (v / "checkpoint").exists() and not (v / "manifest.json").exists()
    assert {p.suffix for p in (v / "checkpoint").iterdir()} == {".json", ".safetensors"}  # nothing pickled
    row = next(r for r in store.status_rows(killed) if r["stage"] == "train")
    assert row["state"] == "partial" and row["shards"].startswith("step ") and row["shards"].endswith("/8")
    marker = tmp_path / "pickle-ran"
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scheduler.bin"):
        (v / "checkpoint" / name).write_bytes(pickle.dumps(Planted(str(marker))))  # what a copied folder may hold
    with open(v / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "lo')  # what a kill during the append leaves
    resumed = gft(*args, "--run", str(killed), check=True)
    assert "resuming at step" in resumed.stdout
    assert not marker.exists()
    gft(*args, "--run", str(fresh), check=True)
    (v_fresh,) = (fresh / "train").iterdir()
    a, b = weights(v / "model"), weights(v_fresh / "model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    steps = [json.loads(line)["step"] for line in (v / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


class Planted:
    """Unpickling this runs a command: resume must never do it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_resuming_with_a_changed_setting_is_refused(grouped_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(grouped_run, run, ignore=shutil.ignore_patterns("train"))
    args = ["train", "--run", str(run), "--max-steps", "4", "--batch-size", "4", "--save-every", "2", "--seed", "3"]
    gft(*args, check=True)
    (v,) = (run / "train").iterdir()
    (v / "manifest.json").unlink()  # pretend the run died after its step-2 checkpoint ...
    ckpt = v / "checkpoint"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 2, "world_size": 2, "config": {}}))
    proc = gft(*args)  # ... under another world size and config
    assert proc.returncode == 2 and "refusing to resume" in proc.stderr


@pytest.mark.slow
def test_two_processes_equal_one_with_the_same_global_batch(grouped_run, tmp_path):
    args = ["-m", "gftrepro.cli", "train", "--method", "gft", "--max-steps", "3", "--batch-size", "8", "--seed", "5"]
    one, two = tmp_path / "one", tmp_path / "two"
    for run in (one, two):
        shutil.copytree(grouped_run, run, ignore=shutil.ignore_patterns("train"))
    subprocess.run([sys.executable, *args, "--run", str(one)], cwd=REPO, check=True, capture_output=True)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *args,
                           "--run-dir", str(two)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (v1,) = (one / "train").iterdir()
    (v2,) = (two / "train").iterdir()
    assert json.loads((v2 / "manifest.json").read_text())["summary"]["world_size"] == 2
    a, b = weights(v1 / "model"), weights(v2 / "model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "ppo"], "unknown method 'ppo'"),
    (["--tau", "1.5"], "tau must be in [0, 1]"),
    (["--method", "gft", "--data", "sft"], "needs groups"),
    (["--param-dtype", "bfloat16", "--dtype", "float32"], "param_dtype bfloat16 computes in bf16"),
    (["--param-dtype", "float16"], "param_dtype must be float32 or bfloat16"),
    (["--optimizer", "adam"], "unknown optimizer 'adam' (known: adamw, adamw8bit)"),
    (["--optimizer", "adamw8bit", "--fsdp"], "optimizer adamw8bit is for one process or DDP"),
    (["--compile", "--fsdp"], "compile with fsdp is not supported yet"),
])
def test_bad_training_input(grouped_run, args, message):
    proc = cli("train", "--run", str(grouped_run), *args)
    assert proc.returncode == 2 and message in proc.stderr


@pytest.mark.slow
def test_nan_advantages_are_refused(grouped_run, tmp_path):
    import pandas as pd

    run = tmp_path / "run"
    shutil.copytree(grouped_run, run, ignore=shutil.ignore_patterns("train"))
    (v,) = (run / "build-groups").iterdir()
    shard = next(v.glob("shard-*.parquet"))
    df = pd.read_parquet(shard)
    df.loc[0, "advantage"] = float("nan")
    df.to_parquet(shard)
    restamp(v)
    proc = gft("train", "--run", str(run), "--max-steps", "1")
    assert proc.returncode == 2 and "is not finite" in proc.stderr
    assert not list(run.glob("train/*/manifest.json"))


@pytest.mark.slow
def test_bf16_parameters_train_and_save_bf16_weights(grouped_run, tmp_path):
    """--param-dtype bfloat16: weights, gradients and AdamW states in bf16 (no fp32 master copy)."""
    from safetensors import safe_open

    run = tmp_path / "run"
    shutil.copytree(grouped_run, run, ignore=shutil.ignore_patterns("train"))
    out = gft("train", "--run", str(run), "--method", "gft", "--max-steps", "2", "--batch-size", "4", "--param-dtype",
              "bfloat16", check=True).stdout
    assert "note: bf16 weights with adamw drop every update below half a bf16 step" in out
    (v,) = (run / "train").iterdir()
    with safe_open(str(v / "model" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    lines = [json.loads(x) for x in (v / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(math.isfinite(m["loss"]) and m["grad_norm"] > 0 for m in lines)


@pytest.mark.slow
def test_adamw8bit_on_bf16_weights_trains_and_resumes_exactly(grouped_run, student_path, tmp_path):
    """--optimizer adamw8bit (torchao: 8-bit states; stochastic rounding of the bf16 weights): a SIGKILLed
    run resumes from its checkpoint (quantized states stored as parts, nothing pickled) bit for bit."""
    args = ["train", "--method", "gft", "--max-steps", "6", "--batch-size", "4", "--save-every", "2", "--seed", "3",
            "--param-dtype", "bfloat16", "--optimizer", "adamw8bit", "--lr", "1e-4"]
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    for run in (killed, fresh):
        shutil.copytree(grouped_run, run, ignore=shutil.ignore_patterns("train"))
    kill_midway([*args, "--run", str(killed)], killed, "train/*/checkpoint/trainer_state.json")
    (v,) = (killed / "train").iterdir()
    assert not (v / "manifest.json").exists()
    from safetensors import safe_open

    with safe_open(str(v / "checkpoint" / "optimizer.safetensors"), "pt") as f:
        codes = [k for k in f.keys() if k.endswith("#codes")]
        assert codes and all(f.get_tensor(k).dtype == torch.uint8 for k in codes)  # 8-bit states, as parts
    resumed = gft(*args, "--run", str(killed), check=True).stdout
    assert "resuming at step" in resumed and "note: bf16 weights" not in resumed
    gft(*args, "--run", str(fresh), check=True)
    (v_fresh,) = (fresh / "train").iterdir()
    a, b, start = weights(v / "model"), weights(v_fresh / "model"), weights(student_path)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert {t.dtype for t in a.values()} == {torch.bfloat16}
    assert all(not torch.equal(a[k], start[k].bfloat16()) for k in a)  # every tensor moved
    lines = [json.loads(x) for x in (v / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, 7)) and all(math.isfinite(m["loss"]) for m in lines)


@pytest.mark.slow
def test_adamw8bit_on_bf16_weights_refuses_several_processes(grouped_run, tmp_path):
    """Each process would draw its own stochastic rounding: DDP replicas would drift apart."""
    run = tmp_path / "run"
    shutil.copytree(grouped_run, run, ignore=shutil.ignore_patterns("train"))
    args = ["train", "--max-steps", "1", "--batch-size", "4", "--param-dtype", "bfloat16", "--optimizer", "adamw8bit"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                           "gftrepro.cli", *args, "--run-dir", str(run)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode != 0 and "adamw8bit on bf16 weights is for one process" in proc.stderr
    assert not list(run.glob("train/*/manifest.json"))


def test_a_tampered_packed_optimizer_state_is_refused(tmp_path):
    """The checkpoint rebuilds only the quantized state classes it knows: a copied folder cannot name another."""
    from gftrepro import checkpoint

    (tmp_path / "optimizer.json").write_text(json.dumps({"param_groups": [], "scalars": {
        "0.exp_avg": {"packed": "os.system", "signed": True, "dtype": "float32"}}}))
    from safetensors.torch import save_file

    save_file({"0.exp_avg#codes": torch.zeros(4, dtype=torch.uint8)}, str(tmp_path / "optimizer.safetensors"))
    with pytest.raises(ValueError, match="unknown packed optimizer state 'os.system'"):
        checkpoint.load_optimizer(tmp_path)


def test_offline_batch_counts_groups_as_on_policy_counts_prompts():
    """Issue 28: batch_size is groups a step (K sequences each on group data), whole groups, every group once
    an epoch; a single-trajectory row is a group of one, so there the batch is sequences as before."""
    from gftrepro.engine.batches import Example, step_batches

    grouped = [Example([1, 2, 3], 1, 0.5, "self", g) for g in range(5) for _ in range(4)]  # 5 groups of K = 4
    steps = step_batches(grouped, 2, 2, seed=0, world=1)
    assert [len(s) for s in steps] == [8, 8, 4] * 2  # 2 groups of 4 a step, 3 steps an epoch
    for s in steps:
        groups = [grouped[i].group for i in s]
        assert all(groups.count(g) == 4 for g in set(groups))  # groups stay whole
    assert sorted(grouped[i].group for s in steps[:3] for i in s) == sorted(e.group for e in grouped)
    single = [Example([1, 2], 1, 1.0, "expert", i) for i in range(10)]
    assert [len(s) for s in step_batches(single, 4, 1, seed=0, world=1)] == [4, 4, 2]


def test_model_folder_has_a_model_card_listed_in_the_manifest(grouped_run, tmp_path):
    """Issue 29: README.md beside the weights: front matter, method and formula, data with a fingerprint of
    the files read, steps and tokens, the last step's metrics, the resolved config; hashed in the manifest."""
    run = copy_run(grouped_run, tmp_path / "run")
    out = gft("train", "--run", str(run), "--method", "gft", "--max-steps", "1", "--batch-size", "2", check=True)
    version = run / "train" / out.stdout.split("gft train ", 1)[1].split()[0]  # the run holds other versions
    text = (version / "model" / "README.md").read_text()
    assert text.startswith("---\nlibrary_name: transformers\nbase_model: \"testbed:student\"")
    assert "sg(p) if p < tau else 1" in text and "groups of build-groups" in text
    assert "fingerprint" in text and "1 optimizer steps" in text and "| loss |" in text and "tau: 0.7" in text
    manifest = json.loads((version / "manifest.json").read_text())
    assert "model/README.md" in [f["name"] for f in manifest["files"]]
    from gftrepro.modelcard import fingerprint

    bg = json.loads((version / "config.json").read_text())["inputs"]["build-groups"]
    assert fingerprint(run, "build-groups", bg, None) in text
