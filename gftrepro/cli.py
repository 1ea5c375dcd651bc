"""The ``gft`` command line: one command per pipeline stage, in pipeline order.

Each stage command takes ``--config FILE`` (YAML, the stage's keys at top level) and one flag per
config field (built from the field's help text, so flags and config keys are the same names);
flags override the file. ``--run`` picks the run folder (default ``outputs/default``).
Bad input prints one line ``error: ...`` and exits 2; ``gft --debug ...`` shows the traceback.
"""

from __future__ import annotations

import dataclasses
import errno
import inspect
import os
import signal
import sys
import threading
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from gftrepro import config as cfg
from gftrepro import store
from gftrepro.errors import GftError
from gftrepro.quiet import quiet_libraries

DEFAULT_RUN = Path("outputs/default")
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="gft: Group Fine-Tuning reproduction pipeline. Stage commands are listed in pipeline order.")
err = Console(stderr=True)
STATE = {"debug": os.environ.get("GFT_DEBUG") == "1"}


@app.callback()
def main_options(debug: bool = typer.Option(False, "--debug", help="show tracebacks on errors"),
                 verbose: bool = typer.Option(False, "--verbose", "-v", help="print each stage's resolved config "
                                              "(always in its config.json)")) -> None:
    STATE["debug"] = STATE["debug"] or debug
    if verbose:
        os.environ["GFT_VERBOSE"] = "1"  # read by gftrepro.stage, inherited by launched processes


def cut(text: str, limit: int = 1000) -> str:
    """A message cut to at most ``limit`` characters (the rest counted, not printed)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit:,} more characters)"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread stands so it unwinds like Ctrl-C (pools stopped, locks freed)."""


def on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


def guarded(fn: Callable[[], Any]) -> Any:
    """Run a command body: GftError -> one line and exit 2; anything else -> one line and exit 1.

    SIGINT and SIGTERM both unwind (verifier workers stopped, finished work kept) and say how to resume.
    """
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main else None
    try:
        quiet_libraries()
        return fn()
    except GftError as e:
        if STATE["debug"]:
            raise
        err.print(f"[red]error:[/red] {cut(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt as e:
        name, code = ("terminated", 143) if isinstance(e, Terminated) else ("interrupted", 130)
        err.print(f"{name}: finished work is kept (complete shards, checkpoints, versions); "
                  "rerun the same command to resume")
        raise typer.Exit(code) from None
    except OSError as e:
        if STATE["debug"] or e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise_internal(e)
        err.print(f"[red]error:[/red] disk full{f' writing {e.filename}' if e.filename else ''}: free space and rerun "
                  "the same command; finished work is kept (complete shards, checkpoints, versions)",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except Exception as e:
        raise_internal(e)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def raise_internal(e: Exception) -> None:
    """Anything unexpected: one line and exit 1 (``gft --debug`` re-raises it with its traceback)."""
    if STATE["debug"]:
        raise e
    err.print(f"[red]internal error:[/red] {type(e).__name__}: {e} (rerun with gft --debug for the traceback)",
              highlight=False, soft_wrap=True)
    raise typer.Exit(1) from None


def flag_parameters(config_cls: type, defaults: dict[str, Any]) -> list[inspect.Parameter]:
    """One ``--flag`` per config field, default None so only given flags override."""
    params = []
    instance = config_cls()
    hints = cfg.field_types(config_cls)
    for f in dataclasses.fields(config_cls):
        tp = cfg.base_type(hints[f.name])
        flag = f.metadata.get("flag") or f.name.replace("_", "-")
        default = defaults.get(f.name, getattr(instance, f.name))
        is_list = typing.get_origin(tp) is list
        shown = ",".join(default) if is_list else default
        text = f"{f.metadata['help']}{' (comma-separated)' if is_list else ''} [default: {shown!r}]"
        if tp is bool:
            option = typer.Option(None, f"--{flag}/--no-{flag}", help=text, show_default=False)
        else:
            option = typer.Option(None, f"--{flag}", help=text, show_default=False)
            tp = str if is_list else tp
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=tp | None))
    return params


def stage_command(name: str, config_cls: type, body: Callable[[Any, Path], Any], help: str,
                  defaults: dict[str, Any] | None = None) -> None:
    """Register ``gft <name>``: resolve the config from defaults, file and flags, then run the stage."""

    def command(**kwargs: Any) -> None:
        path, run_dir = kwargs.pop("config"), kwargs.pop("run")
        overrides = {k: v for k, v in kwargs.items() if v is not None}
        guarded(lambda: body(cfg.load(config_cls, path, overrides, defaults), run_dir))

    common = [
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
                          default=typer.Option(None, "--config", "-c", help="YAML config file for this stage")),
        inspect.Parameter("run", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
                          default=typer.Option(DEFAULT_RUN, "--run", "--run-dir",
                                               help="run folder (--run-dir under torchrun, whose parser takes --run)")),
    ]
    command.__signature__ = inspect.Signature(common + flag_parameters(config_cls, defaults or {}))  # type: ignore[attr-defined]
    command.__doc__ = help
    app.command(name=name, help=help)(command)


def sample_stage(source: str) -> Callable[[Any, Path], Any]:
    def body(config: Any, run_dir: Path) -> Any:
        from gftrepro import sample

        return sample.run(config, run_dir, source)

    return body


def verify_stage(config: Any, run_dir: Path) -> Any:
    from gftrepro import verify as stage

    return stage.run(config, run_dir)


def build_groups_stage(config: Any, run_dir: Path) -> Any:
    from gftrepro import build_groups as stage

    return stage.run(config, run_dir)


def train_stage(config: Any, run_dir: Path) -> Any:
    from gftrepro import train as stage

    return stage.run(config, run_dir)


def eval_stage(config: Any, run_dir: Path) -> Any:
    from gftrepro import evaluate as stage

    return stage.run(config, run_dir)


def register() -> None:
    from gftrepro.build_groups import BuildGroupsConfig
    from gftrepro.engine.config import TrainConfig
    from gftrepro.evaluate import EvalConfig
    from gftrepro.sample import SELF_DEFAULTS, SampleConfig
    from gftrepro.verify import VerifyConfig

    stage_command("sample-teacher", SampleConfig, sample_stage("teacher"),
                  "Sample teacher completions: n per problem from a stronger model.")
    stage_command("sample-self", SampleConfig, sample_stage("self"),
                  "Sample self completions: n per problem from the student (base or checkpoint).", SELF_DEFAULTS)
    stage_command("verify", VerifyConfig, verify_stage,
                  "Verify: a binary reward per completion and expert solution (math-verify, hard deadline).")
    stage_command("build-groups", BuildGroupsConfig, build_groups_stage,
                  "Build groups of K = expert + teacher + self responses with group advantages (GAL).")
    stage_command("train", TrainConfig, train_stage,
                  "Train the student: gft, its ablations, sft / sft-mix / dft, or grpo (--online: on-policy).")
    stage_command("eval", EvalConfig, eval_stage,
                  "Evaluate a model: n samples per benchmark problem, avg@n, pass@k, maj@k (--compare).")


register()


@app.command("run")
def run_all(
    config: Path | None = typer.Option(None, "--config", "-c", help="whole-run YAML: methods, seeds, stage sections"),
    run: Path = typer.Option(DEFAULT_RUN, "--run", "--run-dir", help="run folder"),
    methods: str | None = typer.Option(None, "--methods", help="comma-separated; chains join with ':', settings "
                                       "follow '@' (gft-online@tau=0.1) [default: 'sft,gft,gft-online,grpo']"),
    seeds: int | None = typer.Option(None, "--seeds", help="seeds per method [default: 1]"),
    rounds: int | None = typer.Option(None, "--rounds", help="gft: re-sample and retrain rounds [default: 1]"),
    budget: str | None = typer.Option(None, "--budget", help="prompts (every method the same prompts and steps) or "
                                      "trajectories (the paper's: as many sequences) [default: prompts]"),
    jobs: int | None = typer.Option(None, "--jobs", "-j", help="worker processes for the trainings and evaluations "
                                    "(0 = one per CPU core) [default: 1]"),
    report_to: str | None = typer.Option(None, "--report-to", help="experiment trackers for every training and "
                                         "evaluation of the run and its summary, comma-separated: tensorboard, "
                                         "mlflow, wandb, trackio [default: none]"),
) -> None:
    """Run every stage: sample, verify, build groups, train each method, evaluate, compare."""

    def body() -> None:
        from gftrepro import pipeline

        given = {"methods": methods, "seeds": seeds, "rounds": rounds, "budget": budget, "jobs": jobs,
                 "report_to": report_to}
        overrides = {k: v for k, v in given.items() if v is not None}
        pipeline.run(pipeline.run_config(config, overrides), pipeline.stage_configs(config), run)

    guarded(body)


@app.command("report")
def report(run: Path = typer.Option(DEFAULT_RUN, "--run", "--run-dir", help="run folder (made by gft run)")) -> None:
    """The paper's claims, one per row: where it makes them, ours with a 95% interval, and a verdict by rule."""

    def body() -> None:
        from gftrepro import report as reporter

        reporter.report(run, Console())

    guarded(body)


@app.command("plan")
def plan(
    config: Path = typer.Option(..., "--config", "-c", help="whole-run YAML (as for gft run)"),
    run: Path = typer.Option(DEFAULT_RUN, "--run", "--run-dir", help="run folder to check for complete stages"),
    mean_new_tokens: float = typer.Option(600.0, help="assumed mean generated tokens per sample"),
    mean_prompt_tokens: float = typer.Option(200.0, help="assumed mean prompt tokens per training sequence"),
    gen_tok_s: float = typer.Option(15_000.0, help="assumed vLLM tokens/s per GPU for a 1.5B model (scaled by size)"),
    gpu_gb: float = typer.Option(80.0, help="GPU memory in GB"),
) -> None:
    """Plan a run without loading any model: stages, samples, tokens, GPU-hours, memory."""

    def body() -> None:
        from gftrepro import pipeline
        from gftrepro import plan as planner

        run_cfg = pipeline.run_config(config, {})
        stages = pipeline.run_stages(run_cfg, pipeline.stage_configs(config))
        pipeline.seed_range(run_cfg, stages)
        a = planner.Assumptions(mean_new_tokens, mean_prompt_tokens, gen_tok_s, gpu_gb)
        notes = [planner.memory_note(stages["sample-self"].model, a, stages["train"]),
                 f"assumptions: {mean_new_tokens:.0f} new tokens per sample, {mean_prompt_tokens:.0f} prompt "
                 f"tokens per training sequence, generation {gen_tok_s:,.0f} tok/s per GPU for 1.5B (scaled by "
                 f"1.5 / params), training {planner.TRAIN_TOK_S_1P5B:,} tok/s per H100 for 1.54B (measured, scaled "
                 "by 1.54 / params)"]
        models = f"models: teacher {stages['sample-teacher'].model}; student {stages['sample-self'].model}"
        planner.show(planner.plan_rows(run_cfg, stages, run, a), notes, Console(), models)

    guarded(body)


def short_time(when: str) -> str:
    """``2026-12-02T21:19:25+0000`` -> ``12-02 21:19`` (a status table fits 80 columns); anything else as is."""
    return when[5:16].replace("T", " ") if len(when) >= 16 and when[4] == "-" else when


@app.command("status")
def status(run: Path = typer.Option(DEFAULT_RUN, "--run", "--run-dir", help="run folder"),
           verify: bool = typer.Option(False, "--verify", help="also check every file's sha256 against its manifest "
                                       "(reads all of them)")) -> None:
    """Where a run stands: each stage's versions, complete / partial / running / damaged. A version is
    complete when its manifest parses and lists files that all exist with their recorded sizes (and, with
    --verify, hashes)."""

    def body() -> None:
        if run.exists() and not run.is_dir():
            raise GftError(f"--run {run} is a file, not a run folder")
        if not run.is_dir():
            raise GftError(f"run folder {run} does not exist (run a stage first, or pass --run)")
        table = Table(title=f"gft status: {run}" + (" (hashes checked)" if verify else ""), box=box.SIMPLE_HEAD)
        for col in ("stage", "version", "state", "shards", "rows", "done", "what"):  # what: method, model, problem
            table.add_column(col, overflow="fold", no_wrap=col in ("stage", "version", "state", "shards", "done"))
        colors = {"complete": "green", "partial": "yellow", "running": "cyan", "damaged": "red", "missing": "dim"}
        rows = store.status_rows(run, hashes=verify)
        for r in rows:
            table.add_row(r["stage"], r["version"], f"[{colors[r['state']]}]{r['state']}[/]", r["shards"], r["rows"],
                          short_time(r["when"]), r["what"])
        console = Console()
        console.print(table)  # every column folds: nothing is cut with an ellipsis at 80 columns
        damaged = [r for r in rows if r["state"] == "damaged"]
        if damaged:
            console.print(f"{len(damaged)} damaged version(s): rerun their stage to redo the damaged parts",
                          highlight=False)

    guarded(body)


def main() -> None:
    app(prog_name="gft")


if __name__ == "__main__":
    sys.exit(main())
