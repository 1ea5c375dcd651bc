"""PNG plots: pass@k curves (log-scale k) per model, with seed bands for gft run, and training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(plt: Any, fig: Any, path: Path) -> None:
    """Lay out, write to a temporary name, close, then rename into place (never a half-written PNG)."""
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def passk_axes(ax: Any, title: str, fontsize: float | None = None) -> None:
    ax.set_xscale("log", base=2)
    ax.set_title(title, **({} if fontsize is None else {"fontsize": fontsize}))
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (%)")
    ax.grid(alpha=0.3)


def passk_plot(by_model: dict[str, dict], path: Path) -> None:
    """``by_model``: {label: metrics dict of gftrepro.evaluate}; writes one PNG."""
    plt = pyplot()

    first = next(iter(by_model.values()))
    panels = list(first["benchmarks"]) + (["average (macro)"] if len(first["benchmarks"]) > 1 else [])
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for label, metrics in by_model.items():
            m = metrics["average"] if panel == "average (macro)" else metrics["benchmarks"].get(panel)
            if m is None:
                continue
            ks = [k for k in metrics["ks"] if f"pass@{k}" in m]
            ax.plot(ks, [100 * m[f"pass@{k}"] for k in ks], marker="o", label=label)
        passk_axes(ax, panel)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    save(plt, fig, path)


def passk_band_plot(rows: list[dict], benchmarks: list[str], path: Path) -> None:
    """Pass@k against k (log scale) per model: the mean over seeds with a band of ± one std, one panel per
    benchmark. ``rows``: gftrepro.summary.summary_rows (their ``per_seed`` values)."""
    plt = pyplot()
    import numpy as np

    fig, axes = plt.subplots(1, len(benchmarks), figsize=(5.2 * len(benchmarks), 3.8), squeeze=False)
    for ax, bench in zip(axes.flat, benchmarks, strict=True):
        for row in rows:
            per = row["per_seed"]
            ks = sorted(int(key.rsplit("@", 1)[1]) for key in per if key.startswith(f"{bench}/pass@"))
            if not ks:
                continue
            values = np.array([per[f"{bench}/pass@{k}"] for k in ks]) * 100  # [k, seed]
            mean, std = values.mean(axis=1), values.std(axis=1)
            (line,) = ax.plot(ks, mean, marker="o", markersize=3, label=f"{row['model']} ({row['seeds']})")
            if values.shape[1] > 1:
                ax.fill_between(ks, mean - std, mean + std, color=line.get_color(), alpha=0.18, linewidth=0)
        passk_axes(ax, f"{bench}: pass@k, mean ± std over seeds", fontsize=9)
    axes.flat[0].legend(fontsize=7, title="model (seeds)", title_fontsize=7)
    save(plt, fig, path)


TRAINING_PANELS = (("loss", "training loss"), ("entropy", "mean policy entropy (response tokens)"),
                   ("kl_ref", "KL(pi_theta || pi_base) per token"),
                   ("rectified_share", "DCR-rectified share (p < tau)"),
                   ("reward/self", "on-policy reward (self samples)"))


def training_plot(curves: dict[str, list[dict]], path: Path) -> None:
    """Per optimizer step, one line per method: loss, entropy, KL to the base, the DCR-rectified share of
    tokens and, for on-policy methods, the mean reward of the self samples (panels with no data are left out)."""
    plt = pyplot()

    panels = [(k, t) for k, t in TRAINING_PANELS if any(k in m for ms in curves.values() for m in ms)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.3), squeeze=False)
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        for method, metrics in curves.items():
            points = [(m["step"], m[key]) for m in metrics if key in m]
            if points:
                ax.plot(*zip(*points, strict=True), label=method, marker="." if len(points) < 30 else None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    save(plt, fig, path)


VERDICT_COLOURS = {"reproduced": "tab:green", "contradicted": "tab:red", "inconclusive": "tab:orange"}


def forest_plot(claims: list[dict], path: Path) -> None:
    """Each measured comparison of ``gft report`` (``claims``: report.report_rows) as its difference with the
    95% interval, coloured by verdict: accuracy differences in points (zero line, the non-inferiority margin's
    line), KL and entropy differences in their own panel. Nothing measured: no file."""
    rows = [(c, check) for c in claims for check in c.get("checks", [])]
    panels = [p for p in (("accuracy", [r for r in rows if r[1]["metric"] not in ("kl_to_base", "entropy")]),
                          ("KL / entropy", [r for r in rows if r[1]["metric"] in ("kl_to_base", "entropy")])) if p[1]]
    if not panels:
        path.unlink(missing_ok=True)
        return
    plt = pyplot()
    heights = [len(p[1]) for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8.5, 1.2 + 0.42 * sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (title, items) in zip(axes.flat, panels, strict=True):
        scale = 100 if title == "accuracy" else 1
        for y, (_, check) in enumerate(reversed(items)):
            colour = VERDICT_COLOURS.get(check["verdict"], "grey")
            est, low, high = (scale * check[k] for k in ("estimate", "low", "high"))
            ax.errorbar(est, y, xerr=[[est - low], [high - est]], fmt="o", color=colour, capsize=3, markersize=4)
            if check["margin"]:
                ax.plot([-scale * check["margin"]] * 2, [y - 0.4, y + 0.4], color="grey", linestyle=":", linewidth=1)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(items)))
        ax.set_yticklabels([f"{claim['id']}: {check['label']} ({check['metric']})" for claim, check in reversed(items)],
                           fontsize=7)
        ax.set_xlabel("difference, points of accuracy (dotted: non-inferiority margin)" if scale == 100
                      else "difference (nats)", fontsize=8)
        ax.set_title(f"{title}: difference with 95% interval (green reproduced, red contradicted, orange "
                     "inconclusive)", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    save(plt, fig, path)


def setting_plot(by_value: dict[str, dict], label: str, path: Path, line: bool) -> None:
    """Pass@1 and pass@k at the largest k (mean ± std over seeds, %) against one setting's values (the
    tau curve: ``line``; the group-ratio bars otherwise); ``by_value``: {value: summary row}."""
    plt = pyplot()
    first = next(iter(by_value.values()))
    k = max((int(key.split("@")[1]) for key in first if key.startswith("pass@")), default=1)
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    xs = list(range(len(by_value)))
    for shift, metric in ((-0.2, "pass@1"), (0.2, f"pass@{k}")):
        means = [100 * (r.get(metric) or (0.0, None))[0] for r in by_value.values()]
        stds = [100 * ((r.get(metric) or (0.0, None))[1] or 0.0) for r in by_value.values()]
        if line:
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=metric)
        else:
            ax.bar([x + shift for x in xs], means, width=0.4, yerr=stds, capsize=3, label=metric)
    ax.set_xticks(xs, list(by_value))
    ax.set_xlabel(label)
    ax.set_ylabel("held-out accuracy (%)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    save(plt, fig, path)
