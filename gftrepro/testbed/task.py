"""The bundled task: multi-step integer arithmetic with a verifiable answer in ``\\boxed{}``.

Three skills, split so that fine-tuning has something to teach and something to forget:

- the **task** (``train`` and ``test`` splits): two-step problems over three numbers 1-9 with ``+`` and
  ``-`` ("Compute 3 + (9 - 7)."). Each step is one line ``a op b = c``; the expert (dataset) solution
  is the canonical one (inner step first, left operand first); other valid solutions swap the
  operands of an addition (or, in larger trees, order the steps differently): the teacher's styles.
- **facts** (one step ``a op b``, one operand 1-9 and the other -8..18): every step of a task solution
  is one of them.
- the **probe** (``probe`` split): "Which number is the largest: 37, 52, 18?", answered in one line.
  The base student scores 99.9% on it, so it cannot show forgetting; ``probe-hard`` asks the same
  question of ten numbers (the pretraining mix has three or four), on which the base scores about
  72% pass@1: a probe that can move (issue 28, chosen on the base model alone).
- ``heldout``: 1,000 more problems of the task, disjoint from every other split, for evaluations
  whose paired pass@1 intervals must be at most about 1.5 points wide on each side (``test`` has 300).

``heldout`` and ``probe-hard`` are drawn after the others, so adding them left every earlier split
byte-identical (the embedded models were trained on ``pretrain`` and ``train``).

``pretrain`` is the embedded student's broad pretraining mix (PRETRAIN_MIX): mostly facts and probe
questions, few task problems. So the student knows every step and the probe skill, but has rarely
chained two steps; fine-tuning on the task can teach that, and can erode the probe.

Regenerate the committed files (fixed seed, byte-identical output)::

    python -m gftrepro.testbed.task --out data/testbed
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

OPS = ("+", "-", "*")
TASK_OPS = ("+", "-")  # the bundled task: addition and subtraction
PRECEDENCE = {"+": 1, "-": 1, "*": 2}
SPLITS = {"test": 300, "probe": 300, "train": 2000, "pretrain": 8000, "heldout": 1000, "probe-hard": 500}
HARD_PROBE_NUMBERS = 10
PRETRAIN_MIX = {"largest": 0.45, "arith-1step": 0.50, "fine-tune": 0.05}
SEED = 20261123


@dataclass(frozen=True)
class Node:
    """A leaf (``op is None``, ``value`` set) or a binary operation."""

    value: int
    op: str | None = None
    left: Node | None = None
    right: Node | None = None


def apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def random_tree(rng: random.Random, leaves: int, ops: tuple[str, ...] = OPS) -> Node:
    if leaves == 1:
        return Node(rng.randint(1, 9))
    k = rng.randint(1, leaves - 1)
    left, right = random_tree(rng, k, ops), random_tree(rng, leaves - k, ops)
    op = rng.choice(ops)
    if op == "*" and abs(left.value * right.value) > 81:
        op = rng.choice(("+", "-"))
    return Node(apply(op, left.value, right.value), op, left, right)


def render(node: Node, parent_prec: int = 0, right_side: bool = False) -> str:
    """Infix text with the parentheses the precedence rules need and no others."""
    if node.op is None:
        return str(node.value)
    prec = PRECEDENCE[node.op]
    text = f"{render(node.left, prec)} {node.op} {render(node.right, prec, right_side=True)}"
    # a right operand of equal precedence needs brackets: 5 - (3 - 1), 2 * (3 * 4) kept explicit
    needs = prec < parent_prec or (right_side and prec == parent_prec)
    return f"({text})" if needs else text


def steps_postorder(node: Node) -> list[Node]:
    """Internal nodes in canonical order: left subtree, right subtree, then the node."""
    if node.op is None:
        return []
    return steps_postorder(node.left) + steps_postorder(node.right) + [node]


def steps_any_order(node: Node, rng: random.Random) -> list[Node]:
    """Internal nodes in a random order in which every step's operands are already known."""
    done: set[int] = set()
    order: list[Node] = []
    internal = steps_postorder(node)
    while len(order) < len(internal):
        ready = [s for s in internal if id(s) not in done and all(c.op is None or id(c) in done
                                                                  for c in (s.left, s.right))]
        pick = rng.choice(ready)
        done.add(id(pick))
        order.append(pick)
    return order


def parse(expression: str) -> Node:
    """The expression tree of a problem's text (our own format: integers, + - *, parentheses)."""
    tokens = re.findall(r"\d+|[()+*-]", expression)
    pos = 0

    def atom() -> Node:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "(":
            node = expr()
            pos += 1  # ")"
            return node
        return Node(int(tok))

    def term() -> Node:
        nonlocal pos
        node = atom()
        while pos < len(tokens) and tokens[pos] == "*":
            pos += 1
            right = atom()
            node = Node(node.value * right.value, "*", node, right)
        return node

    def expr() -> Node:
        nonlocal pos
        node = term()
        while pos < len(tokens) and tokens[pos] in "+-":
            op = tokens[pos]
            pos += 1
            right = term()
            node = Node(apply(op, node.value, right.value), op, node, right)
        return node

    return expr()


def varied_solution(problem: str, rng: random.Random) -> str:
    """A valid worked solution in another style (the teacher's): steps in a random valid order, and the
    operands of each addition in a random order."""
    steps = steps_any_order(parse(problem.removeprefix("Compute ").removesuffix(".")), rng)
    return write_solution(steps, [s.op == "+" and rng.random() < 0.5 for s in steps])


def write_solution(steps: list[Node], swap: list[bool] | None = None) -> str:
    swap = swap or [False] * len(steps)
    lines = [f"{s.right.value} {s.op} {s.left.value} = {s.value}" if flip else
             f"{s.left.value} {s.op} {s.right.value} = {s.value}" for s, flip in zip(steps, swap, strict=True)]
    lines.append(f"The answer is \\boxed{{{steps[-1].value}}}.")
    return "\n".join(lines)


def arithmetic(rng: random.Random, leaves: int) -> dict[str, str]:
    """A problem of the fine-tuning kind: ``leaves`` numbers 1-9 joined by ``+`` and ``-``."""
    tree = random_tree(rng, leaves, TASK_OPS)
    return as_problem(tree, f"arith-{leaves - 1}step")


def as_problem(tree: Node, kind: str) -> dict[str, str]:
    return {"problem": f"Compute {render(tree)}.", "solution": write_solution(steps_postorder(tree)),
            "answer": str(tree.value), "kind": kind}


def fact(rng: random.Random) -> dict[str, str]:
    """One step ``a op b``: one operand 1-9, the other any value a step of the task can produce (-8..18),
    so every step of a two-step solution is a fact the pretrained student has seen."""
    small, wide = rng.randint(1, 9), rng.randint(-8, 18)
    a, b = (small, wide) if rng.random() < 0.5 else (wide, small)
    op = rng.choice(TASK_OPS)
    tree = Node(apply(op, a, b), op, Node(a), Node(b))
    return {"problem": f"Compute {a} {op} {b}.", "solution": write_solution([tree]), "answer": str(tree.value),
            "kind": "arith-1step"}


def largest(rng: random.Random, count: int | None = None) -> dict[str, str]:
    """The probe skill: pick the largest of 3-4 (or ``count``) two-digit numbers, answered in one line."""
    numbers = rng.sample(range(10, 100), count or rng.randint(3, 4))
    best = max(numbers)
    return {"problem": f"Which number is the largest: {', '.join(map(str, numbers))}?",
            "solution": f"The largest is {best}.\nThe answer is \\boxed{{{best}}}.", "answer": str(best),
            "kind": "largest"}


def fine_tune_problem(rng: random.Random) -> dict[str, str]:
    """The fine-tuning task (train and test splits): two-step arithmetic (three leaves)."""
    return arithmetic(rng, 3)


def pretrain_problem(rng: random.Random) -> dict[str, str]:
    """The student's broad pretraining mix: PRETRAIN_MIX shares of the probe skill, one-step arithmetic,
    and a few problems of the fine-tuning kind."""
    kind = rng.choices(list(PRETRAIN_MIX), weights=list(PRETRAIN_MIX.values()))[0]
    return largest(rng) if kind == "largest" else fact(rng) if kind == "arith-1step" else fine_tune_problem(rng)


def hard_probe(rng: random.Random) -> dict[str, str]:
    return largest(rng, HARD_PROBE_NUMBERS)


MAKERS = {"train": fine_tune_problem, "test": fine_tune_problem, "probe": largest, "pretrain": pretrain_problem,
          "heldout": fine_tune_problem, "probe-hard": hard_probe}


def generate(seed: int = SEED, splits: dict[str, int] = SPLITS) -> dict[str, list[dict[str, str]]]:
    """Disjoint splits: no problem text appears twice across or within splits, except the one-step
    facts of the pretraining mix (about 900 of them; they never occur in another split)."""
    rng, seen, out = random.Random(seed), set(), {}
    for split, size in splits.items():
        rows = []
        while len(rows) < size:
            row = MAKERS[split](rng)
            if row["kind"] == "arith-1step" or row["problem"] not in seen:
                seen.add(row["problem"])
                rows.append(row)
        out[split] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/testbed"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for split, rows in generate().items():
        with open(args.out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{split}: {len(rows)} problems -> {args.out / f'{split}.jsonl'}")


if __name__ == "__main__":
    main()
