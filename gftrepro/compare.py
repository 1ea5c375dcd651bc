"""``gft eval --compare A,B,...``: finished evaluations side by side, with deltas to the first.

Each argument is an eval stage folder (``outputs/runA/eval``: its most recently completed version
is used) or one version folder. Benchmarks and k values present in every evaluation are compared.
Writes ``<run>/compare/compare.md`` and ``compare.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gftrepro.errors import GftError
from gftrepro.plots import passk_plot
from gftrepro.store import MANIFEST, atomic_write_bytes


def load_eval(folder: Path) -> dict:
    candidates = [folder / MANIFEST] if (folder / MANIFEST).exists() else sorted(
        folder.glob(f"*/{MANIFEST}"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise GftError(f"no finished evaluation in {folder} (expected an eval folder with a manifest.json)")
    return json.loads(candidates[-1].read_text())["metrics"]


def compare(folders: list[Path], run_dir: Path, console: Console) -> dict:
    evals = {str(f): load_eval(f) for f in folders}
    labels = list(evals)
    common = set.intersection(*(set(m["benchmarks"]) for m in evals.values()))
    if not common:
        raise GftError("the evaluations share no benchmark")
    n = min(m["n"] for m in evals.values())
    ks = sorted(set.intersection(*(set(m["ks"]) for m in evals.values())))
    names = [b for b in next(iter(evals.values()))["benchmarks"] if b in common]
    columns = [f"pass@{k}" for k in ks]
    table = Table(title="gft eval --compare (deltas to the first)")
    table.add_column("benchmark")
    table.add_column("metric")
    for label in labels:
        table.add_column(label, justify="right")
    lines = ["| benchmark | metric | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for name in names:
        for col in columns:
            base = evals[labels[0]]["benchmarks"][name][col]
            cells = []
            for i, label in enumerate(labels):
                value = evals[label]["benchmarks"][name][col]
                cells.append(f"{100 * value:.1f}" + ("" if i == 0 else f" ({100 * (value - base):+.1f})"))
            table.add_row(name, col, *cells)
            lines.append(f"| {name} | {col} | " + " | ".join(cells) + " |")
    out = run_dir / "compare"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "compare.md", ("\n".join(lines) + "\n").encode())
    passk_plot(evals, out / "compare.png")
    console.print(table)
    console.print(f"n = {n} (smallest of the evaluations); wrote {out / 'compare.md'} and {out / 'compare.png'}")
    return {"compared": labels, "benchmarks": names}
