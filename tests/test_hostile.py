"""Hostile inputs and faults, round two (issue 25): each finding of the adversarial probe, as a test that failed
before its fix. Fast and in-process unless the finding is about processes."""

from __future__ import annotations

import builtins
import dataclasses
import json
import threading
from pathlib import Path

import pytest
from conftest import cli

from gftrepro import store
from gftrepro.errors import GftError


def finished_version(run: Path, stage: str = "train") -> store.VersionDir:
    vdir = store.open_version(run, stage, {"method": "sft"}, {}, {"method": "sft"})
    return vdir


def test_a_version_file_linked_outside_the_run_is_never_deleted(tmp_path):
    """Finding 1: model/ a symlink to a folder elsewhere, a file there edited: the rerun removed that file
    outside the run. Now the version is damaged with the reason named, and repair refuses to touch it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text('{"a": 1}')
    vdir = finished_version(tmp_path / "run")
    (vdir.path / "model").symlink_to(elsewhere, target_is_directory=True)
    store.finalize(vdir, 0, {"summary": {}}, [vdir.path / "model" / "config.json"])
    (elsewhere / "config.json").write_text('{"a": 2}')  # same size, other content
    assert any("outside the version folder" in p for p in vdir.problems(hashes=True))
    with pytest.raises(GftError, match="never modifies files outside a run"):
        vdir.repair()
    assert (elsewhere / "config.json").read_text() == '{"a": 2}' and vdir.manifest_path.exists()


def test_a_link_inside_the_version_is_fine(tmp_path):
    vdir = finished_version(tmp_path / "run")
    (vdir.path / "real").mkdir()
    (vdir.path / "real" / "f.txt").write_text("x")
    (vdir.path / "alias").symlink_to(vdir.path / "real", target_is_directory=True)
    store.finalize(vdir, 0, {"summary": {}}, [vdir.path / "alias" / "f.txt"])
    assert vdir.is_complete(hashes=True)


EVIL_CONFIG = {"model_type": "evil_llama", "architectures": ["EvilForCausalLM"],
               "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM",
                            "AutoTokenizer": ["evil.EvilTokenizer", None]}}


def evil_folder(tmp_path: Path) -> tuple[Path, Path]:
    folder, marker = tmp_path / "evil", tmp_path / "code-ran"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(EVIL_CONFIG))
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": EVIL_CONFIG["auto_map"]["AutoTokenizer"]}))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                    "from transformers import PretrainedConfig\n"
                                    "class EvilConfig(PretrainedConfig):\n    model_type = 'evil_llama'\n")
    return folder, marker


def test_a_model_folders_own_code_never_runs(tmp_path, monkeypatch):
    """Finding 2: transformers asked "run the custom code? [y/N]" and ran it on y. Typing y is simulated:
    gft passes trust_remote_code=False, so nothing asks and nothing runs; the load is one clear error."""
    from gftrepro.engine.trainer import load_causal_lm
    from gftrepro.models import load_tokenizer, resolve_model

    folder, marker = evil_folder(tmp_path)
    monkeypatch.setattr(builtins, "input", lambda *a, **k: "y")
    model = resolve_model(str(folder))
    with pytest.raises(GftError, match="could not load"):
        load_tokenizer(model)
    with pytest.raises(GftError, match="could not load model"):
        load_causal_lm(model.path, model.ref)
    assert not marker.exists()


def finishes_within(seconds: float, fn, *args):
    """Run ``fn`` in a daemon thread; None if it did not finish in time (the thread is left to die with the
    process)."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    t.start()
    t.join(seconds)
    return out[0] if out else None


@pytest.mark.parametrize("text, expected", [
    ("\\boxed{" * 100_000, None),  # 800 KB of unclosed boxes: was quadratic (about 30 minutes)
    ("\\boxed{" * 50_000 + "\\boxed{7}", "7"),
    ("\\boxed{7}" + "\\boxed{" * 50_000, "7"),  # the unclosed ones are skipped for the one before
    ("\\boxed " * 50_000 + "\\boxed 9.", "9"),
])
def test_boxed_extraction_is_linear(text, expected):
    """Finding 3: an expert solution of many ``\\boxed{`` took 38.7 s under --timeout 5, in the parent."""
    from gftrepro.answers import extract_answer, last_boxed

    assert finishes_within(20, lambda: (last_boxed(text), extract_answer(text)) or True)
    assert last_boxed(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"), ("\\boxed{a \\{b\\} c}", "a \\{b\\} c"), ("\\fbox{3}", "3"),
    ("\\boxed{1} then \\boxed{2", "1"), ("\\boxed 5$", "5"), ("no box", None), ("\\boxed{}", ""),
])
def test_the_linear_extractor_keeps_the_old_answers(text, expected):
    from gftrepro.answers import last_boxed

    assert last_boxed(text) == expected


@pytest.mark.parametrize("args, message", [
    (["--grad-clip", "-1"], "grad_clip must be a finite number >= 0"),  # finding 7: trained by gradient ascent
    (["--grad-clip", "inf"], "grad_clip must be a finite number >= 0"),
    (["--adam-beta1", "5"], "adam_beta1 and adam_beta2 must be in [0, 1)"),
    (["--weight-decay", "-0.1"], "weight_decay must be a finite number >= 0"),
    (["--seed", "-1"], "seed must be in [0, 2**32)"),
    (["--online", "--verify-timeout", "inf"], "a finite verify_timeout > 0"),
])
def test_numeric_training_settings_are_checked_at_config_time(tmp_path, args, message):
    proc = cli("train", "--run", str(tmp_path / "run"), *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "run" / "train").exists()  # nothing started, nothing partial


def test_verify_timeout_inf_is_one_line(tmp_path):
    """Finding 13: ``verify --timeout inf`` was an internal OverflowError."""
    proc = cli("verify", "--run", str(tmp_path / "run"), "--timeout", "inf")
    assert proc.returncode == 2 and "timeout must be a finite number" in proc.stderr, proc.stderr


@pytest.mark.parametrize("gold", ["nan", "inf", "-Infinity", "\\boxed{nan}"])
def test_a_nan_or_infinite_gold_answer_is_no_gold(gold):
    """Finding 16: ``\\boxed{nan}`` gold answers counted as gold "nan" and scored correct."""
    from gftrepro.answers import finite_gold, gold_answer

    assert finite_gold(gold_answer(gold)) is None
    assert finite_gold(gold_answer("\\boxed{\\infty}")) == "\\infty" and finite_gold("3.5") == "3.5"


def test_one_prompt_near_the_context_end_does_not_empty_its_batch(student_path):
    """Finding 6: the new-token cap came from the padded batch's widest prompt: one over-long question among
    short ones gave every sample of the batch 0 tokens ("100% at the cap")."""
    from gftrepro.backends import Request, SamplingParams
    from gftrepro.backends.hf import HFBackend
    from gftrepro.models import load_tokenizer, resolve_model

    model = resolve_model(str(student_path))
    tok = load_tokenizer(model)
    backend = HFBackend(model, tok, batch_size=64, device="cpu", dtype="float32")
    short = tok("<|im_start|>user\nCompute 3 + 4.<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    long = short * (backend.context_length // len(short) + 1)  # beyond the context: no room at all
    requests = [Request(short, seed) for seed in range(5)] + [Request(long, 99)]
    params = SamplingParams(1.0, 1.0, 12, [tok.eos_token_id], False)
    samples = backend.generate(requests, params, lambda *_: None)
    assert samples[-1].token_ids == [] and samples[-1].finish_reason == "length"
    for s in samples[:-1]:
        assert s.finish_reason == "stop" or len(s.token_ids) == 12, s


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "c.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# a billion laughs in one line: 8 levels of anchors, each nine of the one before (9^8 leaves if expanded)
LAUGHS = "n: [&a [x, x, x, x, x, x, x, x, x], " + ", ".join(
    f"&{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefg", "bcdefgh", strict=True)) + "]\n"


@pytest.mark.parametrize("text, message", [
    (LAUGHS, "config key 'n' must be of type int"),  # finding 12: a 351 MB message
    ("n: " + "9" * 5000 + "\n", "is not valid YAML"),  # finding 13: internal errors before
    (b"n: 2\nmodel: \xff\xfe\n", "is not UTF-8 text"),
    ("n: " + "[" * 10_000 + "]" * 10_000 + "\n", "config file"),
    ("limit: '" + "x" * 200_000 + "'\n", "config key 'limit' must be of type int"),
])
def test_hostile_config_files_are_one_short_line(tmp_path, text, message):
    proc = cli("sample-teacher", "--run", str(tmp_path / "run"), "--config", str(write(tmp_path, text)))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr[:500]
    assert len(proc.stderr) < 1200 and "internal error" not in proc.stderr


def test_an_error_message_is_cut_at_a_thousand_characters():
    from gftrepro.cli import cut
    from gftrepro.errors import shown

    assert cut("x" * 5000).endswith("... (4,000 more characters)") and len(cut("x" * 5000)) < 1100
    assert cut("short") == "short" and len(shown("y" * 10**6)) < 80 and "digits" in shown(10**6000)


def test_a_benchmark_row_with_a_nan_gold_is_skipped_and_counted(tmp_path):
    from gftrepro.evalsets import REGISTRY, load_benchmark

    (tmp_path / "gsm8k").mkdir()
    rows = [{"question": "1 + 4?", "answer": "so #### 5"}, {"question": "0 / 0?", "answer": "#### nan"}]
    (tmp_path / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems, source = load_benchmark(REGISTRY["gsm8k"], str(tmp_path))
    assert [p["gold"] for p in problems] == ["5"] and "1 rows without a gold answer skipped" in source


def test_the_deadline_does_not_count_a_workers_start_up():
    """Finding 5: each worker spent its first item's deadline importing; trivial items came back ``timeout``."""
    from slow_import import echo

    from gftrepro.pool import TIMED_OUT, DeadlinePool

    with DeadlinePool(echo, workers=2, timeout=1.0) as pool:
        got = sorted((key, ok, result is TIMED_OUT) for key, ok, result in pool.run((i, (i,)) for i in range(6)))
    assert got == [(i, True, False) for i in range(6)]
    assert pool.timeouts == 0


ORPHAN_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
from slow_import import spin
from gftrepro.pool import DeadlinePool
with DeadlinePool(spin, workers=2, timeout=600.0) as pool:
    print("running", flush=True)
    for _ in pool.run((i, (i,)) for i in range(2)):
        pass
"""


def marked_processes(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_verifier_workers_die_with_gft(tmp_path, sig):
    """Finding 4: after SIGKILL/SIGTERM of gft the fork server and its workers kept burning CPU for 584 s."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import uuid

    marker = f"GFT_ORPHAN_TEST={uuid.uuid4().hex}"
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1]}
    script = ORPHAN_SCRIPT.format(tests=str(Path(__file__).parent))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "running"
        time.sleep(0.5)
        assert len(marked_processes(marker)) >= 4  # gft, the fork server, two spinning workers
        proc.send_signal(getattr(signal, sig))
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while marked_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marked_processes(marker) == []
    finally:
        for pid in marked_processes(marker):
            os.kill(pid, signal.SIGKILL)
        proc.kill()


@pytest.mark.parametrize(("sig", "word", "code"), [("SIGTERM", "terminated", 143), ("SIGINT", "interrupted", 130)])
def test_sigterm_unwinds_like_sigint_and_says_how_to_resume(sig, word, code):
    """Findings 4 and 15: SIGTERM killed gft silently (no pool shut down, nothing said)."""
    import subprocess
    import sys

    script = ("import os, signal, sys, time\nimport typer\nfrom gftrepro.cli import guarded\ntry:\n"
              f"    guarded(lambda: (os.kill(os.getpid(), signal.{sig}), time.sleep(30)))\n"
              "except typer.Exit as e:\n    sys.exit(e.exit_code)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == code
    assert f"{word}: finished work is kept" in done.stderr and "rerun the same command" in done.stderr


def test_a_copied_run_folder_keeps_its_version_ids(tmp_path):
    """Finding 14: eval versions hashed a trained model's absolute path, so a copied run re-evaluated every model."""
    ids = []
    for name in ("run", "copy of run"):
        run = tmp_path / name
        config = {"model": str(run / "train" / "0123abcd" / "model"), "n": 4}
        inputs = {"model": {"ref": str(run.resolve() / "train" / "0123abcd" / "model"), "fingerprint": "f"}}
        ids.append(store.open_version(run, "eval", config, inputs, config).version)
    assert ids[0] == ids[1]
    other = store.open_version(tmp_path / "run", "eval", {"model": "/elsewhere/model", "n": 4}, {}, {})
    assert other.version != ids[0]  # a path outside the run is hashed as given


def test_shard_bytes_do_not_depend_on_timings(tmp_path):
    """Finding 14: shards carried ``generation_seconds`` in their Parquet metadata, so identical work differed."""
    import pyarrow as pa

    table = pa.table({"x": [1, 2, 3]})
    store.write_table(tmp_path / "a.parquet", table, {"generation_seconds": 1.25})
    store.write_table(tmp_path / "b.parquet", table, {"generation_seconds": 9.5})
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert store.shard_metadata(tmp_path / "b.parquet") == {"generation_seconds": 9.5}


def test_an_eval_at_another_n_in_between_does_not_leak_into_the_result(tmp_path):
    """Finding 8: after ``gft eval --n 8`` on the base, ``gft run``'s n = 4 eval returned the n = 8 metrics."""
    from gftrepro.evaluate import EvalConfig
    from gftrepro.evaluate import run as evaluate

    base = EvalConfig(model="testbed:student", limit=3, shard_size=3, max_new_tokens=8)
    first = evaluate(dataclasses.replace(base, n=4, pass_k=4), tmp_path, show_table=False)
    evaluate(dataclasses.replace(base, n=8, pass_k=8), tmp_path, show_table=False)
    again = evaluate(dataclasses.replace(base, n=4, pass_k=4), tmp_path, show_table=False)
    assert again["metrics"]["n"] == 4 and again["metrics"] == first["metrics"]


def test_a_method_listed_twice_is_refused(tmp_path):
    """Finding 11: ``--methods sft,sft`` counted one model as two seeds (std 0.0, ``seeds: 2``)."""
    out = cli("run", "--run", str(tmp_path / "run"), "--methods", "sft,gft,sft")
    assert out.returncode == 2 and "methods list sft more than once" in out.stderr
    assert not (tmp_path / "run" / "train").exists()


def test_no_groups_says_why_and_what_to_change(grouped_template, tmp_path):
    """Finding 15: too few teacher samples gave ``done: 0/8 groups``, and train said only "every group was dropped"."""
    from conftest import copy_run

    run = copy_run(grouped_template, tmp_path / "run")
    out = cli("build-groups", "--run", str(run), "--teacher", "50")
    assert out.returncode == 0, out.stderr
    assert "dropped: too few teacher completions" in out.stdout and "gft sample-teacher --n" in out.stdout
    version = sorted((run / "build-groups").iterdir(), key=lambda p: p.stat().st_mtime)[-1].name
    out = cli("train", "--run", str(run), "--method", "gft", "--build-groups-version", version, "--max-steps", "1")
    assert out.returncode == 2 and "dropped: too few teacher completions" in out.stderr


def test_compare_refuses_damaged_foreign_and_mismatched_evaluations(tmp_path, monkeypatch):
    """Findings 9, 13 and 17: --compare showed a damaged version, crashed on a corrupt manifest or a train folder,
    printed deltas between evals of 8 and 4 problems, and printed long model paths past 80 columns."""
    from conftest import restamp

    def eval_version(name: str, problems: int, stage: str = "eval") -> Path:
        vdir = store.open_version(tmp_path / name, stage, {"x": name}, {}, {"x": name})
        (vdir.path / "metrics-n4.json").write_text("{}")
        metrics = {"n": 4, "ks": [1], "model": f"/models/{'long-' * 40}{name}",
                   "benchmarks": {"b": {"problems": problems, "pass@1": 0.5}}}
        store.atomic_write_json(vdir.manifest_path, {"stage": stage, "version": vdir.version, "complete": True,
                                                     "metrics": metrics, "files": [], "config": {}, "summary": {}})
        restamp(vdir.path)
        return vdir.path

    a, b, c = eval_version("a", 8), eval_version("b", 4), eval_version("c", 8)
    train = eval_version("t", 8, stage="train")
    out = cli("eval", "--run", str(tmp_path), "--compare", f"{a},{b}")
    assert out.returncode == 2 and "different numbers of problems" in out.stderr
    monkeypatch.setenv("COLUMNS", "80")
    out = cli("eval", "--run", str(tmp_path), "--compare", f"{a},{c}")
    assert out.returncode == 0 and max(len(line) for line in out.stdout.splitlines()) <= 80, out.stdout
    out = cli("eval", "--run", str(tmp_path), "--compare", f"{a},{train}")
    assert out.returncode == 2 and "is a train version, not an evaluation" in out.stderr
    (c / "manifest.json").write_text("{")
    out = cli("eval", "--run", str(tmp_path), "--compare", f"{a},{c}")
    assert out.returncode == 2 and "damaged" in out.stderr


@pytest.mark.parametrize("command", ["sample-teacher", "eval"])
def test_an_absurd_sample_count_is_refused_at_once(tmp_path, command):
    """Finding 13: ``--n 100000000000`` hung building requests."""
    out = cli(command, "--run", str(tmp_path), "--n", "100000000000", "--limit", "2")
    assert out.returncode == 2 and "must be in [1, 100,000]" in out.stderr


def test_gft_status_fits_80_columns(grouped_template, monkeypatch):
    """Finding 17: ``gft status`` forced a 140-column table."""
    monkeypatch.setenv("COLUMNS", "80")
    out = cli("status", "--run", str(grouped_template))
    assert out.returncode == 0, out.stderr
    assert "…" not in out.stdout and max(len(line) for line in out.stdout.splitlines()) <= 80
    assert "build-groups" in out.stdout and "complete" in out.stdout


def test_disk_full_says_so_and_how_to_go_on(monkeypatch):
    """Finding 13: disk full mid-write printed ``internal error: OSError: [Errno 28]`` with no hint."""
    import errno
    import io

    import typer
    from rich.console import Console

    from gftrepro import cli as cli_module

    buf = io.StringIO()
    monkeypatch.setattr(cli_module, "err", Console(file=buf, width=200))

    def full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/run/train/v/model.safetensors")

    with pytest.raises(typer.Exit) as exit_info:
        cli_module.guarded(full)
    assert exit_info.value.exit_code == 1
    line = buf.getvalue().strip()
    assert "disk full writing /run/train/v/model.safetensors: free space and rerun" in line and "\n" not in line
    buf.truncate(0)

    def other() -> None:
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(typer.Exit):
        cli_module.guarded(other)
    assert "internal error: OSError" in buf.getvalue()
