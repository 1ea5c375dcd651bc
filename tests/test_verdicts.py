"""gft report's statistics: paired intervals over seeds and problems from hand-made eval shards, every
verdict reachable, coverage on simulated data with a known difference, paired tighter than unpaired,
independent of shard order; settings as entries (gft-online@tau=0.1, @ratio=2:6) and the Table 5 and
Figure 6 claims they make measurable; the forest plot."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from gftrepro import report, stats
from gftrepro.cli import app
from gftrepro.errors import GftError
from gftrepro.pipeline import RunConfig, chain, stage_configs, train_config_for

BENCHES = ("testbed", "testbed-probe")


def write_shards(folder, correct, shard_problems=64, order=None, duplicate=False):
    """``correct``: [problems, n] booleans, written as eval sample shards (blocks of problems)."""
    folder.mkdir(parents=True, exist_ok=True)
    problems, n = correct.shape
    blocks = list(range(0, problems, shard_problems))
    for start in (order(blocks) if order else blocks):
        rows = [(f"p{i:05d}", j, bool(correct[i, j])) for i in range(start, min(start + shard_problems, problems))
                for j in range(n)]
        table = pa.table({"prompt_id": [r[0] for r in rows], "sample_idx": pa.array([r[1] for r in rows], pa.int32()),
                          "correct": [r[2] for r in rows]})
        pq.write_table(table, folder / f"shard-p{start // shard_problems:05d}-s00000-{n:05d}.parquet")
        if duplicate:  # an overlapping copy of the same samples: counted once
            pq.write_table(table, folder / f"shard-p{start // shard_problems:05d}-s00000-{n:05d}x.parquet")


def make_run(tmp_path, models, **shard_kw):
    """``models``: {name: {"acc": [seeds][bench] -> [problems, n] bool, "kl": [...], "entropy": [...]}}; a
    summary.json as gft run writes it, with eval folders holding the shards."""
    rows = []
    for name, spec in models.items():
        folders, per_seed = [], {}
        for s, per_bench in enumerate(spec["acc"]):
            entry = {}
            for b, correct in zip(BENCHES, per_bench, strict=False):
                rel = f"eval/{name.replace(':', '_')}-{s}/{b}"
                write_shards(tmp_path / rel, correct, **shard_kw)
                entry[b] = rel
                per_seed.setdefault(f"{b}/pass@1", []).append(float(correct.mean()))
            folders.append(entry)
            per_seed.setdefault("pass@1", []).append(float(per_bench[0].mean()))
            if len(per_bench) > 1:
                per_seed.setdefault("probe", []).append(float(per_bench[1].mean()))
        for key in ("kl_to_base", "entropy"):
            if key in spec:
                per_seed[key] = list(spec[key])
        row = {"model": name, "seeds": len(spec["acc"]), "per_seed": per_seed, "seed_ids": list(range(len(folders))),
               "n": [per_bench[0].shape[1] for per_bench in spec["acc"]], "eval_folders": folders}
        row.update({k: (float(np.mean(v)), None) for k, v in per_seed.items() if "/" not in k})
        if "tau" in spec:
            row["tau"] = spec["tau"]
        rows.append(row)
    (tmp_path / "summary").mkdir(parents=True, exist_ok=True)
    (tmp_path / "summary" / "summary.json").write_text(json.dumps(rows))
    return rows


def draws(rng, p, n=4):
    return rng.random((len(p), n)) < np.asarray(p)[:, None]


def by_id(rows):
    return {r["id"]: r for r in rows}


def test_every_verdict_reachable_from_hand_made_shards(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.uniform(0.2, 0.6, 300)
    models = {
        "base": {"acc": [[draws(rng, p), draws(rng, np.full(300, 0.8))] for _ in range(3)]},
        "sft": {"acc": [[draws(rng, p + 0.05), draws(rng, np.full(300, 0.5))] for _ in range(3)],
                "kl_to_base": [0.30, 0.32, 0.31], "entropy": [0.05, 0.06, 0.05]},
        "gft-online": {"acc": [[draws(rng, p + 0.30), draws(rng, np.full(300, 0.86))] for _ in range(3)],
                       "kl_to_base": [0.02, 0.03, 0.02], "entropy": [0.20, 0.21, 0.19]},
        "grpo": {"acc": [[draws(rng, p + 0.30), draws(rng, np.full(300, 0.1))] for _ in range(3)],
                 "kl_to_base": [0.40, 0.45, 0.50], "entropy": [0.1, 0.1, 0.1]},
        "dft": {"acc": [[draws(rng, p + 0.30), draws(rng, np.full(300, 0.8))] for _ in range(3)]},
    }
    summary = make_run(tmp_path, models)
    got = by_id(report.report_rows(summary, tmp_path))
    assert got["pass1"]["verdict"] == stats.REPRODUCED  # +25 points, 900 problem-seeds
    assert got["forget-sft"]["verdict"] == stats.REPRODUCED  # probe 80 -> 50
    assert got["forget-gft"]["verdict"] == stats.REPRODUCED  # probe 80 -> 86: above -1 point
    assert got["forget-grpo"]["verdict"] == stats.CONTRADICTED  # probe 80 -> 10: wholly below -margin
    assert got["passk"]["verdict"] in (stats.INCONCLUSIVE, stats.REPRODUCED)
    assert got["entropy"]["verdict"] == stats.REPRODUCED  # seeds only, 3 seeds
    assert got["kl"]["verdict"] == stats.CONTRADICTED  # sft 0.31 above gft, below grpo 0.45
    assert got["baselines"]["verdict"] == stats.NOT_MEASURED and "asft" in got["baselines"]["ours"]
    for cid in ("ratio", "tau"):
        assert got[cid]["verdict"] == stats.NOT_MEASURED and "needs" in got[cid]["ours"]
    r = got["pass1"]
    assert r["seeds"] == 3 and r["problems"] == 300 and "[" in r["ours"] and "points" in r["ours"]

    # equal models: inconclusive for "above"; a single seed's KL: inconclusive by rule
    same = {"sft": models["sft"], "gft-online": {"acc": models["sft"]["acc"], "kl_to_base": [0.1, 0.1, 0.1],
                                                 "entropy": [0.05, 0.06, 0.05]}}
    got = by_id(report.report_rows(make_run(tmp_path / "same", same), tmp_path / "same"))
    assert got["pass1"]["verdict"] == stats.INCONCLUSIVE and got["entropy"]["verdict"] == stats.INCONCLUSIVE
    one = {m: {"acc": spec["acc"][:1], **{k: v[:1] for k, v in spec.items() if k != "acc"}}
           for m, spec in models.items()}
    got = by_id(report.report_rows(make_run(tmp_path / "one", one), tmp_path / "one"))
    assert got["entropy"]["verdict"] == stats.INCONCLUSIVE and "fewer than 3 seeds" in " ".join(got["entropy"]["notes"])
    assert got["pass1"]["verdict"] == stats.REPRODUCED
    assert "training variance is not in the interval" in " ".join(got["pass1"]["notes"])


def test_verdict_rule_on_intervals():
    iv = stats.Interval
    assert stats.verdict(iv(0.05, 0.01, 0.09, 3, 200), "above") == stats.REPRODUCED
    assert stats.verdict(iv(-0.05, -0.09, -0.01, 3, 200), "above") == stats.CONTRADICTED
    assert stats.verdict(iv(0.01, -0.01, 0.03, 3, 200), "above") == stats.INCONCLUSIVE
    assert stats.verdict(iv(-0.002, -0.008, 0.004, 3, 200), "not below") == stats.REPRODUCED  # within 1 point
    assert stats.verdict(iv(-0.03, -0.05, -0.015, 3, 200), "not below") == stats.CONTRADICTED
    assert stats.verdict(iv(-0.01, -0.03, 0.01, 3, 200), "not below") == stats.INCONCLUSIVE
    assert stats.verdict(iv(0.5, 0.4, 0.6, 2, 0), "above") == stats.INCONCLUSIVE  # seeds only, 2 seeds
    assert stats.combine([stats.REPRODUCED, stats.INCONCLUSIVE]) == stats.INCONCLUSIVE
    assert stats.combine([stats.REPRODUCED, stats.CONTRADICTED]) == stats.CONTRADICTED
    assert stats.combine([stats.REPRODUCED] * 3) == stats.REPRODUCED
    with pytest.raises(ValueError):
        stats.verdict(iv(0, 0, 0, 3, 1), "beside")


def simulate(rng, truth, seeds=3, problems=200, n=4):
    """Two models on the same problems: B's per-problem rate is A's minus ``truth`` plus a symmetric
    per-problem offset, each seed shifts A's rates by a mean-zero amount; the true mean difference over
    problems and seeds is ``truth``."""
    p_a = rng.uniform(0.15, 0.85, problems)
    p_b = p_a - truth + rng.choice([-0.05, 0.05], problems)
    a = np.stack([draws(rng, np.clip(p_a + rng.uniform(-0.01, 0.01), 0, 1), n).mean(axis=1) for _ in range(seeds)])
    b = np.stack([draws(rng, p_b, n).mean(axis=1) for _ in range(seeds)])
    return a, b


@pytest.mark.parametrize("seeds", [1, 3])
def test_interval_covers_a_known_difference_in_at_least_92_percent(seeds):
    rng = np.random.default_rng(12345)
    truth, covered = 0.03, 0
    for i in range(200):
        a, b = simulate(rng, truth, seeds=seeds)
        iv = stats.paired_bootstrap([a], [b], replicates=1000, seed=i)
        covered += iv.low <= truth <= iv.high
    assert covered / 200 >= 0.92, covered


def test_paired_interval_tighter_than_unpaired_on_correlated_data():
    rng = np.random.default_rng(7)
    a, b = simulate(rng, 0.03, seeds=1, problems=300, n=32)  # per-problem rates shared: strongly correlated
    paired = stats.paired_bootstrap([a], [b])
    unpaired = stats.unpaired_bootstrap(a, b)
    assert paired.estimate == pytest.approx(unpaired.estimate)
    assert (paired.high - paired.low) < 0.5 * (unpaired.high - unpaired.low)


def test_same_data_same_interval_whatever_the_shard_order(tmp_path):
    rng = np.random.default_rng(3)
    p = rng.uniform(0.2, 0.8, 150)
    acc = {"sft": {"acc": [[draws(rng, p)] for _ in range(2)]},
           "gft-online": {"acc": [[draws(rng, p + 0.1)] for _ in range(2)]}}
    first = by_id(report.report_rows(make_run(tmp_path / "a", acc, shard_problems=64), tmp_path / "a"))["pass1"]
    again = by_id(report.report_rows(make_run(tmp_path / "b", acc, shard_problems=16, order=lambda b: b[::-1],
                                              duplicate=True), tmp_path / "b"))["pass1"]
    assert first["ours"] == again["ours"] and first["checks"] == again["checks"]


def test_seed_interval_is_students_t():
    iv = stats.seed_interval(np.array([0.3, 0.32, 0.31]), np.array([0.1, 0.1, 0.1]))
    from scipy import stats as st

    half = st.t.ppf(0.975, 2) * np.std([0.2, 0.22, 0.21], ddof=1) / np.sqrt(3)
    assert iv.estimate == pytest.approx(0.21) and iv.high - iv.estimate == pytest.approx(half)
    assert iv.seeds_only and iv.seeds == 3


def test_settings_are_entries_with_one_clear_error_each():
    links = chain("sft:gft-online@ratio=2:6@tau=0.3:grpo")
    assert [link.method for link in links] == ["sft", "gft", "grpo"]
    assert links[1].settings == {"n_expert": 1, "n_teacher": 1, "self_k": 6, "tau": 0.3}
    (offline,) = chain("gft@ratio=0:8")
    assert offline.groups == (("n_expert", 0), ("n_self", 8), ("n_teacher", 0)) and offline.train == ()
    stages = stage_configs(None)
    t = train_config_for(stages, chain("gft-online@tau=0.1@lr=1e-5")[0])
    assert (t.tau, t.lr, t.method) == (0.1, 1e-5, "gft")
    for bad, words in [("gft-online@tau", "key=value"), ("gft-online@foo=1", "unknown setting 'foo'"),
                       ("sft@ratio=2:6", "ratio is N_demo:N_sample"), ("gft-online@tau=abc", "must be of type float"),
                       ("gft-online@seed=3", "sets method"), ("gft-onlin@tau=0.1", "unknown method")]:
        with pytest.raises(GftError, match=words):
            chain(bad)
    with pytest.raises(GftError, match="gft-online@tau=5: tau must be in"):
        train_config_for(stages, chain("gft-online@tau=5")[0])
    RunConfig(methods=["gft-online", "gft-online@tau=0.1", "sft:gft-online@ratio=2:6"]).validate()


def test_tau_and_ratio_claims_from_one_run(tmp_path):
    rng = np.random.default_rng(11)
    p = rng.uniform(0.2, 0.5, 400)
    tau = {"gft-online@tau=0.1": 0.0, "gft-online@tau=0.3": 0.2, "gft-online": 0.25, "gft-online@tau=0.9": 0.02}
    models = {name: {"acc": [[draws(rng, p + lift)] for _ in range(2)]} for name, lift in tau.items()}
    models["gft-online"]["tau"] = 0.7
    ratio = {"2:6": 0.2, "8:0": 0.0, "0:8": 0.25}
    models |= {f"gft-online@ratio={r}": {"acc": [[draws(rng, p + lift)] for _ in range(2)]}
               for r, lift in ratio.items()}
    got = by_id(report.report_rows(make_run(tmp_path, models), tmp_path))
    t = got["tau"]
    assert t["verdict"] == stats.REPRODUCED, t
    assert "mean(gft-online@tau=0.3, gft-online) - gft-online@tau=0.1" in t["ours"]
    assert "best tau 0.7: pass@1" in t["ours"]
    assert got["ratio"]["verdict"] == stats.CONTRADICTED  # 2:6 above 8:0 but below 0:8
    assert got["ratio"]["seeds"] == 2 and got["ratio"]["problems"] == 400


def test_cli_report_prints_intervals_and_draws_the_forest_plot(tmp_path):
    rng = np.random.default_rng(5)
    p = rng.uniform(0.2, 0.6, 100)
    make_run(tmp_path, {"base": {"acc": [[draws(rng, p), draws(rng, np.full(100, 0.7))]]},
                        "sft": {"acc": [[draws(rng, p + 0.2), draws(rng, np.full(100, 0.4))]],
                                "kl_to_base": [0.3], "entropy": [0.1]}})
    result = CliRunner().invoke(app, ["report", "--run", str(tmp_path)], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    assert "reproduced" in result.output and "1 seed(s) x 100 problems" in result.output
    claims = (tmp_path / "summary" / "claims.md").read_text()
    assert "| seeds x problems |" in claims and "1 x 100" in claims and "Rule (gftrepro/stats.py)" in claims
    assert (tmp_path / "summary" / "forest.png").stat().st_size > 1000


def test_ratio_is_demonstrations_expert_first_then_teacher():
    from gftrepro.entries import ratio_group

    assert [ratio_group(d, 8 - d) for d in (8, 6, 4, 2, 0)] == [(1, 7, 0), (1, 5, 2), (1, 3, 4), (1, 1, 6), (0, 0, 8)]
