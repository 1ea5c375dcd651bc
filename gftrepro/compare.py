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
from gftrepro.store import CONFIG, MANIFEST, VersionDir, atomic_write_bytes


def load_eval(folder: Path) -> dict:
    """The metrics of a finished, undamaged eval version: ``folder`` is the version or an ``eval`` folder
    (its newest finished version); anything else, or a damaged version, is one clear error."""
    candidates = [folder] if (folder / MANIFEST).exists() or (folder / CONFIG).exists() else sorted(
        (p.parent for p in folder.glob(f"*/{MANIFEST}")), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise GftError(f"no finished evaluation in {folder} (expected an eval folder with a manifest.json)")
    path = candidates[-1]
    try:
        stage = json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("stage", path.parent.name)
    except (OSError, ValueError, AttributeError):  # unreadable: the check below names what is wrong
        stage = "eval"
    if stage != "eval":
        raise GftError(f"{path} is a {stage} version, not an evaluation (give an eval folder or version)")
    return VersionDir(path, "eval", path.name).verified().read_manifest()["metrics"]  # damaged: one error line


def label_of(folder: Path, folders: list[Path]) -> str:
    """A column header that tells the folders apart in few characters: the last parts that differ."""
    parts = folder.parts
    for depth in range(1, len(parts) + 1):
        tail = "/".join(parts[-depth:])
        if sum("/".join(f.parts[-depth:]) == tail for f in folders) == 1:
            return tail
    return str(folder)


def compare(folders: list[Path], run_dir: Path, console: Console) -> dict:
    evals = {label_of(f, folders): load_eval(f) for f in folders}
    labels = list(evals)
    common = set.intersection(*(set(m["benchmarks"]) for m in evals.values()))
    if not common:
        raise GftError("the evaluations share no benchmark")
    for name in common:  # a delta between different problem sets means nothing
        counts = {label: m["benchmarks"][name].get("problems") for label, m in evals.items()}
        if len(set(counts.values())) > 1:
            raise GftError(f"{name} was evaluated on different numbers of problems ("
                           + ", ".join(f"{label}: {c}" for label, c in counts.items())
                           + "); rerun them with the same --limit")
    n = min(m["n"] for m in evals.values())
    ks = sorted(set.intersection(*(set(m["ks"]) for m in evals.values())))
    names = [b for b in next(iter(evals.values()))["benchmarks"] if b in common]
    columns = [f"pass@{k}" for k in ks]
    table = Table(title="gft eval --compare (deltas to the first)", title_justify="left")
    table.add_column("benchmark", overflow="fold")
    table.add_column("metric")
    for label in labels:
        table.add_column(label, justify="right", overflow="fold")
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
    for label, m in evals.items():
        console.print(f"{label}: {m.get('model', '?')}", highlight=False, markup=False)
    console.print(f"n = {n} (smallest of the evaluations); wrote {out / 'compare.md'} and {out / 'compare.png'}")
    return {"compared": labels, "benchmarks": names}
