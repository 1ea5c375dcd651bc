"""Problems: load prompts and gold data from the bundled set, a local file, or the hub.

``dataset`` is one of:

- ``testbed``: the bundled arithmetic problems in ``data/testbed/<split>.jsonl``;
- a local ``.jsonl`` / ``.json`` / ``.parquet`` file, or a folder of them;
- a Hugging Face dataset id (``AI-MO/NuminaMath-CoT``), loaded with ``datasets.load_dataset``.

Field names are configurable (NuminaMath-CoT: ``problem`` / ``solution``, the answer inside the
solution's last ``\\boxed{}``; then ``answer_field`` is empty). Every problem gets
``prompt_id`` = sha256(question)[:16], so ids survive reordering and subsetting; a question that
appears twice is kept once and counted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from gftrepro import schema
from gftrepro.errors import GftError
from gftrepro.store import file_sha256

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED = {"testbed": REPO_ROOT / "data" / "testbed"}
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def prompt_id(question: str) -> str:
    return hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Problems:
    table: pa.Table  # schema.PROBLEMS
    fingerprint: dict[str, str]
    duplicates: int

    def __len__(self) -> int:
        return self.table.num_rows


def looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~")) or Path(ref).suffix in FILE_FORMATS


def resolve_files(dataset: str, split: str) -> tuple[list[Path], str] | None:
    """Local data files for ``dataset`` (bundled or a path), or None for a hub id."""
    if dataset in BUNDLED:
        path = BUNDLED[dataset] / f"{split}.jsonl"
        if not path.is_file():
            known = sorted(p.stem for p in BUNDLED[dataset].glob("*.jsonl"))
            raise GftError(f"bundled dataset '{dataset}' has no split '{split}' (splits: {', '.join(known)})")
        return [path], "json"
    path = Path(dataset).expanduser()
    if path.is_dir():
        data = sorted(p for p in path.iterdir() if p.suffix in FILE_FORMATS)
        files = [p for p in data if p.stem.startswith(split)] or (data if len(data) == 1 else [])
        if not files:
            raise GftError(f"dataset folder {path} has no .jsonl/.json/.parquet file for split '{split}'")
        return files, FILE_FORMATS[files[0].suffix]
    if path.is_file():
        if path.suffix not in FILE_FORMATS:
            raise GftError(f"dataset file {path} must be .jsonl, .json or .parquet")
        return [path], FILE_FORMATS[path.suffix]
    if looks_like_path(dataset):
        raise GftError(f"dataset path does not exist: {dataset}")
    return None


def load_raw(dataset: str, split: str):
    """A ``datasets.Dataset`` and its fingerprint (file content hashes, or hub id + fingerprint)."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    local = resolve_files(dataset, split)
    if local is not None and all(f.stat().st_size == 0 for f in local[0]):
        raise GftError(f"dataset '{dataset}' (split '{split}') is empty: {', '.join(str(f) for f in local[0])}")
    try:
        if local is not None:
            files, fmt = local
            ds = datasets.load_dataset(fmt, data_files=[str(f) for f in files], split="train")
            fp = {"dataset": dataset, "split": split,
                  "files": ",".join(f"{f.name}:{file_sha256(f)[:16]}" for f in files)}
        else:
            ds = datasets.load_dataset(dataset, split=split)
            fp = {"dataset": dataset, "split": split, "fingerprint": ds._fingerprint}
    except GftError:
        raise
    except Exception as e:  # hub unreachable, bad split name, malformed file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GftError(f"could not load dataset '{dataset}' (split '{split}'): {first}") from None
    return ds, fp


def text_column(ds, field: str, label: str, dataset: str, required: bool) -> list[str | None]:
    if not field:
        if required:
            raise GftError(f"the {label} field name must not be empty")
        return [None] * len(ds)
    if field not in ds.column_names:
        raise GftError(f"dataset '{dataset}' has no {label} field '{field}'; columns: {', '.join(ds.column_names)}")
    values = ds[field]
    out = []
    for i, v in enumerate(values):
        if v is None and not required:
            out.append(None)
            continue
        if isinstance(v, int | float) and not isinstance(v, bool) and not required:
            v = str(v)  # numeric gold answers (GSM8K-style files) are fine as text
        if not isinstance(v, str):
            raise GftError(f"dataset '{dataset}' row {i}: {label} field '{field}' is not text ({type(v).__name__})")
        if required and not v.strip():
            raise GftError(f"dataset '{dataset}' row {i}: {label} field '{field}' is empty")
        out.append(v)
    return out


def load_problems(dataset: str, split: str, question_field: str, solution_field: str, answer_field: str,
                  limit: int = 0) -> Problems:
    """Load, validate and de-duplicate; ``limit`` > 0 keeps the first ``limit`` unique problems."""
    ds, fp = load_raw(dataset, split)
    if len(ds) == 0:
        raise GftError(f"dataset '{dataset}' (split '{split}') has no rows")
    questions = text_column(ds, question_field, "question", dataset, required=True)
    solutions = text_column(ds, solution_field, "solution", dataset, required=False)
    answers = text_column(ds, answer_field, "answer", dataset, required=False)
    seen: set[str] = set()
    cols: dict[str, list] = {n: [] for n in schema.PROBLEMS.names}
    duplicates = 0
    for q, s, a in zip(questions, solutions, answers, strict=True):
        pid = prompt_id(q)
        if pid in seen:
            duplicates += 1
            continue
        seen.add(pid)
        for name, value in zip(schema.PROBLEMS.names, (pid, q, s, a), strict=True):
            cols[name].append(value)
        if limit and len(seen) >= limit:
            break
    fp = {**fp, "limit": str(limit)}
    return Problems(schema.table(cols, schema.PROBLEMS), fp, duplicates)
