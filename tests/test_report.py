"""gft report: the verdict rule on hand-made numbers (every verdict reachable), the paper's numbers
shipped in the repo, the CLI on a hand-made summary and on bad input, and the probe benchmark."""

import json

import pytest
from typer.testing import CliRunner

from gftrepro import report
from gftrepro.cli import app
from gftrepro.evalsets import load_benchmark, resolve_names
from gftrepro.summary import summary_rows


def row(model, **metrics):
    """A hand-made summary row without eval samples: every seed's value per metric (seeds only)."""
    seeds = len(next(iter(metrics.values())))
    return {"model": model, "seeds": seeds, "per_seed": {k: list(v) for k, v in metrics.items()},
            **{k: (sum(v) / len(v), None) for k, v in metrics.items()}}


def by_id(rows):
    return {r["id"]: r for r in rows}


def three(mean, spread=0.01):
    return [mean - spread, mean, mean + spread]


def test_without_eval_samples_the_interval_is_over_seeds_only():
    good = [row("base", probe=three(0.80), **{"pass@1": three(0.30), "pass@64": three(0.90)}),
            row("sft", probe=three(0.60), entropy=three(0.05, 0.001), kl_to_base=three(0.20),
                **{"pass@1": three(0.40), "pass@64": three(0.92)}),
            row("gft-online", probe=three(0.82), entropy=three(0.09, 0.001), kl_to_base=three(0.02),
                **{"pass@1": three(0.45), "pass@64": three(0.95)}),
            row("grpo", probe=three(0.81), entropy=three(0.04, 0.001), kl_to_base=three(0.01),
                **{"pass@1": three(0.46), "pass@64": three(0.93)})]
    got = by_id(report.report_rows(good))
    for cid in ("pass1", "passk", "forget-sft", "forget-gft", "forget-grpo", "kl", "entropy"):
        assert got[cid]["verdict"] == report.REPRODUCED, cid
    assert "no eval samples recorded: interval over seeds only" in got["pass1"]["notes"]
    assert "gft-online" in got["pass1"]["ours"] and "pass@64" in got["passk"]["ours"]  # online form, largest k
    for cid in ("no-dcr", "no-gal", "chain"):
        assert got[cid]["verdict"] == report.NOT_MEASURED and "needs" in got[cid]["ours"]

    bad = [dict(r) for r in good]
    bad[2] = row("gft-online", probe=three(0.50), entropy=three(0.01, 0.001), kl_to_base=three(0.5),
                 **{"pass@1": three(0.35), "pass@64": three(0.80)})
    got = by_id(report.report_rows(bad))
    for cid in ("pass1", "passk", "forget-gft", "kl", "entropy"):
        assert got[cid]["verdict"] == report.CONTRADICTED, cid
    one = [row(r["model"], **{k: v[:1] for k, v in r["per_seed"].items()}) for r in good]
    assert {r["verdict"] for r in report.report_rows(one)} == {report.INCONCLUSIVE, report.NOT_MEASURED}


def test_offline_gft_and_ablations_used_when_no_online_form():
    rows = [row("sft", **{"pass@1": three(0.40)}), row("gft", **{"pass@1": three(0.30)}),
            row("gft-no-dcr", **{"pass@1": three(0.20)}), row("gft-no-gal", **{"pass@1": three(0.35)})]
    got = by_id(report.report_rows(rows))
    assert got["pass1"]["verdict"] == report.CONTRADICTED and "gft - sft = -10.0" in got["pass1"]["ours"]
    assert got["no-dcr"]["verdict"] == report.REPRODUCED and got["no-dcr"]["seeds"] == 3
    assert got["no-gal"]["verdict"] == report.CONTRADICTED


def test_baseline_claims_judge_asft_psft_and_no_mix_and_wait_for_pear():
    rows = [row("gft-online", **{"pass@1": three(0.45)}), row("dft", **{"pass@1": three(0.30)}),
            row("asft", **{"pass@1": three(0.33)}), row("psft", **{"pass@1": three(0.31)}),
            row("gft-no-mix-online", **{"pass@1": three(0.46)}), row("sft:grpo", **{"pass@1": three(0.40)})]
    got = by_id(report.report_rows(rows))
    assert got["baselines"]["verdict"] == report.REPRODUCED and "gft-online - asft = +12.0" in got["baselines"]["ours"]
    assert got["no-mix"]["verdict"] == report.REPRODUCED and "gft-no-mix-online" in got["no-mix"]["ours"]
    assert got["pear"]["verdict"] == report.NOT_MEASURED and "pear:grpo" in got["pear"]["ours"]
    rows[2] = row("asft", **{"pass@1": three(0.50)})  # one baseline above GFT: the claim is contradicted
    rows[4] = row("gft-no-mix-online", **{"pass@1": three(0.20)})
    got = by_id(report.report_rows(rows))
    assert got["baselines"]["verdict"] == got["no-mix"]["verdict"] == report.CONTRADICTED
    assert report.report_rows(rows[:1])[1]["verdict"] == report.NOT_MEASURED  # no baselines in the run


def test_paper_numbers_ship_in_the_repo_with_sources():
    paper = report.paper_numbers()
    assert report.PAPER_RESULTS.is_relative_to(report.PAPER_RESULTS.parents[2])  # inside the repo
    assert "2604.14258" in paper["_about"] and "shared" not in paper["_about"]
    assert paper["gft_table4_passk"]["rows"]["pass@128"]["gft"]["avg"] == 62.16
    texts = report.paper_texts(paper)
    assert "GFT 62.16, GRPO 49.87" in texts["passk"]


def test_cli_report_writes_claims_and_refuses_bad_input(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["report", "--run", str(tmp_path / "nope")])
    assert result.exit_code != 0 and "no run summary" in result.output
    summary = tmp_path / "run" / "summary"
    summary.mkdir(parents=True)
    (summary / "summary.json").write_text('{"model": ')
    result = runner.invoke(app, ["report", "--run", str(tmp_path / "run")])
    assert result.exit_code != 0 and "not valid JSON" in result.output
    results = {"base": [{"eval": eval_metrics(0.3, 0.8), "train": None}],
               "sft": [{"eval": eval_metrics(0.4, 0.5), "train": [{"step": 1, "entropy": 0.1, "kl_ref": 0.3}]}]}
    (summary / "summary.json").write_text(json.dumps(summary_rows(results, 0.5)))
    result = runner.invoke(app, ["report", "--run", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    claims = (summary / "claims.md").read_text()
    assert "| SFT forgets: probe pass@1 below the base |" in claims and "**inconclusive**" in claims  # 1 seed
    assert "**not measured**" in claims


def test_report_prints_its_claims_when_the_run_folder_is_read_only(tmp_path, monkeypatch):
    """Finding 13: in a read-only run ``gft report`` died writing claims.md and printed no claim."""
    import errno

    summary = tmp_path / "summary"
    summary.mkdir()
    results = {"base": [{"eval": eval_metrics(0.3, 0.8), "train": None}],
               "sft": [{"eval": eval_metrics(0.4, 0.5), "train": [{"step": 1, "entropy": 0.1, "kl_ref": 0.3}]}]}
    (summary / "summary.json").write_text(json.dumps(summary_rows(results, 0.5)))

    def read_only(path, data):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(report, "atomic_write_bytes", read_only)
    result = CliRunner().invoke(app, ["report", "--run", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "could not write" in result.output and "Read-only file system" in result.output
    assert "SFT forgets: probe pass@1 below the base" in result.output and "inconclusive" in result.output
    assert not (summary / "claims.md").exists()


def eval_metrics(main_pass1, probe_pass1):
    bench = {"testbed": {"avg@4": main_pass1, "pass@1": main_pass1, "pass@4": min(1.0, 2 * main_pass1)},
             "testbed-probe": {"avg@4": probe_pass1, "pass@1": probe_pass1, "pass@4": probe_pass1}}
    return {"n": 4, "benchmarks": bench}


def test_summary_rows_keep_per_seed_and_probe():
    results = {"base": [{"eval": eval_metrics(0.3, 0.8), "train": None},
                        {"eval": eval_metrics(0.5, 0.6), "train": None}]}
    (r,) = summary_rows(results, 0.5)
    assert r["pass@1"] == pytest.approx((0.4, 0.1)) and r["probe"] == pytest.approx((0.7, 0.1))
    assert r["per_seed"]["testbed-probe/pass@1"] == [0.8, 0.6] and r["per_seed"]["pass@4"] == [0.6, 1.0]


def test_probe_benchmark_reads_the_bundled_probe_split():
    (bench,) = resolve_names(["testbed-probe"])
    problems, source = load_benchmark(bench, "", limit=0)
    assert source.endswith("probe.jsonl") and len(problems) == 300
    assert all(p["question"].startswith("Which number is the largest") for p in problems)
    numbers = [int(x) for x in problems[0]["question"].split(":")[1].strip(" ?").split(", ")]
    assert problems[0]["gold"] == str(max(numbers))
    test, _ = load_benchmark(resolve_names(["testbed"])[0], "", limit=0)
    assert not {p["question"] for p in test} & {p["question"] for p in problems}


def test_paper_tables_sit_next_to_ours_for_the_benchmarks_a_run_has():
    paper = report.paper_numbers()
    per = {"mawps/pass@1": [0.90, 0.92], "svamp/pass@1": [0.80, 0.80], "sat_math/pass@128": [0.5, 0.7]}
    summary = [{"model": m, "seeds": 2, "per_seed": per} for m in ("base", "sft", "grpo", "gft-online")]
    text = report.side_by_side(summary, paper)
    assert "| model | mawps | svamp |" in text and "mmlu_stem" not in text  # only what the run evaluated
    assert "| base (base) | 96.06 / 91.0 | 86.36 / 80.0 |" in text
    assert "| gft (gft-online) | 72.58 / 60.0 |" in text  # Table 4, pass@128, sat_math
    assert report.side_by_side([{"model": "base", "seeds": 1, "per_seed": {"testbed/pass@1": [0.2]}}], paper) == ""
