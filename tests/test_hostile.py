"""Hostile inputs and faults, round two (issue 25): each finding of the adversarial probe, as a test that failed
before its fix. Fast and in-process unless the finding is about processes."""

from __future__ import annotations

import builtins
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
