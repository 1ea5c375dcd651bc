"""``gft report``: each qualitative claim of the GFT paper, our numbers, and a verdict decided by rule.

    gft report                       # the default run (outputs/default), written by `gft run`
    gft report --run outputs/paper   # any run folder with summary/summary.json

Reads ``<run>/summary/summary.json`` (mean, spread and every seed's value per model) and writes
``<run>/summary/claims.md``. The paper's numbers (``gftrepro/reference/paper_results.json``,
transcribed from the GFT and DFT papers with their table numbers) stand next to ours where the
paper reports them as numbers; the others cite the figure or table.

The verdict rule (``compare``), over seeds, with each model's interval mean ± std:

- ``A above B``: reproduced when A's interval lies wholly above B's (mean_A - std_A > mean_B + std_B);
- ``A at or above B`` / ``A keeps B``: reproduced unless A's interval lies wholly below B's;
- not measured: a model the claim needs was not in the run (the row says which).

With one seed the spread is unknown and taken as 0, so a verdict rests on one number; the
``seeds`` column says so. The rule is deliberately blunt: non-overlapping mean ± std intervals over
3 seeds is not a significance test, and a miniature's verdict says nothing about the paper at scale.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from gftrepro.errors import GftError
from gftrepro.store import atomic_write_bytes

PAPER_RESULTS = Path(__file__).resolve().parent / "reference" / "paper_results.json"
REPRODUCED, NOT_REPRODUCED, NOT_MEASURED = "reproduced", "not reproduced", "not measured"

Stat = tuple[float, float]  # mean, std (0 for one seed)


@dataclass(frozen=True)
class Check:
    """One comparison: ``a`` relative to ``b`` on ``metric``."""

    a: str
    b: str
    metric: str
    relation: str  # "above" or "not below"


def stat(rows: dict[str, dict], model: str, metric: str) -> Stat | None:
    value = rows.get(model, {}).get(metric)
    if value is None:
        return None
    mean, spread = value
    return float(mean), float(spread or 0.0)


def holds(relation: str, a: Stat, b: Stat) -> bool:
    """The verdict rule on two (mean, std) intervals."""
    if relation == "above":
        return a[0] - a[1] > b[0] + b[1]
    if relation == "not below":
        return a[0] + a[1] >= b[0] - b[1]
    raise ValueError(f"unknown relation {relation!r}")


def fmt(metric: str, s: Stat) -> str:
    if metric in ("entropy", "kl_to_base"):
        return f"{s[0]:.4f} ± {s[1]:.4f}"
    return f"{100 * s[0]:.1f} ± {100 * s[1]:.1f}"


ONE_SETTING_PER_RUN = ("needs a run per group composition / tau (stages/paper/<model>/ratio-*.yaml, "
                       "gft-tau0.1.yaml); gft report reads one run and does not combine runs yet")


def judge(rows: dict[str, dict], checks: list[Check]) -> tuple[str, str]:
    """(verdict, our numbers) for a claim made of ``checks``, all of which must hold."""
    if not checks:
        return NOT_MEASURED, ONE_SETTING_PER_RUN
    missing = sorted({m for c in checks for m in (c.a, c.b) if stat(rows, m, c.metric) is None})
    if missing:
        return NOT_MEASURED, "needs " + ", ".join(missing) + " in the run"
    parts, ok = [], True
    for c in checks:
        a, b = stat(rows, c.a, c.metric), stat(rows, c.b, c.metric)
        ok &= holds(c.relation, a, b)  # type: ignore[arg-type]
        parts.append(f"{c.metric}: {c.a} {fmt(c.metric, a)} vs {c.b} {fmt(c.metric, b)}")  # type: ignore[arg-type]
    return (REPRODUCED if ok else NOT_REPRODUCED), "; ".join(dict.fromkeys(parts))


def pick(rows: dict[str, dict], *names: str) -> str:
    """The first of ``names`` the run has (the paper's GFT samples on-policy: prefer the online form)."""
    return next((n for n in names if n in rows), names[-1])


def paper_numbers() -> dict:
    return json.loads(PAPER_RESULTS.read_text())


def paper_texts(paper: dict) -> dict[str, str]:
    """The paper's numbers behind each claim, where it gives them as numbers."""
    t3 = paper["gft_table3_forgetting"]["rows"]
    t4 = paper["gft_table4_passk"]["rows"]["pass@128"]
    t5 = paper["gft_table5_group_ratio"]["rows"]

    def mean3(row: dict) -> float:
        return sum(row.values()) / len(row)

    return {
        "passk": f"pass@128 avg: GFT {t4['gft']['avg']}, GRPO {t4['grpo']['avg']}",
        "forget-sft": f"MAWPS/SVAMP/MMLU-STEM mean: base {mean3(t3['base']):.1f}, SFT {mean3(t3['sft']):.1f}",
        "forget-gft": f"base {mean3(t3['base']):.1f}, GFT {mean3(t3['gft']):.1f}",
        "forget-grpo": f"base {mean3(t3['base']):.1f}, GRPO {mean3(t3['grpo']):.1f}",
        "ratio": "avg@16 avg: " + ", ".join(f"{k} {v['avg']}" for k, v in t5.items()),
    }


Claim = tuple[str, str, str, Callable[[dict[str, dict]], list[Check]]]  # id, claim, where, checks


def claims() -> list[Claim]:
    def gft(r):
        return pick(r, "gft-online", "gft")

    def ablation(r, name):
        return f"{name}-online" if gft(r) == "gft-online" else name

    def k_max(r):
        ks = [int(k.split("@")[1]) for k in next(iter(r.values())) if k.startswith("pass@")]
        return f"pass@{max(ks)}" if ks else "pass@1"

    return [
        ("pass1", "GFT above SFT on held-out pass@1", "Table 1",
         lambda r: [Check(gft(r), "sft", "pass@1", "above")]),
        ("baselines", "GFT above DFT, ASFT and PSFT on pass@1", "Table 1",
         lambda r: [Check(gft(r), m, "pass@1", "above") for m in ("dft", "asft", "psft")]),
        ("no-mix", "GFT (no mix) within reach of GFT: pass@1 at or above it", "Table 1",
         lambda r: [Check(ablation(r, "gft-no-mix"), gft(r), "pass@1", "not below")]),
        ("passk", "GFT's pass@k at the largest k at or above GRPO's", "Table 4",
         lambda r: [Check(gft(r), "grpo", k_max(r), "not below")]),
        ("forget-sft", "SFT forgets: probe pass@1 below the base", "Table 3",
         lambda r: [Check("base", "sft", "probe", "above")]),
        ("forget-gft", "GFT keeps the probe (not below the base)", "Table 3",
         lambda r: [Check(gft(r), "base", "probe", "not below")]),
        ("forget-grpo", "GRPO keeps the probe (not below the base)", "Table 3",
         lambda r: [Check("grpo", "base", "probe", "not below")]),
        ("kl", "KL to the base: SFT above GFT and above GRPO", "Figure 5",
         lambda r: [Check("sft", gft(r), "kl_to_base", "above"), Check("sft", "grpo", "kl_to_base", "above")]),
        ("entropy", "Entropy: GFT above SFT", "Figures 1, 3",
         lambda r: [Check(gft(r), "sft", "entropy", "above")]),
        ("no-dcr", "Removing DCR lowers pass@1", "Table 2",
         lambda r: [Check(gft(r), ablation(r, "gft-no-dcr"), "pass@1", "above")]),
        ("no-gal", "Removing GAL lowers pass@1", "Table 2",
         lambda r: [Check(gft(r), ablation(r, "gft-no-gal"), "pass@1", "above")]),
        ("ratio", "Mixed groups (2:6) beat 8:0 and 0:8 groups", "Table 5", lambda r: []),
        ("tau", "Accuracy peaks near tau 0.7 (inverted U)", "Figure 6", lambda r: []),
        ("chain", "SFT->GFT->GRPO at or above SFT->GRPO (pass@16)", "Figure 4",
         lambda r: [Check(pick(r, "sft:gft-online:grpo", "sft:gft:grpo"), "sft:grpo", "pass@16", "not below")]),
        ("pear", "PEAR then GRPO at or above SFT then GRPO (pass@1)", "PEAR paper (arXiv 2602.01058)",
         lambda r: [Check("pear:grpo", "sft:grpo", "pass@1", "not below")]),
    ]


def report_rows(summary: list[dict]) -> list[dict]:
    rows = {r["model"]: r for r in summary}
    seeds = {r["model"]: r["seeds"] for r in summary}
    texts = paper_texts(paper_numbers())
    out = []
    for cid, text, where, checks_of in claims():
        checks = checks_of(rows)
        verdict, ours = judge(rows, checks)
        used = sorted({m for c in checks for m in (c.a, c.b) if m in seeds})
        out.append({"id": cid, "claim": text, "paper": where + (f" ({texts[cid]})" if cid in texts else ""),
                    "ours": ours, "seeds": min((seeds[m] for m in used), default=0), "verdict": verdict})
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| claim | paper | ours (mean ± std over seeds) | seeds | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {r['claim']} | {r['paper']} | {r['ours']} | {r['seeds'] or '-'} | **{r['verdict']}** |"
              for r in rows]
    return "\n".join(lines) + "\n\nVerdict rule: intervals mean ± std over seeds; 'above' needs them apart, " \
        "'at or above' / 'keeps' fails only when wholly below (gftrepro/report.py).\n"


PAPER_TABLES = (  # (paper table key, metric in our per_seed keys, the paper's row -> our model)
    ("gft_table3_forgetting", "pass@1", {"base": "base", "sft": "sft", "grpo": "grpo", "gft": "gft"}),
    ("gft_table4_passk", "pass@128", {"base": "base", "grpo": "grpo", "gft": "gft"}),
)


def side_by_side(summary: list[dict], paper: dict) -> str:
    """The paper's per-benchmark tables next to ours, for the benchmarks this run evaluated (a GPU run with
    the paper's benchmarks); empty on the miniature. Ours: mean over seeds; 'GFT' is gft-online if present."""
    rows = {r["model"]: r for r in summary}
    gft = pick(rows, "gft-online", "gft")
    out = []
    for key, metric, models in PAPER_TABLES:
        table = paper[key]["rows"]
        table = table.get(metric, table)  # Table 4 is keyed by pass@k first
        benches = [b for b in next(iter(table.values())) if b != "avg"
                   and any(f"{b}/{metric}" in r.get("per_seed", {}) for r in summary)]
        if not benches:
            continue
        out += [f"\n{paper[key]['source']}: {metric}, paper / ours\n",
                "| model | " + " | ".join(benches) + " |", "|---|" + "---|" * len(benches)]
        for paper_row, ours in models.items():
            ours = gft if ours == "gft" else ours
            per = rows.get(ours, {}).get("per_seed", {})
            cells = []
            for b in benches:
                vals = per.get(f"{b}/{metric}")
                mine = f"{100 * sum(vals) / len(vals):.1f}" if vals else "-"
                cells.append(f"{table.get(paper_row, {}).get(b, '-')} / {mine}")
            out.append(f"| {paper_row} ({ours}) | " + " | ".join(cells) + " |")
    return "\n".join(out) + ("\n" if out else "")


def load_summary(run_dir: Path) -> list[dict]:
    path = run_dir / "summary" / "summary.json"
    if not path.is_file():
        raise GftError(f"no run summary at {path}: run `gft run --run {run_dir}` first")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise GftError(f"{path} is not valid JSON ({e.msg}): rerun `gft run` to rewrite it") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) and "model" in r and "seeds" in r for r in data):
        raise GftError(f"{path} is not a gft run summary (a list of rows with 'model' and 'seeds')")
    return data


COLOUR = {REPRODUCED: "green", NOT_REPRODUCED: "red", NOT_MEASURED: "dim"}


def report(run_dir: Path, console: Console, brief: bool = False) -> list[dict]:
    """Write claims.md; print every claim with our numbers and the paper's (``brief``: one line each, as
    at the end of ``gft run``)."""
    summary = load_summary(run_dir)
    rows = report_rows(summary)
    path = run_dir / "summary" / "claims.md"
    try:
        atomic_write_bytes(path, (markdown(rows) + side_by_side(summary, paper_numbers())).encode())
    except OSError as e:  # a read-only or full run folder: the claims are still printed
        console.print(f"[yellow]note:[/] could not write {path} ({e.strerror or e}); the claims below are not "
                      "saved", highlight=False)
        path = None
    console.print("[bold]the paper's claims on this run[/]" + ("" if brief or path is None else f" ({path})"),
                  highlight=False)
    unmeasured = [r for r in rows if r["verdict"] == NOT_MEASURED] if brief else []
    for r in rows:
        if r in unmeasured:
            continue
        console.print(f"  [{COLOUR[r['verdict']]}]{r['verdict']:<14}[/] {r['claim']} ({r['paper'].split(' (')[0]})",
                      highlight=False)
        if not brief:
            console.print(f"      ours:  {r['ours']}" + (f" ({r['seeds']} seed(s))" if r["seeds"] else ""),
                          highlight=False, style="dim")
            if "(" in r["paper"]:
                console.print(f"      paper: {r['paper']}", highlight=False, style="dim")
    if unmeasured:  # one line at the end of gft run: the claims whose models this run did not train
        console.print(f"  [{COLOUR[NOT_MEASURED]}]{NOT_MEASURED:<14}[/] {len(unmeasured)} claims need models or "
                      "settings this run does not have", highlight=False)
    if brief:
        console.print(f"  in full, with the paper's numbers: gft report --run {run_dir}", highlight=False)
    return rows
