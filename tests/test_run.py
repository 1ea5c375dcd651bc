"""gft run: the whole chain through the CLI on a small config, a second run doing no work, seeds."""

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from conftest import cli, gft

SMALL = """
methods: [sft, gft]
seeds: {seeds}
sample-teacher: {{limit: 12, shard_size: 6, max_new_tokens: 48}}
sample-self: {{limit: 12, shard_size: 6, max_new_tokens: 48, n: 4}}
build-groups: {{keep_zero_variance: true}}
train: {{batch_size: 8, max_steps: 3, kl_every: 1}}
eval: {{limit: 8, pass_k: 4, max_new_tokens: 48, shard_size: 8}}
"""


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_run_chains_every_stage_then_does_no_work(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(SMALL.format(seeds=1))
    run = tmp_path / "run"
    first = gft("run", "--config", str(config), "--run", str(run), check=True)
    for stage in ("sample-teacher", "sample-self", "verify", "build-groups", "train", "eval"):
        assert list((run / stage).glob("*/manifest.json")), stage
    assert len(list((run / "train").glob("*/manifest.json"))) == 2
    summary = (run / "summary" / "summary.md").read_text()
    for name in ("base", "sft", "gft"):
        assert f"| {name} |" in summary
    assert "pass@4" in summary and "kl_to_base" in summary
    assert (run / "summary" / "passk.png").exists() and (run / "summary" / "training.png").exists()
    rows = json.loads((run / "summary" / "summary.json").read_text())
    assert [r["model"] for r in rows] == ["base", "sft", "gft"]
    before = {k: v for k, v in digest(run).items() if not k.startswith("summary/")}
    second = gft("run", "--config", str(config), "--run", str(run), check=True)
    assert second.stdout.count("nothing to") >= 6
    assert {k: v for k, v in digest(run).items() if not k.startswith("summary/")} == before
    table = [line for line in first.stdout.splitlines() if line.lstrip().startswith(("gft ", "sft "))
             and "=" not in line and "." in line]  # the summary tables' rows, not the stage headers
    assert table and all(line in second.stdout for line in table)  # the same table again
    plan = gft("plan", "--config", str(config), "--run", str(run), check=True).stdout
    for stage in ("sample-teacher", "sample-self", "verify", "build-groups", "train sft", "train gft"):
        line = next(x for x in plan.splitlines() if x.strip().startswith(f"{stage} "))
        assert line.rstrip().endswith(" done"), line


@pytest.mark.slow
def test_rounds_resample_from_the_new_checkpoint(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(SMALL.format(seeds=1))
    run = tmp_path / "run"
    gft("run", "--config", str(config), "--run", str(run), "--methods", "gft", "--rounds", "2", check=True)
    models = {json.loads(m.read_text())["config"]["model"] for m in run.glob("sample-self/*/manifest.json")}
    assert len(models) == 2 and any(m.endswith("/model") for m in models)  # round 2 sampled from a checkpoint
    assert len(list(run.glob("build-groups/*/manifest.json"))) == 2
    trained = [json.loads(m.read_text()) for m in run.glob("train/*/manifest.json")]
    assert len(trained) == 2
    starts = {t["inputs"]["model"]["ref"] for t in trained}
    assert "testbed:student" in starts and any(s.endswith("/model") for s in starts)


@pytest.mark.slow
def test_two_seeds_report_a_spread(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(SMALL.format(seeds=2))
    out = gft("run", "--config", str(config), "--run", str(tmp_path / "run"), "--methods", "gft", check=True)
    rows = json.loads((tmp_path / "run" / "summary" / "summary.json").read_text())
    gft_row = next(r for r in rows if r["model"] == "gft")
    assert gft_row["seeds"] == 2 and gft_row["entropy"][1] is not None
    assert "±" in out.stdout


@pytest.mark.parametrize(("text", "extra", "message"), [
    ("methods: [sft, ppo]\n", [], "unknown method 'ppo'"),
    ("train: {learning_rate: 1}\n", [], "unknown config key 'learning_rate' in section 'train'"),
    ("evaluation: {}\n", [], "unknown config key 'evaluation'"),
    ("", ["--seeds", "0"], "seeds and rounds must be at least 1"),
    ("", ["--rounds", "0"], "seeds and rounds must be at least 1"),
    ("", ["--report-to", "tensorboard,neptune"], "unknown tracker 'neptune'"),  # the flag reaches the run's config
])
def test_bad_run_configs(tmp_path, text, extra, message):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    proc = cli("run", "--config", str(config), "--run", str(tmp_path / "run"), *extra)
    assert proc.returncode == 2 and message in proc.stderr


@pytest.mark.slow
def test_run_output_fits_80_columns_and_60_lines(tmp_path, monkeypatch):
    """What a person sees: header + summary line per stage, two narrow tables, one line per claim; the
    default methods (not SMALL's), and nothing clipped with an ellipsis at 80 columns."""
    from gftrepro.pipeline import RunConfig

    monkeypatch.setenv("COLUMNS", "80")
    config = tmp_path / "run.yaml"
    config.write_text(SMALL.format(seeds=1).replace("methods: [sft, gft]\n", ""))
    out = gft("run", "--config", str(config), "--run", str(tmp_path / "run"), check=True).stdout
    lines = out.splitlines()
    assert len(lines) <= 60, "\n".join(lines)
    assert "…" not in out and max(len(line) for line in lines) <= 80
    for method in RunConfig().methods:
        assert any(line.lstrip().startswith(method + " ") and "=" not in line for line in lines), method
    assert "held-out accuracy" in out and "the paper's claims" in out
    assert "method: gft" not in out  # the resolved config is not dumped ...
    verbose = gft("-v", "run", "--config", str(config), "--run", str(tmp_path / "run"), check=True).stdout
    assert "logprob_chunk: 512" in verbose  # ... unless asked for


@pytest.mark.slow
def test_settings_are_entries_trained_evaluated_and_judged(tmp_path):
    """Issue 27: ``gft-online@tau=0.3`` and ``gft@ratio=2:2`` (its own groups) are entries of one run, with
    their own train versions, rows, and eval samples that gft report resamples per problem."""
    config = tmp_path / "run.yaml"
    config.write_text(SMALL.format(seeds=1).replace("methods: [sft, gft]", 'methods: [sft, gft, "gft@ratio=2:2", '
                                                    '"sft:gft-online@tau=0.3"]')
)
    run = tmp_path / "run"
    gft("run", "--config", str(config), "--run", str(run), check=True)
    rows = {r["model"]: r for r in json.loads((run / "summary" / "summary.json").read_text())}
    assert set(rows) == {"base", "sft", "gft", "gft@ratio=2:2", "sft:gft-online@tau=0.3"}
    assert rows["sft:gft-online@tau=0.3"]["tau"] == 0.3 and rows["gft"]["tau"] == 0.7
    trained = [json.loads(m.read_text())["config"] for m in run.glob("train/*/manifest.json")]
    assert any(t["online"] and t["tau"] == 0.3 for t in trained)
    groups = [json.loads(m.read_text())["config"] for m in run.glob("build-groups/*/manifest.json")]
    assert sorted((g["n_expert"], g["n_teacher"], g["n_self"]) for g in groups) == [(1, 1, 2), (1, 3, 4)]
    folder = run / rows["gft"]["eval_folders"][0]["testbed"]
    assert folder.is_dir() and list(folder.glob("shard-p*.parquet"))
    claims = (run / "summary" / "claims.md").read_text()
    assert "1 x 8" in claims and (run / "summary" / "forest.png").exists()  # 1 seed x 8 held-out problems


def test_budget_is_a_run_setting_prompts_or_trajectories():
    """Issue 28: ``budget: prompts`` (the default) trains every method the same epochs over the same prompts;
    ``trajectories`` (the paper's rule) gives single-trajectory methods K / (sequences a prompt) times the
    epochs or max_steps; on-policy and group methods and an entry's own settings are untouched."""
    from gftrepro import pipeline
    from gftrepro.errors import GftError

    def epochs(budget, entry, **train):
        run = pipeline.RunConfig(methods=[entry], budget=budget)
        run.validate()
        stages = pipeline.stage_configs(None)
        if train:
            stages["train"] = dataclasses.replace(stages["train"], **train)
        t = pipeline.train_config_for(pipeline.run_stages(run, stages), pipeline.chain(entry)[0])
        return t.epochs, t.max_steps

    assert epochs("prompts", "sft") == epochs("prompts", "gft") == (6, 0)
    assert epochs("trajectories", "sft") == (48, 0)  # K = 8 sequences a group, 1 expert solution a prompt
    assert epochs("trajectories", "sft-mix") == (12, 0)  # 1 expert + 3 teacher samples a prompt
    assert epochs("trajectories", "sft", max_steps=10) == (6, 80)
    assert epochs("trajectories", "gft") == epochs("trajectories", "gft-online") == (6, 0)
    assert epochs("trajectories", "sft@epochs=2") == (2, 0)  # an entry's own setting wins
    with pytest.raises(GftError, match="budget must be one of prompts, trajectories"):
        pipeline.RunConfig(budget="tokens").validate()


def test_jobs_that_would_write_the_same_version_wait_for_each_other():
    """--jobs: a chain waits for the job that trains its first link; an entry that is the same training as
    another (4:4 is gft-online's own 1:3:4, n_self=4 gft's own, micro_batch_size is not versioned) waits for
    it; later offline links that rebuild the same groups from the same model wait; nothing else does (the
    groups a first link rebuilds from the base student are built before the jobs)."""
    from gftrepro.parallel import plan_jobs, waits_for
    from gftrepro.pipeline import resolved, stage_configs, train_config_for

    stages = stage_configs(None)
    entries = ["sft", "gft", "gft-online", "sft:grpo", "gft-online@ratio=4:4", "gft-online@ratio=2:6", "pear:grpo",
               "gft@n_self=2", "gft@n_self=2@lr=1e-5", "gft@n_self=4", "gft-online@micro_batch_size=16",
               "sft:gft", "sft:gft@lr=1e-5", "grpo"]
    jobs = plan_jobs(entries, range(2), lambda link: resolved(stages, link))
    assert [(j.entry, j.seed) for j in jobs[:2]] == [(None, 0), ("sft", 0)] and len(jobs) == 2 * (1 + len(entries))
    index = {(j.entry, j.seed): i for i, j in enumerate(jobs)}
    needs = waits_for(jobs)

    def waits(entry, seed=0):
        return {jobs[i].entry for i in needs[index[(entry, seed)]]}

    assert waits("sft:grpo") == {"sft"}
    assert waits("gft-online@ratio=4:4") == {"gft-online"}
    assert train_config_for(stages, "gft-online@ratio=4:4") == train_config_for(stages, "gft-online")
    assert waits("gft@n_self=4") == {"gft"} and waits("gft-online@micro_batch_size=16") == {"gft-online"}
    assert waits("sft:gft") == {"sft"}  # not sft:grpo: once sft is trained, the two only read it
    assert waits("sft:gft@lr=1e-5") == {"sft", "sft:gft"}  # the groups sft:gft rebuilds from sft's model
    for entry in ("sft", "gft", "gft-online", "gft-online@ratio=2:6", "pear:grpo", "grpo", "gft@n_self=2",
                  "gft@n_self=2@lr=1e-5"):
        assert waits(entry) == set() and waits(entry, 1) == set(), entry
    assert needs[index[(None, 1)]] == set()


@pytest.mark.slow
def test_jobs_write_the_versions_a_sequential_run_writes(tmp_path):
    """gft run --jobs 2 trains and evaluates every entry and seed in two processes (a chain after its first
    link); the same run with --jobs 1 then finds every version complete and does no work."""
    config = tmp_path / "run.yaml"
    config.write_text(SMALL.format(seeds=2).replace("methods: [sft, gft]", "methods: [sft, gft, 'sft:gft']"))
    run = tmp_path / "run"
    first = gft("run", "--config", str(config), "--run", str(run), "--jobs", "2", check=True).stdout
    assert "8 jobs" in first and "in 2 processes" in first and "[8/8]" in first
    assert len(list((run / "train").glob("*/manifest.json"))) == 6  # sft, gft, sft:gft's gft, per seed
    before = {k: v for k, v in digest(run).items() if not k.startswith("summary/")}
    second = gft("run", "--config", str(config), "--run", str(run), "--jobs", "1", check=True).stdout
    assert "processes of" not in second
    assert {k: v for k, v in digest(run).items() if not k.startswith("summary/")} == before
    rows = json.loads((run / "summary" / "summary.json").read_text())
    assert [r["model"] for r in rows] == ["base", "sft", "gft", "sft:gft"]


def test_jobs_must_not_be_negative(tmp_path):
    out = gft("run", "--run", str(tmp_path / "run"), "--jobs", "-1")
    assert out.returncode == 2 and "jobs must be 0 (one per CPU core) or more" in out.stderr


def test_a_failed_job_skips_the_jobs_that_need_it_and_the_rest_run():
    from concurrent.futures import Future

    from rich.console import Console

    from gftrepro.errors import GftError
    from gftrepro.parallel import Job, schedule

    jobs = [Job("sft", 0, frozenset({"a"})), Job("sft:grpo", 0, frozenset({"a", "b"})),
            Job("sft:grpo:gft", 0, frozenset({"a", "b", "c"})), Job("grpo", 0, frozenset({"d"}))]
    ran = []

    def submit(job):
        ran.append(job.entry)
        future = Future()
        if job.entry == "sft":
            future.set_exception(GftError("no room on the disk"))
        else:
            future.set_result(1.0)
        return future

    console = Console(record=True, width=200)
    failed = schedule(jobs, 2, submit, console)
    assert ran == ["sft", "grpo"]  # sft first: the longest chain of work (two chains) waits on it
    assert failed == {0: "no room on the disk", 1: "skipped: sft seed 0", 2: "skipped: sft seed 0, sft:grpo seed 0"}
    assert "failed sft seed 0: no room on the disk" in console.export_text()


def test_a_job_the_pool_cannot_take_is_counted_failed():
    """A broken pool (a worker killed, e.g. out of memory) fails the jobs it cannot take, in one line each."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from rich.console import Console

    from gftrepro.parallel import Job, schedule

    def submit(job):
        if job.entry == "grpo":
            raise BrokenProcessPool("A child process terminated abruptly")
        future = Future()
        future.set_result(2.0)
        return future

    jobs = [Job("grpo", 0, frozenset({"g"})), Job("grpo:sft", 0, frozenset({"g", "s"})), Job("sft", 0, frozenset())]
    failed = schedule(jobs, 1, submit, Console(quiet=True))
    assert failed == {0: "BrokenProcessPool: A child process terminated abruptly", 1: "skipped: grpo seed 0"}
