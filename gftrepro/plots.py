"""PNG plots: pass@k curves (log-scale k), one line per model, one panel per benchmark + the average."""

from __future__ import annotations

from pathlib import Path


def passk_plot(by_model: dict[str, dict], path: Path) -> None:
    """``by_model``: {label: metrics dict of gftrepro.evaluate}; writes one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        ax.set_xscale("log", base=2)
        ax.set_title(panel)
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def training_plot(curves: dict[str, list[dict]], path: Path) -> None:
    """Loss and mean policy entropy per optimizer step, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.3))
    for method, metrics in curves.items():
        steps = [m["step"] for m in metrics]
        axes[0].plot(steps, [m["loss"] for m in metrics], label=method)
        axes[1].plot(steps, [m["entropy"] for m in metrics], label=method)
    for ax, title in zip(axes, ("training loss", "mean policy entropy (response tokens)"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
