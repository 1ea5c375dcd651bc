"""stages/tiny/paper.yaml, the whole paper in miniature: it resolves (every entry's settings, the plan), and
every claim of gft report has the entries that measure it."""

from pathlib import Path

from conftest import REPO

from gftrepro import pipeline, report
from gftrepro import plan as planner
from gftrepro.stats import NOT_MEASURED

STUDY = REPO / "stages" / "tiny" / "paper.yaml"


def test_study_config_resolves_and_every_claim_has_its_entries(tmp_path: Path):
    run = pipeline.run_config(STUDY, {})
    stages = pipeline.run_stages(run, pipeline.stage_configs(STUDY))
    assert run.seeds == 3 and run.budget == "prompts"
    assert stages["eval"].benchmarks == ["testbed-heldout", "testbed-probe-hard"] and stages["eval"].limit == 600
    for entry in run.methods:
        for link in pipeline.chain(entry):
            pipeline.train_config_for(stages, link)
    assert stages["sample-teacher"].logprobs and stages["sample-teacher"].n == 7  # pear:grpo; 8:0 groups
    metrics = ("pass@1", "pass@16", "pass@32", "probe", "kl_to_base", "entropy")
    rows = [{"model": m, "seeds": 3, "per_seed": {k: [0.5, 0.5, 0.5] for k in metrics}}
            for m in ["base", *run.methods]]
    next(r for r in rows if r["model"] == "gft-online")["tau"] = stages["train"].tau
    unmeasured = [r["id"] for r in report.report_rows(rows) if r["verdict"] == NOT_MEASURED]
    assert unmeasured == [], unmeasured
    assert len(report.claims()) == 15
    rows = planner.plan_rows(run, stages, tmp_path / "run", planner.Assumptions(600, 200, 15_000, 80))
    assert sum(r["stage"].startswith("train") for r in rows) >= len(run.methods)
