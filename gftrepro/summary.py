"""The summary of a ``gft run``: per model the mean, spread and every seed's value of each reported
metric, where each seed's eval samples lie (for ``gft report``'s per-problem intervals), the two
printed tables, ``summary.md``, ``summary.json`` and the plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from gftrepro.entries import chain
from gftrepro.evidence import PROBES
from gftrepro.methods import REGISTRY
from gftrepro.store import atomic_write_bytes

REPORT_KS = (1, 4, 16, 32, 64, 128, 256)

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
        rectified = [m["rectified_share"] for m in r["train"] if "rectified_share" in m]
        if rectified:  # tokens below tau, the mean over every step (paper Figure 6)
            out["rectified_share"] = float(np.mean(rectified))
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


def summary_tables(rows: list[dict], config: Any) -> list[Table]:
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


def write_outputs(folder: Path, rows: list[dict], results: dict, curves: dict, config: Any) -> None:
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
