"""``gft report``: each qualitative claim of the GFT paper, our numbers with a 95% interval, and a verdict.

    gft report                       # the default run (outputs/default), written by `gft run`
    gft report --run outputs/paper   # any run folder with summary/summary.json

Reads ``<run>/summary/summary.json`` (every seed's value per model, and where each seed's eval
samples lie) and the eval sample shards it names; writes ``<run>/summary/claims.md`` and
``forest.png`` (each comparison's difference with its interval). The paper's numbers
(``gftrepro/reference/paper_results.json``, transcribed from the GFT and DFT papers with their
table numbers) stand next to ours where the paper reports them as numbers.

Each claim is one or more comparisons ``A relation B`` on one statistic. The interval and the
verdict rule are ``gftrepro.stats``: a paired bootstrap over seeds and problems for accuracies
(pass@k on the main benchmark, pass@1 on the forgetting probes), Student's t over seeds for the
numbers a training run gives once (KL to the base, entropy); reproduced / contradicted /
inconclusive by where the interval lies, with a 1-point non-inferiority margin for "at or above"
and "keeps". With one seed the interval covers the problems only (training variance is not in
it), and KL / entropy with fewer than 3 seeds are inconclusive. A miniature's verdict says
nothing about the paper at scale.

Settings are entries of one run (``gft-online@tau=0.1``, ``gft-online@ratio=2:6``), so Table 5 and
Figure 6 are judged from one run: the ratio claim compares ``@ratio=2:6`` with ``8:0`` and ``0:8``;
the tau claim compares the mean of the middle taus with each end (3 or more taus of GFT, the
plain entry counting at the run's tau) and names the best tau with its pass@1 interval.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console

from gftrepro import stats
from gftrepro.errors import GftError
from gftrepro.evidence import Check, Evidence, fmt_interval, judge
from gftrepro.stats import CONTRADICTED, INCONCLUSIVE, MARGIN, NOT_MEASURED, REPRODUCED, Interval  # noqa: F401
from gftrepro.store import atomic_write_bytes

PAPER_RESULTS = Path(__file__).resolve().parent / "reference" / "paper_results.json"


def pick(rows: dict, *names: str) -> str:
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


Claim = tuple[str, str, str, Callable[[dict[str, dict]], list[Check]], str]  # id, claim, where, checks, needs


def setting_entries(rows: dict, base: str, key: str) -> dict[str, str]:
    """{value: entry} of the one-link entries ``base@key=value`` of the run (that one setting only)."""
    out = {}
    for name in rows:
        head, *settings = name.split("@")
        if head == base and len(settings) == 1:
            k, _, value = settings[0].partition("=")
            if k.strip().replace("-", "_") == key:
                out[value.strip()] = name
    return out


def taus(rows: dict, base: str) -> dict[float, str]:
    """{tau: entry} of GFT's tau entries, the plain entry at the run's tau (an explicit entry wins)."""
    out = {float(rows[base]["tau"]): base} if "tau" in rows.get(base, {}) else {}
    for value, name in setting_entries(rows, base, "tau").items():
        try:
            out[float(value)] = name
        except ValueError:
            continue
    return dict(sorted(out.items()))


def tau_checks(rows: dict, base: str) -> list[Check]:
    """The mean of the middle taus above each end (3 or more taus)."""
    found = taus(rows, base)
    if len(found) < 3:
        return []
    names = list(found.values())
    return [Check.of(tuple(names[1:-1]), end, "pass@1", "above") for end in (names[0], names[-1])]


def ratio_checks(rows: dict, base: str) -> list[Check]:
    found = setting_entries(rows, base, "ratio")
    if not {"2:6", "8:0", "0:8"} <= set(found):
        return []
    return [Check.of(found["2:6"], found[other], "pass@1", "above") for other in ("8:0", "0:8")]


def claims() -> list[Claim]:
    def gft(r):
        return pick(r, "gft-online", "gft")

    def ablation(r, name):
        return f"{name}-online" if gft(r) == "gft-online" else name

    def k_max(r):
        ks = [int(k.split("@")[1]) for k in next(iter(r.values())) if k.startswith("pass@")]
        return f"pass@{max(ks)}" if ks else "pass@1"

    c = Check.of
    return [
        ("pass1", "GFT above SFT on held-out pass@1", "Table 1",
         lambda r: [c(gft(r), "sft", "pass@1", "above")], ""),
        ("baselines", "GFT above DFT, ASFT and PSFT on pass@1", "Table 1",
         lambda r: [c(gft(r), m, "pass@1", "above") for m in ("dft", "asft", "psft")], ""),
        ("no-mix", "GFT (no mix) within reach of GFT: pass@1 at or above it", "Table 1",
         lambda r: [c(ablation(r, "gft-no-mix"), gft(r), "pass@1", "not below")], ""),
        ("passk", "GFT's pass@k at the largest k at or above GRPO's", "Table 4",
         lambda r: [c(gft(r), "grpo", k_max(r), "not below")], ""),
        ("forget-sft", "SFT forgets: probe pass@1 below the base", "Table 3",
         lambda r: [c("base", "sft", "probe", "above")], ""),
        ("forget-gft", "GFT keeps the probe (not below the base)", "Table 3",
         lambda r: [c(gft(r), "base", "probe", "not below")], ""),
        ("forget-grpo", "GRPO keeps the probe (not below the base)", "Table 3",
         lambda r: [c("grpo", "base", "probe", "not below")], ""),
        ("kl", "KL to the base: SFT above GFT and above GRPO", "Figure 5",
         lambda r: [c("sft", gft(r), "kl_to_base", "above"), c("sft", "grpo", "kl_to_base", "above")], ""),
        ("entropy", "Entropy: GFT above SFT", "Figures 1, 3",
         lambda r: [c(gft(r), "sft", "entropy", "above")], ""),
        ("no-dcr", "Removing DCR lowers pass@1", "Table 2",
         lambda r: [c(gft(r), ablation(r, "gft-no-dcr"), "pass@1", "above")], ""),
        ("no-gal", "Removing GAL lowers pass@1", "Table 2",
         lambda r: [c(gft(r), ablation(r, "gft-no-gal"), "pass@1", "above")], ""),
        ("ratio", "Mixed groups (2:6) beat 8:0 and 0:8 groups", "Table 5",
         lambda r: ratio_checks(r, gft(r)), "needs GFT entries @ratio=2:6, @ratio=8:0 and @ratio=0:8 in the run "
         "(e.g. gft-online@ratio=2:6)"),
        ("tau", "Accuracy at the middle taus above both ends (inverted U, peak near 0.7)", "Figure 6",
         lambda r: tau_checks(r, gft(r)), "needs 3 or more taus of GFT in the run (e.g. gft-online@tau=0.1, "
         "gft-online@tau=0.9 beside gft-online)"),
        ("chain", "SFT->GFT->GRPO at or above SFT->GRPO (pass@16)", "Figure 4",
         lambda r: [c(pick(r, "sft:gft-online:grpo", "sft:gft:grpo"), "sft:grpo", "pass@16", "not below")], ""),
        ("pear", "PEAR then GRPO at or above SFT then GRPO (pass@1)", "PEAR paper (arXiv 2602.01058)",
         lambda r: [c("pear:grpo", "sft:grpo", "pass@1", "not below")], ""),
    ]


def best_tau(evidence: Evidence, base: str) -> str:
    """The tau with the highest mean pass@1 and its interval (not corrected for being the best of several)."""
    found = taus(evidence.rows, base)
    scores = {t: float(np.mean(list(evidence.per_seed(m, "pass@1").values()))) for t, m in found.items()}
    tau = max(scores, key=scores.get)
    iv = evidence.interval(Check.of(found[tau], (), "pass@1", "above"))
    shown = fmt_interval("pass@1", iv).lstrip("+") if isinstance(iv, Interval) else f"{100 * scores[tau]:.1f}"
    return f"best tau {tau:g}: pass@1 {shown}"


def report_rows(summary: list[dict], run_dir: Path | None = None) -> list[dict]:
    """One row per claim: the paper's place and number, our comparisons with intervals, the verdict and
    what it rests on (``run_dir``: where the eval samples lie; None: seeds only)."""
    evidence = Evidence(summary, run_dir)
    texts = paper_texts(paper_numbers())
    out = []
    for cid, text, where, checks_of, needs in claims():
        result = judge(evidence, checks_of(evidence.rows), needs)
        if cid == "tau" and result["verdict"] != NOT_MEASURED:
            result["ours"] += "; " + best_tau(evidence, pick(evidence.rows, "gft-online", "gft"))
        out.append({"id": cid, "claim": text, "paper": where + (f" ({texts[cid]})" if cid in texts else ""),
                    **result})
    return out


RULE = ("Rule (gftrepro/stats.py): 95% intervals from a paired bootstrap over seeds and problems (accuracies) "
        "or Student's t over seeds (KL, entropy); 'above' is reproduced when the interval of A - B lies above 0 "
        f"and contradicted when below; 'at or above' / 'keeps' allow a {100 * MARGIN:.0f}-point margin "
        "(reproduced above -margin, contradicted wholly below it); otherwise inconclusive. With one seed the "
        f"interval leaves out training variance; KL and entropy need {stats.MIN_SEEDS} seeds. A miniature's "
        "verdict says nothing about the paper at scale.")


def markdown(rows: list[dict]) -> str:
    lines = ["| claim | paper | ours: difference [95% interval] | seeds x problems | verdict |",
             "|---|---|---|---|---|"]
    for r in rows:
        rests = f"{r['seeds']} x {r['problems']}" if r["problems"] else (f"{r['seeds']} seeds" if r["seeds"] else "-")
        notes = "".join(f" ({n})" for n in r.get("notes", []))
        lines.append(f"| {r['claim']} | {r['paper']} | {r['ours']}{notes} | {rests} | **{r['verdict']}** |")
    return "\n".join(lines) + "\n\n" + RULE + " The forest plot: forest.png.\n"


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


COLOUR = {REPRODUCED: "green", CONTRADICTED: "red", INCONCLUSIVE: "yellow", NOT_MEASURED: "dim"}


def report(run_dir: Path, console: Console, brief: bool = False) -> list[dict]:
    """Write claims.md and forest.png; print every claim with our numbers and the paper's (``brief``: one
    line each, as at the end of ``gft run``)."""
    from gftrepro.plots import forest_plot

    summary = load_summary(run_dir)
    rows = report_rows(summary, run_dir)
    path = run_dir / "summary" / "claims.md"
    try:
        atomic_write_bytes(path, (markdown(rows) + side_by_side(summary, paper_numbers())).encode())
        forest_plot(rows, run_dir / "summary" / "forest.png")
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
        console.print(f"  [{COLOUR[r['verdict']]}]{r['verdict']:<12}[/] {r['claim']} ({r['paper'].split(' (')[0]})",
                      highlight=False)
        if not brief:
            rests = f" ({r['seeds']} seed(s) x {r['problems']} problems)" if r["problems"] else \
                (f" ({r['seeds']} seed(s))" if r["seeds"] else "")
            console.print(f"      ours:  {r['ours']}{rests}", highlight=False, style="dim")
            for note in r.get("notes", []):
                console.print(f"      note:  {note}", highlight=False, style="dim")
            if "(" in r["paper"]:
                console.print(f"      paper: {r['paper']}", highlight=False, style="dim")
    if unmeasured:  # one line at the end of gft run: the claims whose models this run did not train
        console.print(f"  [{COLOUR[NOT_MEASURED]}]{NOT_MEASURED:<12}[/] {len(unmeasured)} claims need models or "
                      "settings this run does not have", highlight=False)
    if brief:
        console.print(f"  intervals, the rule and the paper's numbers: gft report --run {run_dir}", highlight=False)
    else:
        console.print(RULE, highlight=False, style="dim")
    return rows
