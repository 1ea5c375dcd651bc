"""The paper's evaluation benchmarks: where to find each, and how to read question and gold answer.

Local files (``--benchmark-dir DIR``) are read from ``DIR/<folder>/test.jsonl`` in the layouts of
the public Qwen2.5-Math-style evaluation suites. Without a folder, the copies shipped in
``data/benchmarks/`` are read (every paper benchmark except TabMWP, whose file no public copy
had; sources and licences in data/benchmarks/README.md); then a benchmark with a known hub source
is loaded with ``datasets``; one without is an error that says to pass ``--benchmark-dir``. ``testbed`` is the bundled
held-out split (300 problems; ``testbed-heldout``: 1,000 more), ``testbed-probe-hard`` the bundled
out-of-domain probe the default evaluates (a skill the embedded student learned in pretraining and
the fine-tuning data never shows, the largest of ten numbers, where the base scores about 72%: the
miniature of the paper's forgetting benchmarks); ``testbed-probe`` is its easy form (three or four
numbers, 99.9%). ``paper`` names the GFT paper's 11 benchmarks (its Tables 1-3).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gftrepro.answers import finite_gold, last_boxed
from gftrepro.errors import GftError
from gftrepro.problems import BUNDLED, prompt_id

LETTERS = "ABCDEFGHIJ"


def first(row: dict, *names: str) -> object:
    for name in names:
        if row.get(name) not in (None, ""):
            return row[name]
    raise KeyError(" or ".join(names))


def number_text(value: object) -> str:
    """27.0 -> '27', '1,000' stays; gold numbers in JSON files are often floats."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def strip_dollars(text: str) -> str:
    text = text.strip()
    return text[1:-1].strip() if len(text) > 1 and text.startswith("$") and text.endswith("$") else text


def olympiad_gold(row: dict) -> str:
    value = first(row, "final_answer", "answer")
    if isinstance(value, str) and value.startswith("["):
        value = ast.literal_eval(value)
    return ", ".join(strip_dollars(str(v)) for v in value) if isinstance(value, list) else strip_dollars(str(value))


def mmlu_question(row: dict) -> str:
    choices = row["choices"]
    if isinstance(choices, str):
        choices = ast.literal_eval(choices)
    return row["question"] + "\n" + "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))


def gsm8k_gold(row: dict) -> str:
    return str(row["answer"]).split("####")[-1].strip().replace(",", "")


def minerva_gold(row: dict) -> str:
    boxed = last_boxed(str(row["solution"]))
    if boxed is None:
        raise KeyError("a \\boxed{} answer in 'solution'")
    return boxed


def tabmwp_question(row: dict) -> str:
    table = row.get("table_for_pd") or row.get("table") or ""
    return f"Read the following table and answer the question.\n{table}\n{row['question']}"


@dataclass(frozen=True)
class Benchmark:
    name: str
    folder: str  # DIR/<folder>/test.jsonl
    question: Callable[[dict], str]
    gold: Callable[[dict], str]
    multiple_choice: bool = False
    hub: tuple[str, str | None, str] | None = None  # (dataset id, config, split) for users with network access
    bundled: str | None = None  # a split of the bundled testbed (data/testbed/<split>.jsonl)


def field(*names: str) -> Callable[[dict], str]:
    return lambda row: str(first(row, *names))


REGISTRY: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("testbed", "testbed", field("problem"), field("answer"), bundled="test"),
    Benchmark("testbed-probe", "testbed", field("problem"), field("answer"), bundled="probe"),
    Benchmark("testbed-probe-hard", "testbed", field("problem"), field("answer"), bundled="probe-hard"),
    Benchmark("testbed-heldout", "testbed", field("problem"), field("answer"), bundled="heldout"),
    Benchmark("math500", "math_oai", field("problem"), lambda r: strip_dollars(str(r["answer"])),
              hub=("HuggingFaceH4/MATH-500", None, "test")),
    Benchmark("minerva_math", "minerva_math", field("problem"), minerva_gold),
    Benchmark("olympiadbench", "olympiadbench", field("question"), olympiad_gold,
              hub=("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train")),
    Benchmark("aime24", "aime24", field("problem", "question"), lambda r: number_text(r["answer"]),
              hub=("HuggingFaceH4/aime_2024", None, "train")),
    Benchmark("aime25", "aime25", field("question", "problem"), lambda r: number_text(r["answer"]),
              hub=("MathArena/aime_2025", None, "train")),
    Benchmark("amc23", "amc23", field("problem", "question"), lambda r: number_text(r["answer"])),
    Benchmark("college_math", "college_math", field("question"), lambda r: strip_dollars(str(r["answer"]))),
    Benchmark("gaokao2023en", "gaokao2023en", field("question"), lambda r: strip_dollars(str(r["answer"]))),
    Benchmark("tabmwp", "tabmwp", tabmwp_question, lambda r: number_text(r["answer"])),
    Benchmark("sat_math", "sat_math", lambda r: f"{r['question']}\n{r['options']}", lambda r: str(r["Answer"]).strip(),
              multiple_choice=True),
    Benchmark("mmlu_stem", "mmlu_stem", mmlu_question, lambda r: LETTERS[int(r["answer"])], multiple_choice=True),
    Benchmark("mawps", "mawps", field("input"), lambda r: number_text(r["target"])),
    Benchmark("svamp", "svamp", lambda r: f"{str(r['Body']).strip()} {r['Question']}".strip(),
              lambda r: number_text(r["Answer"])),
    Benchmark("gsm8k", "gsm8k", field("question"), gsm8k_gold, hub=("openai/gsm8k", "main", "test")),
]}
PAPER = ["amc23", "college_math", "gaokao2023en", "math500", "minerva_math", "tabmwp", "olympiadbench", "mmlu_stem",
         "sat_math", "mawps", "svamp"]


def resolve_names(names: list[str]) -> list[Benchmark]:
    out = []
    for name in names:
        for n in PAPER if name == "paper" else [name]:
            if n not in REGISTRY:
                raise GftError(f"unknown benchmark '{n}' (known: {', '.join(REGISTRY)}, or 'paper')")
            if REGISTRY[n] not in out:
                out.append(REGISTRY[n])
    return out


SHIPPED = BUNDLED["testbed"].parent / "benchmarks"  # data/benchmarks: the paper's test files (README there)


def read_rows(bench: Benchmark, benchmark_dir: str) -> tuple[list[dict], str]:
    """Raw rows and where they came from: the bundled testbed split, ``benchmark_dir``, the copy shipped
    in data/benchmarks, or the hub (in that order)."""
    if bench.bundled is not None:
        path = BUNDLED["testbed"] / f"{bench.bundled}.jsonl"
    elif benchmark_dir:
        path = Path(benchmark_dir) / bench.folder / "test.jsonl"
    elif (SHIPPED / bench.folder / "test.jsonl").is_file():
        path = SHIPPED / bench.folder / "test.jsonl"
    elif bench.hub is not None:
        return load_hub(bench), f"hub:{bench.hub[0]}"
    else:
        raise GftError(f"benchmark '{bench.name}' has no copy in {SHIPPED} and no hub source known to gft: pass "
                       f"--benchmark-dir with {bench.folder}/test.jsonl in it")
    if not path.is_file():
        raise GftError(f"benchmark '{bench.name}': file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise GftError(f"{path} line {i + 1} is not valid JSON: {e.msg}") from None
    return rows, str(path)


def load_hub(bench: Benchmark) -> list[dict]:
    import datasets

    dataset_id, config, split = bench.hub  # type: ignore[misc]
    try:
        return list(datasets.load_dataset(dataset_id, config, split=split))
    except Exception as e:
        raise GftError(f"benchmark '{bench.name}': could not load {dataset_id} from the hub ({type(e).__name__}); "
                       "pass --benchmark-dir to read local copies") from None


def load_benchmark(bench: Benchmark, benchmark_dir: str, limit: int = 0) -> tuple[list[dict], str]:
    """[{prompt_id, question, gold}] in file order (first ``limit`` if > 0), and the source.

    Every row is kept, repeated questions included, so counts match the official ones, except rows
    whose gold answer is empty or a NaN/infinite number (they cannot be scored): those are skipped,
    and the source says how many (two of Gaokao 2023 (en)'s 385 rows, for instance)."""
    rows, source = read_rows(bench, benchmark_dir)
    problems, seen, no_gold = [], set(), 0
    for i, row in enumerate(rows):
        try:
            question, gold = bench.question(row), bench.gold(row)
        except (KeyError, ValueError, SyntaxError, IndexError) as e:
            raise GftError(f"benchmark '{bench.name}' ({source}) row {i}: missing or bad field {e}") from None
        if not gold.strip() or finite_gold(gold.strip()) is None:  # a NaN or infinite gold cannot be scored
            no_gold += 1
            continue
        pid = prompt_id(question)
        if pid in seen:  # a repeated question stays (official counts keep it) under its own id
            pid = prompt_id(f"{question}#row{i}")
        seen.add(pid)
        problems.append({"prompt_id": pid, "question": question, "gold": gold})
        if limit and len(problems) >= limit:
            break
    if not problems:
        raise GftError(f"benchmark '{bench.name}' ({source}) has no problems")
    return problems, source + (f" ({no_gold} rows without a gold answer skipped)" if no_gold else "")
