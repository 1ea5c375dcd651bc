"""What every stage does first: find its version folder, print the header, stop if complete.

The header is one line: the stage, its version folder, and the settings that differ from the
defaults. The whole resolved config is always in the version's ``config.json``; ``gft -v ...``
(``GFT_VERBOSE=1``) also prints it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from gftrepro import config as cfg
from gftrepro import locks, store


def open_stage(run_dir: Path, stage: str, config: Any, inputs: dict[str, Any], console: Console) -> store.VersionDir:
    """The version folder for this config and these inputs; prints the header line (and, verbose, the
    resolved config)."""
    vdir = store.open_version(run_dir, stage, cfg.versioned_dict(config), inputs, cfg.to_dict(config))
    # the upstream versions a run wires in are in config.json
    skip = tuple(k for k in cfg.to_dict(config) if k.endswith("_version")) + ("ref_model",)
    changed = cfg.changed(config, skip, BASELINES.get(stage))
    diff = " ".join(f"{k}={shown(v, run_dir)}" for k, v in changed.items())
    console.print(f"[bold cyan]gft {stage}[/] {vdir.version}" + (f"  [dim]{diff}[/]" if diff else ""),
                  highlight=False)
    if verbose():
        console.print(f"{vdir.path}\n{cfg.to_yaml(config).rstrip()}", highlight=False)
    return vdir


def shown(value: Any, run_dir: Path) -> str:
    """A header value: lists comma-joined; a model trained in this run as ``train/<version>``."""
    if isinstance(value, list):
        return ",".join(map(str, value))
    text = str(value)
    inside = text.removeprefix(f"{run_dir}/")
    return inside.removesuffix("/model") if inside != text else text


BASELINES: dict[str, Any] = {}  # gft run: each stage's header shows what differs from the run's own section


def verbose() -> bool:
    return os.environ.get("GFT_VERBOSE") == "1"


def already_done(vdir: store.VersionDir, console: Console, line: Callable[[dict], str]) -> dict:
    """Say a complete stage has nothing to do, with its summary line; return its manifest."""
    manifest = vdir.read_manifest()
    done_line(console, line(manifest), "already complete, nothing to do")
    return manifest


def done_line(console: Console, text: str, status: str = "done") -> None:
    """The one summary line a stage ends with."""
    console.print(f"  [green]{status}[/green]: {text}", highlight=False)


@contextmanager
def writing(vdir: store.VersionDir, console: Console, part: str = "") -> Iterator[None]:
    """Hold the version's writer lock; first remove what is damaged (said on the console), so the stage
    redoes only that."""
    with locks.writer_lock(vdir, part):
        for said in vdir.repair():
            console.print(f"  [yellow]{said}[/]", highlight=False)
        yield
