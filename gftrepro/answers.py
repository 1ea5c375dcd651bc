"""The verifier: ``score(completion, gold) -> Verdict``, rule-based and binary, as the paper's reward.

Two steps:

1. **Extraction** (ours, linear-time, safe to run anywhere): the last ``\\boxed{...}`` or
   ``\\fbox{...}`` (nested braces, and ``\\boxed 5``), then the configured fall-backs in order:
   ``answer_is`` ("The answer is ...", "final answer: ..."), ``last_number``. A gold answer is
   either bare (``"1/2"``) or a full solution whose last ``\\boxed{}`` holds it (NuminaMath-CoT).
2. **Equivalence**: a cheap normalised string match first; otherwise Hugging Face's
   ``math-verify`` (``parse`` + ``verify``, gold first) on the two extracted strings, which
   knows ``\\frac{1}{2} = 0.5``, ``x = 3`` vs ``3``, units, percent, degrees, tuples, intervals,
   ``3\\sqrt{2} = \\sqrt{18}``, ``\\text{(B)}`` vs ``B``, ``1,000``. Its own ``signal.alarm``
   timeouts are switched off: the caller runs this in killable worker processes with a wall-clock
   deadline (``gftrepro.pool``), which also covers big-integer arithmetic that alarms cannot stop.

Statuses: ``correct``, ``wrong``, ``no_answer`` (nothing extracted), ``timeout`` (set by the pool),
``error`` (math-verify raised, or no gold answer).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

STATUSES = ("correct", "wrong", "no_answer", "timeout", "error")
FALLBACKS = ("answer_is", "last_number")

ANSWER_IS = re.compile(r"(?:final answer|the answer|answer)\s*(?:is|:)\s*:?\s*([^\n]{1,200})", re.IGNORECASE)
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
BOX_COMMANDS = ("\\boxed", "\\fbox")
BOX = re.compile("|".join(re.escape(c) for c in BOX_COMMANDS))
BRACES = re.compile(r"[{}]")
WORD = re.compile(r"[^\s$]+")


@dataclass(frozen=True)
class Verdict:
    correct: bool
    status: str
    extracted: str | None


def brace_matches(text: str) -> dict[int, int]:
    """Each unescaped ``{``'s position -> its matching ``}``'s (unclosed ones absent), in one pass over the
    braces: a text of many unclosed boxes costs linear time, not a scan to the end per box."""
    match: dict[int, int] = {}
    opened: list[int] = []
    for m in BRACES.finditer(text):
        i = m.start()
        if i > 0 and text[i - 1] == "\\":
            continue  # \{ and \} are literal braces
        if m.group() == "{":
            opened.append(i)
        elif opened:
            match[opened.pop()] = i
    return match


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{..}`` / ``\\fbox{..}`` / ``\\boxed x``; None if there is none. A malformed
    (unclosed) box is skipped for the one before it. Linear in the text's length."""
    matches: dict[int, int] | None = None
    for box in reversed(list(BOX.finditer(text))):
        start = rest = box.end()
        while rest < len(text) and text[rest] == " ":
            rest += 1
        if rest < len(text) and text[rest] == "{":
            matches = brace_matches(text) if matches is None else matches
            end = matches.get(rest)
            if end is not None:
                return text[rest + 1 : end].strip()
        elif rest > start and rest < len(text):  # "\boxed 5": up to the next space or $
            m = WORD.match(text, rest)
            if m:
                return m.group(0).rstrip(".")
    return None


SENTENCE_END = re.compile(r"\.\s")  # "3.5" and "1,000" stay whole
CLAUSE = re.compile(r",\s+(?=[A-Za-z]{2,})")  # ", and we ..." ends the answer; "(1, 2)" does not


def answer_phrase(text: str) -> str:
    """What follows "the answer is": up to the end of its sentence or clause; of ``expr = value`` (one
    equals sign), the value. Seen on a real model: "The answer is 12 + 5*4 = 14, and we need to" -> 14."""
    phrase = CLAUSE.split(SENTENCE_END.split(text)[0])[0]
    if phrase.count("=") == 1:
        phrase = phrase.split("=")[1]
    return clean_tail(phrase)


def clean_tail(answer: str) -> str:
    answer = answer.strip().strip("$").strip()
    return answer.rstrip(".").strip()


def extract_answer(text: str, fallbacks: tuple[str, ...] | list[str] = FALLBACKS) -> str | None:
    return extract_with(text, fallbacks)[0]


def found_by(text: object, fallbacks: tuple[str, ...] | list[str] = FALLBACKS) -> str:
    """How the answer of ``text`` was found: ``boxed``, a fall-back's name, or ``none``."""
    return extract_with(text, fallbacks)[1] if isinstance(text, str) else "none"


def extract_with(text: str, fallbacks: tuple[str, ...] | list[str]) -> tuple[str | None, str]:
    """(the extracted answer, how it was found: ``boxed`` / ``answer_is`` / ``last_number`` / ``none``)."""
    boxed = last_boxed(text)
    if boxed is not None:
        return (boxed or None), "boxed" if boxed else "none"
    for name in fallbacks:
        if name == "answer_is":
            matches = ANSWER_IS.findall(text)
            if matches:
                found = answer_phrase(matches[-1])
                if found:
                    return found, name
        elif name == "last_number":
            numbers = NUMBER.findall(text)
            if numbers:
                return numbers[-1].rstrip(","), name
        else:
            raise ValueError(f"unknown fallback '{name}' (known: {', '.join(FALLBACKS)})")
    return None, "none"


def gold_answer(gold: str) -> str:
    """A bare gold answer, the last ``\\boxed{}`` of a gold solution, or what follows ``####`` in a
    GSM8K-style solution (thousands separators dropped)."""
    boxed = last_boxed(gold)
    if boxed is not None:
        return boxed
    if "####" in gold:
        return clean_tail(gold.rsplit("####", 1)[1]).replace(",", "")
    return clean_tail(gold)


def finite_gold(gold: str) -> str | None:
    """A gold answer that reads as a NaN or infinite float ("nan", "inf", "-Infinity") is no gold answer: it would
    score "nan" correct. (``\\infty`` is mathematics and stays.)"""
    try:
        value = float(gold)
    except ValueError:
        return gold
    return gold if math.isfinite(value) else None


NORMALISE = [(re.compile(p), r) for p, r in [
    (r"\\[dt]frac", r"\\frac"), (r"\\left|\\right|\\!|\\,|\\;|\\ ", ""), (r"\s+", ""),
    (r"^\\text\{(.*)\}$", r"\1"), (r"\.$", ""),
]]


def normalise(answer: str) -> str:
    for pattern, repl in NORMALISE:
        answer = pattern.sub(repl, answer)
    return answer


def math_equal(pred: str, gold: str) -> bool:
    """math-verify's verdict on two extracted answers (may be slow: run it under a deadline)."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
    pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def judge(pred: str, gold: str) -> Verdict:
    """Equivalence of two extracted answers (the expensive part, what the workers run)."""
    if normalise(pred) == normalise(gold):
        return Verdict(True, "correct", pred)
    try:
        ok = math_equal(pred, gold)
    except Exception:  # a parser bug on odd input is a counted status, not a crash
        return Verdict(False, "error", pred)
    return Verdict(ok, "correct" if ok else "wrong", pred)


def score(completion: str, gold: str, fallbacks: tuple[str, ...] | list[str] = FALLBACKS) -> Verdict:
    """Reward of one completion against a gold answer or gold solution (in-process, no deadline)."""
    if not isinstance(completion, str) or not isinstance(gold, str):
        return Verdict(False, "error", None)
    pred = extract_answer(completion, fallbacks)
    if pred is None:
        return Verdict(False, "no_answer", None)
    target = gold_answer(gold)
    if not target:
        return Verdict(False, "error", pred)
    return judge(pred, target)
