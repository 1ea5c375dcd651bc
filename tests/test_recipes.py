"""Every paper recipe resolves (no GPU, no network), fits its model's context, and is current."""

from pathlib import Path

import pytest
from conftest import REPO, gft

from gftrepro import pipeline
from gftrepro.recipes import MODELS, PROMPT_BUDGET, TEACHER, write_all

RECIPES = sorted((REPO / "stages" / "paper").glob("*/*.yaml"))
CONTEXT = {f.hub: f.context for f in MODELS} | {TEACHER: 4096}


def test_every_model_has_its_recipes():
    folders = {p.parent.name for p in RECIPES}
    assert folders == {"qwen2.5-math-1.5b", "qwen2.5-math-7b", "llama-3.2-3b", "llama-3.1-8b", "deepseekmath-7b"}
    for folder in folders:
        names = {p.name for p in RECIPES if p.parent.name == folder}
        assert {"gft.yaml", "baselines.yaml", "ablations.yaml", "passk.yaml", "ratio-2-6.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_resolves_and_fits_the_context(path: Path):
    text = path.read_text()
    assert text.startswith("# ") and "gft run --config" in text and "# Assumes:" in text and "Sources" in text
    run = pipeline.run_config(path, {})
    stages = pipeline.stage_configs(path)  # unknown keys and bad values raise here
    assert run.methods
    for name in ("sample-teacher", "sample-self", "eval"):
        c = stages[name]
        model = stages["sample-self"].model if name == "eval" else c.model
        assert 0 < c.max_model_len <= CONTEXT[model], (name, c.max_model_len)
        assert PROMPT_BUDGET + c.max_new_tokens <= c.max_model_len, (name, "prompt + new tokens exceed the context")
    assert stages["train"].max_length <= CONTEXT[stages["sample-self"].model]


def test_recipes_are_what_the_generator_writes(tmp_path):
    for written in write_all(tmp_path):
        committed = REPO / "stages" / "paper" / written.relative_to(tmp_path)
        assert committed.read_text() == written.read_text(), f"{committed}: run python -m gftrepro.recipes"


def flat(text: str) -> str:
    """The plan's words with every run of spaces and line breaks as one space (it wraps at the terminal's width)."""
    return " ".join(text.split())


@pytest.mark.parametrize(("folder", "fits"), [("qwen2.5-math-1.5b", True), ("qwen2.5-math-7b", False),
                                              ("llama-3.1-8b", False)])
def test_plan_runs_without_models_and_judges_memory(tmp_path, folder, fits):
    out = flat(gft("plan", "--config", str(REPO / "stages" / "paper" / folder / "gft.yaml"), "--run", str(tmp_path),
                   check=True).stdout)
    assert "sample-teacher" in out and "GPU-hours" in out and "to run" in out
    assert ("fits one 80 GB GPU" in out) == fits and ("FSDP" in out) != fits


def test_plan_counts_rounds(tmp_path):
    one = plan_of(tmp_path)
    three = plan_of(tmp_path, lambda t: t.replace("seeds: 1\n", "seeds: 1\nrounds: 3\n"))
    assert "train gft rounds 2-3" not in one and "2 x (re-sample" in three["train gft rounds 2-3"]["work"]
    assert sum(r["gpu_h"] for r in three.values()) > sum(r["gpu_h"] for r in one.values())


def test_plan_counts_bytes_per_parameter_of_the_one_gpu_layout(tmp_path):
    """bf16 weights + torchao's 8-bit AdamW: ~6 bytes a parameter, so a 7B recipe fits one 80 GB GPU."""
    recipe = (REPO / "stages" / "paper" / "qwen2.5-math-7b" / "gft.yaml").read_text()
    assert "  fsdp: true\n" in recipe
    one = recipe.replace("  fsdp: true\n", "  fsdp: false\n  param_dtype: bfloat16\n  optimizer: adamw8bit\n")
    (tmp_path / "one.yaml").write_text(one)
    out = flat(gft("plan", "--config", str(tmp_path / "one.yaml"), "--run", str(tmp_path / "run"), check=True).stdout)
    assert "~46 GB of weights, gradients and AdamW states (param_dtype bfloat16, optimizer adamw8bit)" in out
    assert "fits one 80 GB GPU" in out


def plan_of(tmp_path, edit=lambda text: text, name="edited.yaml"):
    """The plan's rows of the 1.5B GFT recipe after ``edit`` (in process: no model, no data)."""
    from gftrepro import plan as planner

    path = tmp_path / name
    path.write_text(edit((REPO / "stages" / "paper" / "qwen2.5-math-1.5b" / "gft.yaml").read_text()))
    run = pipeline.run_config(path, {})
    rows = planner.plan_rows(run, pipeline.run_stages(run, pipeline.stage_configs(path)), tmp_path / "run",
                             planner.Assumptions())
    return {r["stage"]: r for r in rows}


def test_plan_counts_seeds_eval_limit_and_offline_max_steps(tmp_path):
    """Finding 10: seeds, eval ``limit`` and offline ``max_steps`` left the plan unchanged."""
    one = plan_of(tmp_path)
    three = plan_of(tmp_path, lambda t: t.replace("seeds: 1\n", "seeds: 3\n"))
    assert three["train gft"]["tokens"] == 3 * one["train gft"]["tokens"] and "x 3 seeds" in three["train gft"]["work"]
    assert three["eval"]["samples"] == 3 * one["eval"]["samples"]  # each seed evaluates the base and the model
    assert three["sample-teacher"] == one["sample-teacher"]  # the data stages run once
    limited = plan_of(tmp_path, lambda t: t.replace("  limit: 0\n  n: 16\n", "  limit: 10\n  n: 16\n"))
    assert limited["eval"]["samples"] == 11 * 10 * 16 * 2  # 11 benchmarks of at least 10 problems, base + gft
    short = plan_of(tmp_path, lambda t: t.replace("  epochs: 1\n", "  epochs: 1\n  max_steps: 5\n"))
    assert short["train gft"]["tokens"] == 5 * 128 * 8 * (200 + 600)  # 128 groups of K = 8 a step
    assert "5 steps x 128 groups of 8" in short["train gft"]["work"]
    assert short["train gft"]["tokens"] < one["train gft"]["tokens"]


@pytest.mark.parametrize(("edit", "message"), [
    ("seeds: 100000000000000000000\n", "seeds and rounds must be at most 1,000"),
    ("seeds: 5\n", "runs past 2**32"),
])
def test_plan_refuses_absurd_seeds(tmp_path, edit, message):
    recipe = (REPO / "stages" / "paper" / "qwen2.5-math-1.5b" / "gft.yaml").read_text().replace("seeds: 1\n", edit)
    (tmp_path / "r.yaml").write_text(recipe.replace("  seed: 0\n  dtype", f"  seed: {2**32 - 2}\n  dtype"))
    out = gft("plan", "--config", str(tmp_path / "r.yaml"), "--run", str(tmp_path / "run"))
    assert out.returncode == 2 and message in out.stderr and len(out.stderr.splitlines()) == 1


def test_plan_fits_80_columns(tmp_path, monkeypatch):
    """Finding 17: the plan forced a 150-column table and printed 220-character notes."""
    monkeypatch.setenv("COLUMNS", "80")
    out = gft("plan", "--config", str(REPO / "stages" / "paper" / "llama-3.1-8b" / "chains.yaml"), "--run",
              str(tmp_path), check=True).stdout
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out and "train grpo" in out and "GPU-hours" in out and "fits" in out


def test_plan_counts_the_baselines_extra_forwards_and_no_mix_groups(tmp_path):
    """asft: a reference forward; psft: the old policy's log-probs; gft-no-mix: groups without teacher members."""
    rows = plan_of(tmp_path, lambda t: t.replace("methods:\n- gft\n", "methods:\n- dft\n- asft\n- psft\n- gft-no-mix\n"
                                                 "- gft\n- pear\n"))
    assert "log-probs" in rows["sample-teacher"]["work"] and rows["train pear"]["tokens"] > 0
    dft, asft, psft = rows["train dft"], rows["train asft"], rows["train psft"]
    assert asft["gpu_h"] == pytest.approx(dft["gpu_h"] * 4 / 3) and "reference forward" in asft["work"]
    assert psft["gpu_h"] == pytest.approx(dft["gpu_h"] * 4 / 3) and "old log-probs" in psft["work"]
    assert rows["train gft-no-mix"]["tokens"] == pytest.approx(rows["train gft"]["tokens"] * 5 / 8)  # 1+4 of 1+3+4
