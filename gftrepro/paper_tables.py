"""One table per table and figure of the paper, from a run's summary: ``<run>/summary/paper-tables.md``,
with the tau curve (``tau.png``) and the group-ratio bars (``ratio.png``).

Each table lists the run's entries that the paper's table has (a table with none is left out), as mean
± std over seeds in percent, and the paper's own numbers beside them where they are transcribed in
``reference/paper_results.json`` (Tables 3, 4 and 5; the paper's other tables are not transcribed, and
its models, data and benchmarks are not the miniature's, so the two columns are read side by side,
never subtracted). The verdicts with intervals are ``gft report``'s (``claims.md``); these tables only
lay the numbers out as the paper does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gftrepro.report import paper_numbers, pick, setting_entries, taus
from gftrepro.store import atomic_write_bytes

TABLE1 = ["base", "sft", "sft-mix", "dft", "asft", "psft", "pear", "gft", "gft-online", "gft-no-mix",
          "gft-no-mix-online", "grpo"]
TABLE2 = ["gft", "gft-no-dcr", "gft-no-gal", "gft-online", "gft-no-dcr-online", "gft-no-gal-online"]
CHAINS = ["sft:grpo", "gft:grpo", "gft-online:grpo", "sft:gft:grpo", "sft:gft-online:grpo", "pear:grpo"]
RATIOS = ["8:0", "6:2", "4:4", "2:6", "0:8"]


def pct(value: Any) -> str:
    """'33.0 ± 1.2' from (mean, std) in [0, 1], '33.0' for one seed, '-' when missing."""
    if not value:
        return "-"
    mean, spread = value
    return f"{100 * mean:.1f}" + ("" if spread is None else f" ± {100 * spread:.1f}")


def plain(value: Any, digits: int = 4) -> str:
    if not value:
        return "-"
    mean, spread = value
    return f"{mean:.{digits}f}" + ("" if spread is None else f" ± {spread:.{digits}f}")


def largest_k(rows: dict[str, dict]) -> str:
    ks = [int(k.split("@")[1]) for r in rows.values() for k in r if k.startswith("pass@")]
    return f"pass@{max(ks)}"


def table(title: str, header: list[str], lines: list[list[str]], note: str = "") -> list[str]:
    if not lines:
        return []
    out = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return out + ([""] + [note] if note else []) + [""]


def ratio_entries(rows: dict[str, dict]) -> dict[str, str]:
    """{D:S: entry}: GFT's ratio entries, and the plain GFT entry as 4:4 (its 1:3:4 group) unless one is given."""
    gft = pick(rows, "gft-online", "gft")
    found = setting_entries(rows, gft, "ratio")
    if found and "4:4" not in found and gft in rows:
        found["4:4"] = gft
    return {r: found[r] for r in RATIOS if r in found}


def tables(summary: list[dict]) -> str:
    """The markdown of every paper table the run has entries for."""
    rows = {r["model"]: r for r in summary}
    paper = paper_numbers()
    k = largest_k(rows)
    seeds = max(r["seeds"] for r in summary)
    out = [f"# The paper's tables on this run ({seeds} seed(s); mean ± std over seeds, in %)", "",
           "Verdicts with 95% intervals: `claims.md` (`gft report`). The paper's numbers are its own models' "
           "(Qwen2.5-Math, Llama) on its benchmarks: read beside ours, not against them.", ""]
    have = [m for m in TABLE1 if m in rows]
    out += table("Table 1: the methods", ["model", "pass@1", k, "probe"],
                 [[m, pct(rows[m].get("pass@1")), pct(rows[m].get(k)), pct(rows[m].get("probe"))] for m in have])
    have = [m for m in TABLE2 if m in rows]
    out += table("Table 2: ablations (no DCR, no GAL)", ["model", "pass@1", k],
                 [[m, pct(rows[m].get("pass@1")), pct(rows[m].get(k))] for m in have] if len(have) > 1 else [])
    t3 = paper["gft_table3_forgetting"]["rows"]
    gft = pick(rows, "gft-online", "gft")
    mapping = {"base": "base", "sft": "sft", "grpo": "grpo", gft: "gft"}
    out += table("Table 3: forgetting (the probe, pass@1)", ["model", "probe", "paper (MAWPS/SVAMP/MMLU-STEM mean)"],
                 [[m, pct(rows[m].get("probe")), f"{sum(t3[p].values()) / len(t3[p]):.1f}"]
                  for m, p in mapping.items() if m in rows and "probe" in rows[m]])
    t4 = paper["gft_table4_passk"]["rows"]["pass@128"]
    mapping = {"base": "base", "grpo": "grpo", gft: "gft"}
    out += table(f"Table 4: pass@k at the largest k ({k}; the paper's pass@128)", ["model", k, "paper pass@128 avg"],
                 [[m, pct(rows[m].get(k)), str(t4[p]["avg"])] for m, p in mapping.items() if m in rows])
    t5 = paper["gft_table5_group_ratio"]["rows"]
    found = ratio_entries(rows)
    out += table("Table 5: the group ratio N_demo:N_sample (K = 8)", ["ratio", "entry", "pass@1", k, "paper avg@16"],
                 [[r, e, pct(rows[e].get("pass@1")), pct(rows[e].get(k)), str(t5[r]["avg"])] for r, e in found.items()])
    have = [m for m in CHAINS if m in rows]
    out += table("Figure 4: a better start for RL (chains)", ["chain", "pass@1", "pass@16", k],
                 [[m, pct(rows[m].get("pass@1")), pct(rows[m].get("pass@16")), pct(rows[m].get(k))] for m in have])
    trained = [m for m in rows if m != "base" and rows[m].get("kl_to_base")]
    out += table("Figure 5: KL to the base (last measurement)", ["model", "KL to base", "entropy"],
                 [[m, plain(rows[m]["kl_to_base"]), plain(rows[m].get("entropy"))] for m in trained])
    found_tau = taus(rows, gft) if gft in rows else {}
    out += table("Figure 6: tau (DCR's threshold)", ["tau", "entry", "pass@1", "rectified share (mean over steps)"],
                 [[f"{t:g}", e, pct(rows[e].get("pass@1")), pct(rows[e].get("rectified_share"))]
                  for t, e in found_tau.items()] if len(found_tau) > 1 else [])
    return "\n".join(out).rstrip() + "\n"


def write(folder: Path, summary: list[dict]) -> None:
    """``paper-tables.md``, and the tau curve and ratio bars where the run has them."""
    from gftrepro import plots

    atomic_write_bytes(folder / "paper-tables.md", tables(summary).encode())
    rows = {r["model"]: r for r in summary}
    gft = pick(rows, "gft-online", "gft")
    found_tau = taus(rows, gft) if gft in rows else {}
    if len(found_tau) > 1:
        plots.setting_plot({f"{t:g}": rows[e] for t, e in found_tau.items()}, "tau", folder / "tau.png", line=True)
    found = ratio_entries(rows)
    if len(found) > 1:
        plots.setting_plot({r: rows[e] for r, e in found.items()}, "N_demo:N_sample", folder / "ratio.png", line=False)
