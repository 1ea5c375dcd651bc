"""The column vocabulary, defined once and checked on every write.

Names are shared across stages: a ``prompt_id`` written by sampling is the ``prompt_id`` the
verifier, the group builder and the trainer join on.

- ``prompt_id``   stable id of a problem: first 16 hex chars of sha256 of its question text
- ``question``    the problem text as in the dataset
- ``prompt``      the exact text the sampling model was given (chat template applied)
- ``solution``    the dataset's worked (expert) solution, if any
- ``answer``      the dataset's gold final answer, if a field holds it (else parsed from solution)
- ``sample_idx``  0..n-1 within one prompt and one source
- ``source``      one of ``expert``, ``teacher``, ``self``
- ``completion``  generated text, without the stop token
- ``completion_tokens`` generated token count, stop token included
- ``finish_reason`` ``stop`` (a stop token ended it) or ``length`` (hit the token cap)
- ``model``       the model reference as configured (hub id, path or ``testbed:<name>``)
- ``seed``        the per-sample seed: derived from (stage seed, prompt_id, sample_idx)
- ``reward``      1.0 if the final answer is right, else 0.0 (binary, rule-based)
- ``status``      ``correct``, ``wrong``, ``no_answer``, ``timeout`` or ``error``
- ``extracted``   the final answer found in the text (null if none)
- ``gold``        the gold answer it was compared with
- ``group_id``    index of a response group (K consecutive rows); in single-trajectory sets,
                  every row is its own group
- ``advantage``   the group-normalised advantage A_k of a response (1.0 in single-trajectory sets)
- ``logprobs``    per-token log-probs of the completion tokens under the sampling model
                  (raw distribution: temperature 1, no top-p), only with ``--logprobs``
"""

from __future__ import annotations

import pyarrow as pa

from gftrepro.errors import GftError

SOURCES = ("expert", "teacher", "self")

PROBLEMS = pa.schema([
    ("prompt_id", pa.string()),
    ("question", pa.string()),
    ("solution", pa.string()),
    ("answer", pa.string()),
])

COMPLETIONS = pa.schema([
    ("prompt_id", pa.string()),
    ("sample_idx", pa.int32()),
    ("source", pa.string()),
    ("prompt", pa.string()),
    ("completion", pa.string()),
    ("completion_tokens", pa.int32()),
    ("finish_reason", pa.string()),
    ("model", pa.string()),
    ("seed", pa.int64()),
    ("logprobs", pa.list_(pa.float32())),
])

REWARDS = pa.schema([
    ("prompt_id", pa.string()),
    ("sample_idx", pa.int32()),
    ("source", pa.string()),
    ("reward", pa.float32()),
    ("status", pa.string()),
    ("extracted", pa.string()),
    ("found_by", pa.string()),  # boxed / answer_is / last_number / none
    ("gold", pa.string()),
])

GROUPS = pa.schema([
    ("group_id", pa.int64()),
    ("prompt_id", pa.string()),
    ("question", pa.string()),
    ("prompt", pa.string()),
    ("completion", pa.string()),
    ("source", pa.string()),
    ("sample_idx", pa.int32()),
    ("reward", pa.float32()),
    ("advantage", pa.float32()),
    ("logprobs", pa.list_(pa.float32())),
])


def table(rows: dict[str, list], schema: pa.Schema) -> pa.Table:
    """Build a table with exactly ``schema``'s columns, in order, or raise naming the problem."""
    missing = [n for n in schema.names if n not in rows]
    extra = [n for n in rows if n not in schema.names]
    if missing or extra:
        raise GftError(f"internal schema mismatch: missing {missing}, unexpected {extra}")
    try:
        return pa.Table.from_pydict(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise GftError(f"internal schema mismatch: {e}") from None
