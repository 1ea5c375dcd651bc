import json
from pathlib import Path

import pandas as pd
import pytest

from gftrepro.errors import GftError
from gftrepro.problems import load_problems, prompt_id
from gftrepro.testbed import task

REPO = Path(__file__).resolve().parents[1]


def test_bundled_data_is_what_the_script_generates():
    for split, rows in task.generate().items():
        lines = (REPO / "data" / "testbed" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == rows


def test_bundled_answers_are_right_and_splits_disjoint():
    data = task.generate()
    for rows in data.values():
        for row in rows:
            if row["kind"] == "largest":
                numbers = row["problem"].split(":")[1].strip(" ?").split(", ")
                assert max(map(int, numbers)) == int(row["answer"])
            else:
                expr = row["problem"].removeprefix("Compute ").removesuffix(".")
                assert eval(expr) == int(row["answer"])  # noqa: S307 - our own generated arithmetic
            assert row["solution"].endswith(f"\\boxed{{{row['answer']}}}.")
    texts = {split: {r["problem"] for r in rows} for split, rows in data.items()}
    for a in texts:
        for b in texts:
            assert a == b or not texts[a] & texts[b], (a, b)  # no problem in two splits
    assert {r["kind"] for r in data["train"] + data["test"]} == {"arith-2step"}
    assert {r["kind"] for r in data["probe"] + data["probe-hard"]} == {"largest"}
    assert {r["kind"] for r in data["heldout"]} == {"arith-2step"} and len(data["heldout"]) == 1000
    assert all(len(r["problem"].split(", ")) == 10 for r in data["probe-hard"])
    kinds = [r["kind"] for r in data["pretrain"]]
    assert kinds.count("largest") > 10 * kinds.count("arith-2step")  # few of the task


def test_prompt_id_is_a_hash_of_the_text_not_the_row():
    p = load_problems("testbed", "test", "problem", "solution", "answer", limit=5)
    ids = p.table.column("prompt_id").to_pylist()
    assert ids == [prompt_id(q) for q in p.table.column("question").to_pylist()]
    assert len(set(ids)) == 5 and all(len(i) == 16 for i in ids)


def test_local_parquet_and_jsonl_with_custom_fields_and_duplicates(tmp_path):
    rows = [{"q": "What is 1+1?", "sol": "It is \\boxed{2}."}, {"q": "What is 2+2?", "sol": "\\boxed{4}"},
            {"q": "What is 1+1?", "sol": "again"}]
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    p = load_problems(str(tmp_path / "d.parquet"), "train", "q", "sol", "", limit=0)
    assert len(p) == 2 and p.duplicates == 1
    assert p.table.column("answer").to_pylist() == [None, None]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert load_problems(str(tmp_path / "d.jsonl"), "train", "q", "sol", "", 1).table.num_rows == 1


def test_missing_field_names_the_field_and_lists_columns(tmp_path):
    with pytest.raises(GftError, match=r"no question field 'probem'; columns: problem, solution, answer"):
        load_problems("testbed", "train", "probem", "solution", "answer")


@pytest.mark.parametrize(("value", "message"), [("   ", "is empty"), (3, "is not text")])
def test_empty_or_non_text_prompt_is_an_error(tmp_path, value, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"problem": "fine"}) + "\n" + json.dumps({"problem": value}) + "\n")
    with pytest.raises(GftError, match=f"row 1: question field 'problem' {message}"):
        load_problems(str(path), "train", "problem", "", "")


def test_missing_paths_and_splits_are_clear_errors():
    with pytest.raises(GftError, match="dataset path does not exist"):
        load_problems("./nowhere.jsonl", "train", "problem", "", "")
    with pytest.raises(GftError, match="has no split 'dev'"):
        load_problems("testbed", "dev", "problem", "", "")


def test_tiny_models_load_with_auto_classes_and_answer(teacher_path, student_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for path in (teacher_path, student_path):
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        text = tok.apply_chat_template([{"role": "user", "content": "Compute 2 + 3."}], tokenize=False,
                                       add_generation_prompt=True)
        assert text.endswith("<|im_start|>assistant\n") and tok.eos_token == "<|im_end|>"
        assert tok.pad_token_id != tok.eos_token_id
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        assert tok.decode(ids["input_ids"][0]) == text  # byte-level: exact round trip
        out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
        assert out.shape[1] > ids["input_ids"].shape[1]
        assert model.config.hidden_size // model.config.num_attention_heads == 32  # vLLM needs head_dim >= 32
    assert sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(teacher_path).parameters()) > \
        sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(student_path).parameters())
    torch.manual_seed(0)


def test_committed_testbed_models_match_their_recipe():
    """CI must not retrain them: the committed folders carry the current recipe's hash."""
    from gftrepro.testbed.models import COMMITTED, MODEL_SPECS, ensure_model

    for name in MODEL_SPECS:
        assert ensure_model(name).parent == COMMITTED, f"data/models has no build of the current {name} recipe"


def greedy_accuracy(path, problems):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gftrepro.answers import score
    from gftrepro.prompts import QWEN_MATH_COT

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path)
    prompts = [tok.apply_chat_template([{"role": "system", "content": QWEN_MATH_COT},
                                        {"role": "user", "content": p["problem"]}], tokenize=False,
                                       add_generation_prompt=True) for p in problems]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=48, do_sample=False, pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert all("\\boxed{" in t for t in texts)  # they answer in the expected format
    return sum(score(t, p["answer"]).correct for t, p in zip(texts, problems, strict=True)) / len(problems)


TEACHER_MIN, STUDENT_MAX = 0.7, 0.6  # sampled pass@1 on 200 held-out problems: student 0.23 (README)


def test_trained_teacher_is_stronger_than_the_student(teacher_path, student_path):
    problems = task.generate()["test"][:60]  # held out: never trained on
    teacher, student = greedy_accuracy(teacher_path, problems), greedy_accuracy(student_path, problems)
    assert teacher >= TEACHER_MIN and student <= STUDENT_MAX and teacher > student, (teacher, student)


def test_committed_splits_are_what_the_generator_writes():
    """heldout and probe-hard were appended after the other splits: regenerating leaves every committed file
    as it is (the embedded models were trained on pretrain and train)."""
    from gftrepro.problems import BUNDLED

    for split, rows in task.generate().items():
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        assert (BUNDLED["testbed"] / f"{split}.jsonl").read_text(encoding="utf-8") == text, split


def test_student_knows_the_probe_skill(student_path):
    """The out-of-domain probe is a skill the base student has (>= 60%, the miniature's criterion):
    fine-tuning can only erode it. (SFT and GRPO gaining 5 points on the task takes a 3-seed run:
    benchmarks/headroom.py, figures in benchmarks/RESULTS.md.)"""
    assert greedy_accuracy(student_path, task.generate()["probe"][:60]) >= 0.6
