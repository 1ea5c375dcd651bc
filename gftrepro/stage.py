"""What every stage does first: find its version folder, print the header, stop if complete."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gftrepro import config as cfg
from gftrepro import store


def open_stage(run_dir: Path, stage: str, config: Any, inputs: dict[str, Any], console: Console) -> store.VersionDir:
    """The version folder for this config and these inputs; prints it and the resolved config."""
    vdir = store.open_version(run_dir, stage, cfg.versioned_dict(config), inputs, cfg.to_dict(config))
    console.rule(f"gft {stage} -> {vdir.path}")
    console.print(cfg.to_yaml(config).rstrip(), highlight=False)
    return vdir


def already_done(vdir: store.VersionDir, console: Console, table: Callable[[dict], Table]) -> dict:
    """Say a complete stage has nothing to do, show its closing table again, return its manifest."""
    manifest = vdir.read_manifest()
    console.print(f"[green]complete[/green]: {vdir.stage} {vdir.version} is already done, nothing to do")
    console.print(table(manifest))
    return manifest
