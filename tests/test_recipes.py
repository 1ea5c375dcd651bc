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


@pytest.mark.parametrize(("folder", "fits"), [("qwen2.5-math-1.5b", True), ("qwen2.5-math-7b", False),
                                              ("llama-3.1-8b", False)])
def test_plan_runs_without_models_and_judges_memory(tmp_path, folder, fits):
    out = gft("plan", "--config", str(REPO / "stages" / "paper" / folder / "gft.yaml"), "--run", str(tmp_path),
              check=True).stdout
    assert "sample-teacher" in out and "GPU-hours" in out and "to run" in out
    assert ("fits one 80 GB GPU" in out) == fits and ("FSDP" in out) != fits


@pytest.mark.slow
def test_plan_counts_rounds(tmp_path):
    recipe = (REPO / "stages" / "paper" / "qwen2.5-math-1.5b" / "gft.yaml").read_text()
    (tmp_path / "r3.yaml").write_text(recipe.replace("seeds: 1\n", "seeds: 1\nrounds: 3\n"))
    one = gft("plan", "--config", str(REPO / "stages" / "paper" / "qwen2.5-math-1.5b" / "gft.yaml"), "--run",
              str(tmp_path), check=True).stdout
    three = gft("plan", "--config", str(tmp_path / "r3.yaml"), "--run", str(tmp_path), check=True).stdout
    assert "rounds 2-3" not in one and "train gft rounds 2-3" in three and "2 x (re-sample" in three

    def total(out: str) -> float:
        return float(out.split("total: about ")[1].split(" GPU-hours")[0].replace(",", ""))

    assert total(three) > total(one)


def test_plan_counts_bytes_per_parameter_of_the_one_gpu_layout(tmp_path):
    """bf16 weights + torchao's 8-bit AdamW: ~6 bytes a parameter, so a 7B recipe fits one 80 GB GPU."""
    recipe = (REPO / "stages" / "paper" / "qwen2.5-math-7b" / "gft.yaml").read_text()
    assert "  fsdp: true\n" in recipe
    one = recipe.replace("  fsdp: true\n", "  fsdp: false\n  param_dtype: bfloat16\n  optimizer: adamw8bit\n")
    (tmp_path / "one.yaml").write_text(one)
    out = gft("plan", "--config", str(tmp_path / "one.yaml"), "--run", str(tmp_path / "run"), check=True).stdout
    assert "~46 GB of weights, gradients and AdamW states (param_dtype bfloat16, optimizer adamw8bit)" in out
    assert "fits one 80 GB GPU" in out
