"""``gft run``: every stage in order, each method trained and evaluated, one comparison table.

    gft run                                              # embedded default: SFT, GFT (offline, on-policy), GRPO
    gft run --methods sft,dft,gft,gft-no-dcr,gft-no-gal --seeds 3
    gft run --methods gft --rounds 3                     # re-sample self rollouts from each new checkpoint
    gft run --methods sft,gft,gft-online,grpo --seeds 3  # on-policy GFT (the authors' setting) and GRPO
    gft run --methods sft:grpo,gft-online:grpo,sft:gft-online:grpo   # chains (paper Figure 4)
    gft run --config my-run.yaml                         # one file describes the whole run
    gft run --methods gft-online,gft-online@tau=0.1,gft-online@tau=0.9   # settings as entries (Figure 6)

Chain: sample-teacher -> sample-self -> verify -> build-groups -> train (each method, each seed)
-> eval (the base model and every trained one). Each stage is the same code as its command and
reuses complete versions, so a second ``gft run`` does no work and prints the same table; a
killed run resumes where it stopped.

The config file holds ``methods``, ``seeds``, and one section per stage (``sample-teacher:``,
``sample-self:``, ``verify:``, ``build-groups:``, ``train:``, ``eval:``) with that stage's keys.
Seeds vary training (data order) and the evaluation's sampling; the sampled groups are shared.
With ``--rounds R`` (gft and gft-no-dcr), each round after the first samples the self rollouts from
the previous round's checkpoint, re-verifies, rebuilds the groups (same teacher samples) and trains
on from that checkpoint: the bridge to the authors' on-policy setting, one round at a time.
Each stage reads exactly the upstream versions this run made (never "the latest").

Method names: the offline methods (``sft``, ``sft-mix``, ``dft``, ``asft``, ``psft``, ``pear``, ``gft``, ``gft-no-dcr``,
``gft-no-gal``, ``gft-no-mix``), the group methods' on-policy forms (``gft-online``, ``gft-no-dcr-online``,
``gft-no-gal-online``, ``gft-no-mix-online``:
``gft train --online``) and ``grpo`` (always on-policy). A chain joins names with ``:``, each link
starting from the previous link's model (``gft train --init``): ``sft:grpo``, ``sft:gft-online:grpo``.
An offline group method inside a chain trains on groups whose self samples come from the model it
starts from. KL is always measured against the base student.

Settings as entries: a link may carry its own train keys after ``@`` (``gft-online@tau=0.1``,
``sft@lr=5e-5@epochs=3``), over the train section and ``per_method``; an offline group method also
takes build-groups keys (``gft@n_self=8``), its groups rebuilt with them. ``ratio=D:S`` is Table 5's
N_demo:N_sample (D expert slots, no teacher, S self). Each entry is trained, evaluated and summarised
like a method, and usable in chains (``sft:gft-online@ratio=2:6:grpo``).

Output: ``<run>/summary/summary.md`` (the table), ``training.png`` (loss and entropy per step,
per method), ``passk.png`` (pass@k per method), printed as a table at the end; ``paper-tables.md``
(one table per table and figure of the paper the run has entries for, ``gftrepro.paper_tables``), with
``tau.png`` and ``ratio.png`` when the run has a tau sweep or group ratios.

``--jobs N`` runs the entries x seeds in N worker processes first (``gftrepro.parallel``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from gftrepro import config as cfg
from gftrepro.build_groups import BuildGroupsConfig
from gftrepro.config import opt
from gftrepro.engine.config import TrainConfig
from gftrepro.engine.state import metric_lines
from gftrepro.entries import RUN_METHODS, Link, chain, parse_link
from gftrepro.errors import GftError
from gftrepro.evaluate import EvalConfig
from gftrepro.methods import REGISTRY
from gftrepro.sample import SELF_DEFAULTS, SampleConfig
from gftrepro.summary import summary_rows, summary_tables, write_outputs
from gftrepro.verify import VerifyConfig

SECTIONS: dict[str, tuple[type, dict[str, Any]]] = {
    "sample-teacher": (SampleConfig, {}),
    "sample-self": (SampleConfig, SELF_DEFAULTS),
    "verify": (VerifyConfig, {}),
    "build-groups": (BuildGroupsConfig, {}),
    "train": (TrainConfig, {"kl_every": 8}),
    "eval": (EvalConfig, {"pass_k": 32, "limit": 200, "batch_size": 256, "max_new_tokens": 64}),
}
@dataclass(frozen=True)
class RunConfig:
    methods: list[str] = opt(["sft", "gft", "gft-online", "grpo"], "methods to train and compare: offline (sft, "
                             "sft-mix, dft, asft, psft, pear, gft, gft-no-dcr, gft-no-gal, gft-no-mix), on-policy "
                             "(gft-online, gft-no-dcr-online, gft-no-gal-online, gft-no-mix-online, grpo), chains "
                             "joined by ':' (sft:grpo), each link with its own settings after '@' "
                             "(gft-online@tau=0.1, gft-online@ratio=2:6, sft@lr=5e-5)")
    seeds: int = opt(1, "seeds per method (training data order and evaluation sampling)")
    per_method: dict = opt({}, "train keys per method, over the train section (e.g. sft: {lr: 5.0e-5}): chains "
                               "mix methods whose settings differ")
    rounds: int = opt(1, "gft / gft-no-dcr: re-sample self rollouts from the new checkpoint, rebuild groups and "
                         "train again, this many rounds in all (the bridge to on-policy training)")
    report_to: list[str] = opt([], "experiment trackers for every training's steps, every eval's results and the "
                               "run's summary: tensorboard, mlflow, wandb, trackio (optional extras; local and "
                               "offline by default)", versioned=False)
    jobs: int = opt(1, "worker processes for the run's trainings and evaluations (each entry and seed is one job; "
                    "0 = one per CPU core); they share the cores' threads, and jobs that would write the same "
                    "version wait for each other", versioned=False)
    budget: str = opt("prompts", "training budget across methods: prompts (every method the same prompts, epochs "
                      "and steps; a group method trains K sequences a prompt, a single-trajectory one 1) or "
                      "trajectories (the paper's rule: single-trajectory methods train as many sequences as a "
                      "group method, their epochs or max_steps times K / sequences a prompt of their data)")

    def validate(self) -> None:
        if not self.methods:
            raise GftError(f"no methods given (known: {', '.join(RUN_METHODS)})")
        for entry in self.methods:
            chain(entry)
        twice = sorted({m for m in self.methods if self.methods.count(m) > 1})
        if twice:  # one model trained once would be counted as several seeds
            raise GftError(f"methods list {', '.join(twice)} more than once; each entry is one model per seed "
                           "(use --seeds N for more seeds)")
        for method, keys in self.per_method.items():
            if method not in REGISTRY or not isinstance(keys, dict):
                raise GftError(f"per_method: '{method}' must be a train method ({', '.join(REGISTRY)}) mapping to "
                               "train keys")
            cfg.check_keys(TrainConfig, keys, f"per_method.{method}")
        if self.budget not in BUDGETS:
            raise GftError(f"budget must be one of {', '.join(BUDGETS)}, got '{self.budget}'")
        if self.jobs < 0:
            raise GftError(f"jobs must be 0 (one per CPU core) or more, got {self.jobs}")
        if self.seeds < 1 or self.rounds < 1:
            raise GftError("seeds and rounds must be at least 1")
        if self.seeds > MAX_SEEDS or self.rounds > MAX_SEEDS:
            raise GftError(f"seeds and rounds must be at most {MAX_SEEDS:,} (each seed trains every method again)")


MAX_SEEDS = 1000
BUDGETS = ("prompts", "trajectories")


def seed_range(config: RunConfig, stages: dict[str, Any]) -> range:
    """The train seeds of a run: ``seeds`` of them from the train section's seed, all valid seeds."""
    first = stages["train"].seed
    if first + config.seeds > 2**32:
        raise GftError(f"train seed {first} + {config.seeds} seeds runs past 2**32: use a smaller train seed")
    return range(first, first + config.seeds)


def read_run_file(path: Path | None) -> dict[str, Any]:
    """The whole-run YAML, with every top-level key checked (run keys or stage sections)."""
    data = cfg.read_yaml(path) if path is not None else {}
    unknown = [k for k in data if k not in SECTIONS and k not in [f.name for f in dataclasses.fields(RunConfig)]]
    if unknown:
        raise GftError(f"unknown config key '{unknown[0]}' in {path} (run keys: methods, seeds, rounds, per_method, "
                       f"budget; stage sections: {', '.join(SECTIONS)})")
    return data


def stage_configs(path: Path | None) -> dict[str, Any]:
    """One resolved config per stage, from the file's sections over the run defaults."""
    data = read_run_file(path)
    out = {}
    for name, (cls, defaults) in SECTIONS.items():
        section = data.get(name) or {}
        if not isinstance(section, dict):
            raise GftError(f"section '{name}' of {path} must be a mapping of keys to values")
        cfg.check_keys(cls, section, f"section '{name}' of {path}")
        out[name] = cfg.build(cls, defaults, section)
        out[name].validate()
    out["per_method"] = data.get("per_method") or {}
    return out


def run_config(path: Path | None, overrides: dict[str, Any]) -> RunConfig:
    top = {k: v for k, v in read_run_file(path).items() if k not in SECTIONS}
    config = cfg.build(RunConfig, top, overrides)
    config.validate()
    return config


def run_stages(config: RunConfig, stages: dict[str, Any]) -> dict[str, Any]:
    """The stages as this run needs them: the run's ``budget`` (read by ``train_config_for``), and a method
    trained on the teacher's log-probs (pear) has the teacher sampled with ``logprobs`` (the samples are the
    same; the version records the log-probs)."""
    stages = {**stages, "budget": config.budget}
    if config.report_to:  # every training and evaluation of the run reports too
        from gftrepro.trackers import names_of

        names_of(config.report_to)
        stages |= {s: dataclasses.replace(stages[s], report_to=config.report_to) for s in ("train", "eval")}
    needs = any(REGISTRY[link.method].behaviour for entry in config.methods for link in chain(entry))
    if needs and not stages["sample-teacher"].logprobs:
        return {**stages, "sample-teacher": dataclasses.replace(stages["sample-teacher"], logprobs=True)}
    return stages


def run(config: RunConfig, stages: dict[str, Any], run_dir: Path, console: Console | None = None) -> dict:
    from gftrepro import sample
    from gftrepro.stage import BASELINES

    console = console or Console()
    stages = run_stages(config, stages)
    BASELINES.update({name: stages[name] for name in SECTIONS})
    teacher = sample.run(stages["sample-teacher"], run_dir, "teacher", console)
    student = stages["sample-self"].model
    groups = make_groups(stages, run_dir, teacher["version"], student, student, console)
    for entry in config.methods:  # every entry's settings resolve before any training
        for link in chain(entry):
            train_config_for(stages, link)
    seeds = seed_range(config, stages)
    from gftrepro import parallel

    if parallel.parallel(config.jobs):  # every (entry, seed) in worker processes first; the loop below reuses them
        first_groups(config, stages, run_dir, teacher["version"], console)
        jobs = parallel.plan_jobs(config.methods, seeds, lambda link: resolved(stages, link))
        parallel.run_units(jobs, config.jobs, functools.partial(run_job, stages=stages, run_dir=run_dir, groups=groups,
                                                                teacher_version=teacher["version"],
                                                                rounds=config.rounds), console)
    results: dict[str, list[dict]] = {"base": []}
    curves: dict[str, list[dict]] = {}
    for seed in seeds:
        results["base"].append(evaluate_base(stages, run_dir, seed, console))
        for entry in config.methods:
            result = train_and_evaluate(stages, run_dir, entry, seed, groups, teacher["version"], config.rounds,
                                        console)
            curves.setdefault(entry, result["train"])
            results.setdefault(entry, []).append(result)
    signal_share = groups["summary"]["groups_out"] / max(groups["summary"]["prompts_in"], 1)
    rows = summary_rows(results, signal_share)
    write_outputs(run_dir / "summary", rows, results, curves, config)
    from gftrepro import paper_tables

    paper_tables.write(run_dir / "summary", rows)
    for table in summary_tables(rows, config):
        console.print(table)
    from gftrepro import report

    claims = report.report(run_dir, console, brief=True)
    if config.report_to:
        from gftrepro.trackers import Trackers, names_of

        folder = run_dir / "summary"
        flat = {f"{r['model']}/{k}": v[0] for r in rows for k, v in r.items() if isinstance(v, tuple | list)
                and len(v) == 2 and isinstance(v[0], float) and k != "per_seed"}
        trackers = Trackers(names_of(config.report_to), folder, run_dir, "run summary", dataclasses.asdict(config))
        trackers.final(flat, {n: folder / f"{n}.png" for n in ("passk", "training", "forest")})
        trackers.close()
    return {"rows": rows, "claims": claims}


def resolved(stages: dict[str, Any], link: Link) -> tuple[str, str]:
    """What a link trains, as (train, groups): its train config's versioned keys, and for an offline link
    the build-groups config its groups are built with ('' on-policy). Two links with the same pair train
    the same version from the same start (``gft@n_self=4`` is ``gft``; ``@micro_batch_size=`` changes
    nothing)."""
    train = json.dumps(cfg.versioned_dict(train_config_for(stages, link)), sort_keys=True, default=str)
    if link.online:
        return train, ""
    groups = cfg.versioned_dict(dataclasses.replace(stages["build-groups"], **dict(link.groups)))
    return train, json.dumps(groups, sort_keys=True, default=str)


def first_groups(config: RunConfig, stages: dict[str, Any], run_dir: Path, teacher_version: str,
                 console: Console) -> None:
    """The groups every entry's first offline link rebuilds from the base student (its build-groups
    settings), built before ``--jobs`` starts: several seeds' jobs need them, none has to wait for another."""
    student = stages["sample-self"].model
    for entry in config.methods:
        link = chain(entry)[0]
        if not link.online and link.groups:
            make_groups(stages, run_dir, teacher_version, student, student, console, link.groups)


def run_job(job, stages: dict[str, Any], run_dir: Path, groups: dict, teacher_version: str, rounds: int) -> float:
    """One job of ``gft run --jobs`` (``parallel.Job``), in a worker process, quietly; its seconds."""
    started, console = time.perf_counter(), Console(quiet=True)
    if job.entry is None:
        evaluate_base(stages, run_dir, job.seed, console)
    else:
        train_and_evaluate(stages, run_dir, job.entry, job.seed, groups, teacher_version, rounds, console)
    return time.perf_counter() - started


def evaluate_base(stages: dict[str, Any], run_dir: Path, seed: int, console: Console) -> dict:
    """The base student evaluated with this seed: its summary record."""
    from gftrepro import evaluate

    base = evaluate.run(dataclasses.replace(stages["eval"], model=stages["sample-self"].model, seed=seed), run_dir,
                        console, show_table=False)
    return {"eval": base["metrics"], "train": None, "seed": seed, "folders": eval_folders(base, stages["eval"].limit)}


def train_and_evaluate(stages: dict[str, Any], run_dir: Path, entry: str, seed: int, groups: dict,
                       teacher_version: str, rounds: int, console: Console) -> dict:
    """One entry (a method or a chain) trained and evaluated with this seed: its summary record."""
    from gftrepro import evaluate

    model_dir, metrics, last = train_chain(stages, run_dir, entry, seed, groups, teacher_version, rounds, console)
    evaluated = evaluate.run(dataclasses.replace(stages["eval"], model=str(model_dir), seed=seed), run_dir, console,
                             show_table=False)
    return {"eval": evaluated["metrics"], "train": metrics, "seed": seed,
            "folders": eval_folders(evaluated, stages["eval"].limit), "tau": last.tau}


def eval_folders(manifest: dict, limit: int) -> dict[str, str]:
    """{benchmark: its samples' folder, relative to the run}, the main benchmark first: what gft report
    resamples."""
    from gftrepro.evaluate import folder_name

    return {b: f"eval/{manifest['version']}/{folder_name(b, limit)}" for b in manifest["metrics"]["benchmarks"]}


def make_groups(stages: dict[str, Any], run_dir: Path, teacher_version: str, sampler: str, student: str,
                console: Console, settings: tuple[tuple[str, Any], ...] = ()) -> dict:
    """Self samples from ``sampler`` (the base student, or a checkpoint in later rounds), their rewards,
    and the groups (with an entry's build-groups ``settings``), each stage reading exactly the versions
    made here."""
    from gftrepro import build_groups, sample, verify

    own = sample.run(dataclasses.replace(stages["sample-self"], model=sampler), run_dir, "self", console)
    verified = verify.run(dataclasses.replace(stages["verify"], teacher_version=teacher_version,
                                              self_version=own["version"]), run_dir, console)
    config = dataclasses.replace(stages["build-groups"], verify_version=verified["version"], model=student,
                                 **dict(settings))
    config.validate()
    return build_groups.run(config, run_dir, console)


def train_config_for(stages: dict[str, Any], link: Link | str) -> TrainConfig:
    """The train section with the link's method, that method's ``per_method`` keys and the link's own
    settings applied, validated (one error line naming the entry for a bad value)."""
    link = link if isinstance(link, Link) else parse_link(link, link)
    keys = stages.get("per_method", {}).get(link.method, {})
    config = cfg.build(TrainConfig, cfg.to_dict(stages["train"]), keys, {"method": link.method})
    if stages.get("budget") == "trajectories" and not link.online:
        config = cfg.build(TrainConfig, cfg.to_dict(config), equal_trajectories(config, stages))
    config = cfg.build(TrainConfig, cfg.to_dict(config), dict(link.train))
    config = dataclasses.replace(config, **same_group(config))
    try:
        config.validate()
    except GftError as e:
        raise GftError(f"{link.text}: {e}" if link.train else str(e)) from None
    return config


def same_group(config: TrainConfig) -> dict[str, int]:
    """An on-policy group given as the method's own (``gft-online@ratio=4:4`` is 1:3:4, gft's) is the method's
    default (-1s), so the entry is the same training, with the same version, as the method without settings."""
    keys = ("n_expert", "n_teacher", "self_k")
    if config.group == REGISTRY[config.method].group and any(getattr(config, k) >= 0 for k in keys):
        return dict.fromkeys(keys, -1)
    return {}


def equal_trajectories(config: TrainConfig, stages: dict[str, Any]) -> dict[str, int]:
    """``budget: trajectories``: a single-trajectory method's epochs (or max_steps) times K / its data's
    sequences a prompt (sft 1, sft-mix 1 + teacher n, teacher n), rounded, so it trains about as many
    sequences as a group method over the same prompts (repeating its data: the miniature has no more)."""
    data = REGISTRY[config.method].data
    if data == "groups":
        return {}
    per_prompt = {"sft": 1, "sft-mix": 1 + stages["sample-teacher"].n, "teacher": stages["sample-teacher"].n}[data]
    factor = max(1, round(stages["build-groups"].k / per_prompt))
    return {"max_steps": config.max_steps * factor} if config.max_steps else {"epochs": config.epochs * factor}


def train_chain(stages: dict[str, Any], run_dir: Path, entry: str, seed: int, groups: dict, teacher_version: str,
                rounds: int, console: Console) -> tuple[Path, list[dict], TrainConfig]:
    """Train every link of ``entry`` (one method, or a chain), each from the previous link's model; the
    final model folder, the concatenated per-step metrics (steps numbered on across links) and the last
    link's train config."""
    student = stages["sample-self"].model
    start, metrics = student, []
    for link in chain(entry):
        if link.online:
            links = [train_method(stages, run_dir, link, seed, "", start, console, groups["inputs"]["verify"])]
        else:
            version = groups["version"] if start == student and not link.groups else \
                make_groups(stages, run_dir, teacher_version, start, student, console, link.groups)["version"]
            links = [train_method(stages, run_dir, link, seed, version, start, console)]
            for _ in range(1, rounds if REGISTRY[link.method].rounds else 1):  # --rounds: re-sample, retrain
                regrouped = make_groups(stages, run_dir, teacher_version, str(links[-1][0]), student, console,
                                        link.groups)
                links.append(train_method(stages, run_dir, link, seed, regrouped["version"], str(links[-1][0]),
                                          console))
        for model_dir, more in links:
            offset = metrics[-1]["step"] if metrics else 0
            metrics += [{**m, "step": m["step"] + offset} for m in more]
            start = str(model_dir)
    return Path(start), metrics, train_config_for(stages, link)


def train_method(stages: dict[str, Any], run_dir: Path, link: Link, seed: int, groups_version: str, start: str,
                 console: Console, verify_version: str = "") -> tuple[Path, list[dict]]:
    """Train the link's method from ``start`` on those groups (offline) or on-policy over that verify version
    (when given); the model folder and its per-step metrics."""
    from gftrepro import train

    tcfg = dataclasses.replace(train_config_for(stages, link), seed=seed, build_groups_version=groups_version,
                               model=start, ref_model=stages["sample-self"].model,  # KL to the base student
                               online=bool(verify_version), verify_version=verify_version)
    manifest = train.run(tcfg, run_dir, console)
    model_dir = run_dir / "train" / manifest["version"] / "model"
    return model_dir, metric_lines(model_dir.parent / "metrics.jsonl")
