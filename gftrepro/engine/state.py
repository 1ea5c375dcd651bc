"""A training's state on disk: the resumable checkpoint (every process's part, renamed into place; refused
when written under other settings), ``metrics.jsonl`` (one line per optimizer step: read, truncated to the
resumed step, its last value), and the one-line summary of a finished training.

The checkpoint functions take the ``Trainer`` (``gftrepro/engine/trainer.py``) whose state they hold."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from gftrepro import checkpoint, store
from gftrepro.errors import GftError


def metric_lines(path: Path) -> list[dict]:
    """The complete lines of ``metrics.jsonl`` (a kill during an append leaves a partial last line:
    dropped)."""
    if not path.exists():
        return []
    lines = []
    for ln in path.read_text().splitlines():
        try:
            lines.append(json.loads(ln))
        except ValueError:
            continue
    return lines


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after the checkpoint being resumed from, and a partial last line."""
    if path.exists():
        lines = [m for m in metric_lines(path) if m.get("step", step + 1) <= step]
        store.atomic_write_bytes(path, "".join(json.dumps(m) + "\n" for m in lines).encode())


def last_metric(path: Path, key: str) -> float | None:
    lines = metric_lines(path)
    return lines[-1].get(key) if lines else None


def summary_line(manifest: dict) -> str:
    s = manifest["summary"]
    loss = "-" if s["final_loss"] is None else f"{s['final_loss']:.4f}"
    skipped = f" ({s['skipped_steps']} skipped)" if s["skipped_steps"] else ""
    procs = f", {s['world_size']} processes" if s["world_size"] > 1 else ""
    return f"{s['method']}: {s['steps']} steps{skipped}, {s['sequences']} sequences, final loss {loss}{procs}"


def save_checkpoint(trainer: Any, step: int) -> None:
    """Every process writes its part into a temporary folder, renamed over the previous checkpoint."""
    acc, vdir = trainer.accelerator, trainer.vdir
    tmp, final = vdir.path / ".checkpoint-tmp", vdir.path / "checkpoint"
    if trainer.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    acc.wait_for_everyone()
    checkpoint.save(tmp, trainer.rank, trainer.main, trainer.net, trainer.optimizer, trainer.scheduler,
                    trainer.sharded)
    acc.wait_for_everyone()
    if trainer.main:
        state = {**trainer.expected, "skipped": trainer.skipped, "step": step, "total_steps": trainer.total_steps}
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        old = vdir.path / ".checkpoint-old"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def resume_step(trainer: Any) -> tuple[int, dict]:
    """Load the checkpoint if there is one; refuse it if it was written under another config or process
    count."""
    ckpt = trainer.vdir.path / "checkpoint"
    state_file = ckpt / "trainer_state.json"
    if not state_file.exists():
        return 0, {}
    try:
        state = json.loads(state_file.read_text())
    except ValueError as e:
        raise GftError(f"cannot resume: {state_file} does not parse ({e}); delete {ckpt} to start over") from None
    changed = [k for k in trainer.expected if state.get(k) != trainer.expected[k]]
    if changed:
        raise GftError(f"checkpoint {ckpt} was written with a different {', '.join(changed)}; refusing to resume "
                       f"(delete the checkpoint folder to start over, or restore the settings)")
    checkpoint.load(ckpt, trainer.rank, trainer.net, trainer.optimizer, trainer.scheduler, trainer.sharded)
    return int(state["step"]), state

