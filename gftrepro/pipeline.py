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
per method), ``passk.png`` (pass@k per method), printed as a table at the end.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from gftrepro import config as cfg
from gftrepro.build_groups import BuildGroupsConfig
from gftrepro.config import opt
from gftrepro.engine.config import TrainConfig
from gftrepro.engine.state import metric_lines
from gftrepro.entries import RUN_METHODS, Link, chain, parse_link
from gftrepro.errors import GftError
from gftrepro.evaluate import EvalConfig
from gftrepro.evidence import PROBES
from gftrepro.methods import REGISTRY
from gftrepro.sample import SELF_DEFAULTS, SampleConfig
from gftrepro.store import atomic_write_bytes
from gftrepro.verify import VerifyConfig

SECTIONS: dict[str, tuple[type, dict[str, Any]]] = {
    "sample-teacher": (SampleConfig, {}),
    "sample-self": (SampleConfig, SELF_DEFAULTS),
    "verify": (VerifyConfig, {}),
    "build-groups": (BuildGroupsConfig, {}),
    "train": (TrainConfig, {"kl_every": 8}),
    "eval": (EvalConfig, {"pass_k": 32, "limit": 200, "batch_size": 256, "max_new_tokens": 64}),
}
REPORT_KS = (1, 4, 16, 32, 64, 128, 256)
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
        if self.seeds < 1 or self.rounds < 1:
            raise GftError("seeds and rounds must be at least 1")
        if self.seeds > MAX_SEEDS or self.rounds > MAX_SEEDS:
            raise GftError(f"seeds and rounds must be at most {MAX_SEEDS:,} (each seed trains every method again)")


MAX_SEEDS = 1000


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
        raise GftError(f"unknown config key '{unknown[0]}' in {path} (run keys: methods, seeds, rounds, per_method; "
                       f"stage sections: {', '.join(SECTIONS)})")
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


def with_behaviour(config: RunConfig, stages: dict[str, Any]) -> dict[str, Any]:
    """The stages as this run needs them: a method trained on the teacher's log-probs (pear) has the
    teacher sampled with ``logprobs`` (the samples are the same; the version records the log-probs)."""
    needs = any(REGISTRY[link.method].behaviour for entry in config.methods for link in chain(entry))
    if needs and not stages["sample-teacher"].logprobs:
        return {**stages, "sample-teacher": dataclasses.replace(stages["sample-teacher"], logprobs=True)}
    return stages


def run(config: RunConfig, stages: dict[str, Any], run_dir: Path, console: Console | None = None) -> dict:
    from gftrepro import evaluate, sample
    from gftrepro.stage import BASELINES

    console = console or Console()
    stages = with_behaviour(config, stages)
    BASELINES.update({name: stages[name] for name in SECTIONS})
    teacher = sample.run(stages["sample-teacher"], run_dir, "teacher", console)
    student = stages["sample-self"].model
    groups = make_groups(stages, run_dir, teacher["version"], student, student, console)
    for entry in config.methods:  # every entry's settings resolve before any training
        for link in chain(entry):
            train_config_for(stages, link)
    results: dict[str, list[dict]] = {"base": []}
    curves: dict[str, list[dict]] = {}
    for seed in seed_range(config, stages):
        base_eval = dataclasses.replace(stages["eval"], model=student, seed=seed)
        base = evaluate.run(base_eval, run_dir, console, show_table=False)
        results["base"].append({"eval": base["metrics"], "train": None, "seed": seed,
                                "folders": eval_folders(base, stages["eval"].limit)})
        for entry in config.methods:
            model_dir, metrics, last = train_chain(stages, run_dir, entry, seed, groups, teacher["version"],
                                                   config.rounds, console)
            curves.setdefault(entry, metrics)
            ecfg = dataclasses.replace(stages["eval"], model=str(model_dir), seed=seed)
            evaluated = evaluate.run(ecfg, run_dir, console, show_table=False)
            results.setdefault(entry, []).append({"eval": evaluated["metrics"], "train": metrics, "seed": seed,
                                                  "folders": eval_folders(evaluated, stages["eval"].limit),
                                                  "tau": last.tau})
    signal_share = groups["summary"]["groups_out"] / max(groups["summary"]["prompts_in"], 1)
    rows = summary_rows(results, signal_share)
    write_outputs(run_dir / "summary", rows, results, curves, config)
    for table in summary_tables(rows, config):
        console.print(table)
    from gftrepro import report

    return {"rows": rows, "claims": report.report(run_dir, console, brief=True)}


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
    config = cfg.build(TrainConfig, cfg.to_dict(stages["train"]), keys, dict(link.train), {"method": link.method})
    try:
        config.validate()
    except GftError as e:
        raise GftError(f"{link.text}: {e}" if link.train else str(e)) from None
    return config


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


FORGETTING = PROBES  # probes of prior skills (paper Table 3)


def summary_rows(results: dict[str, list[dict]], signal_share: float) -> list[dict]:
    """Mean and spread over seeds of each reported metric, per model, and every seed's value.

    Accuracy is on the eval's first benchmark (the held-out split of the training task); ``probe`` is
    pass@1 averaged over the forgetting probes that were evaluated; ``<benchmark>/<metric>`` keeps every
    benchmark's numbers (in ``per_seed`` only)."""
    rows = []
    for name, runs in results.items():
        values: dict[str, list[float]] = {}
        for r in runs:
            for key, value in run_values(r).items():
                values.setdefault(key, []).append(value)
        row: dict[str, Any] = {"model": name, "seeds": len(runs),
                               "groups_with_signal": signal_of(name, runs, signal_share)}
        for key, vals in values.items():
            if "/" not in key:
                row[key] = (float(np.mean(vals)), float(np.std(vals)) if len(vals) > 1 else None)
        row["per_seed"] = values
        if all("folders" in r for r in runs):  # the eval samples, per seed: gft report resamples their problems
            row.update(seed_ids=[r["seed"] for r in runs], n=[r["eval"]["n"] for r in runs],
                       eval_folders=[r["folders"] for r in runs])
        if runs and runs[0].get("tau") is not None:
            row["tau"] = runs[0]["tau"]
        rows.append(row)
    return rows


def run_values(r: dict) -> dict[str, float]:
    """One seed's reported values: main benchmark accuracy, probe, last entropy and KL, every benchmark."""
    benches = r["eval"]["benchmarks"]
    main, n = benches[next(iter(benches))], r["eval"]["n"]
    out = {f"avg@{n}": main[f"avg@{n}"], **{f"pass@{k}": main[f"pass@{k}"] for k in REPORT_KS if f"pass@{k}" in main}}
    probes = [benches[b]["pass@1"] for b in FORGETTING if b in benches]
    if probes:
        out["probe"] = float(np.mean(probes))
    if r["train"]:
        out["entropy"] = r["train"][-1]["entropy"]
        kls = [m["kl_ref"] for m in r["train"] if "kl_ref" in m]
        if kls:
            out["kl_to_base"] = kls[-1]
    out.update({f"{b}/{k}": v for b, m in benches.items() for k, v in m.items() if k.startswith(("avg@", "pass@"))})
    return out


def signal_of(entry: str, runs: list[dict], offline_share: float) -> float | None:
    """Share of groups with mixed rewards: the built groups' (offline) or the mean over on-policy steps (the
    last link of a chain decides)."""
    if entry == "base":
        return None
    last = chain(entry)[-1]
    method, online = last.method, last.online
    if online:
        shares = [m["zero_variance_share"] for r in runs for m in r["train"] if "zero_variance_share" in m]
        return 1 - float(np.mean(shares)) if shares and not REGISTRY[method].reward_weighted else None
    return offline_share if REGISTRY[method].uses_advantage else None


def cell(value: Any, percent: bool, sep: str = " ± ") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{100 * value:.1f}%" if percent else f"{value:.3f}"
    mean, spread = value
    scale = 100 if percent else 1
    text = f"{scale * mean:.1f}" if percent else f"{mean:.4f}"
    return text if spread is None else text + (f"{sep}{scale * spread:.1f}" if percent else f"{sep}{spread:.4f}")


def columns(rows: list[dict]) -> list[tuple[str, bool]]:
    keys = [k for k in rows[0] if k.startswith(("avg@", "pass@"))] + (["probe"] if "probe" in rows[0] else [])
    return [(k, True) for k in keys] + [("entropy", False), ("kl_to_base", False), ("groups_with_signal", True)]


def summary_tables(rows: list[dict], config: RunConfig) -> list[Table]:
    """Accuracy, then training signals: two narrow tables (no cell is cut at 80 columns; avg@n equals
    pass@1 and stays in summary.md)."""
    from rich import box

    cols = [c for c in columns(rows) if not c[0].startswith("avg@")]
    main = [c for c in cols if c[0].startswith("pass@") or c[0] == "probe"]
    groups = [(f"held-out accuracy (%), {config.seeds} seed(s), mean ± std", main, True),
              ("training: entropy, KL to base, signal (last step)", [c for c in cols if c not in main], False)]
    tables = []
    for title, group, with_base in groups:
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1),
                      min_width=len(title))
        table.add_column("model", overflow="fold")
        for key, _ in group:
            table.add_column(key.replace("kl_to_base", "KL to base").replace("groups_with_signal", "signal"),
                             justify="right", no_wrap=True)
        for r in rows:
            if r["model"] == "base" and not with_base:  # the untrained base has no training signals
                continue
            table.add_row(r["model"], *(cell(r.get(k), pct, "±") for k, pct in group))
        tables.append(table)
    return tables


def write_outputs(folder: Path, rows: list[dict], results: dict, curves: dict, config: RunConfig) -> None:
    from gftrepro.plots import passk_band_plot, training_plot

    folder.mkdir(parents=True, exist_ok=True)
    cols = columns(rows)
    lines = ["| model | " + " | ".join(k for k, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    lines += ["| " + r["model"] + " | " + " | ".join(cell(r.get(k), p) for k, p in cols) + " |" for r in rows]
    note = f"\nmethods {', '.join(config.methods)}; {config.seeds} seed(s); mean ± std over seeds.\n"
    atomic_write_bytes(folder / "summary.md", ("\n".join(lines) + "\n" + note).encode())
    atomic_write_bytes(folder / "summary.json", json.dumps(rows, indent=1).encode())
    passk_band_plot(rows, list(next(iter(results.values()))[0]["eval"]["benchmarks"]), folder / "passk.png")
    training_plot(curves, folder / "training.png")
