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
            expr = row["problem"].removeprefix("Compute ").removesuffix(".")
            assert eval(expr) == int(row["answer"])  # noqa: S307 - our own generated arithmetic
            assert row["solution"].endswith(f"\\boxed{{{row['answer']}}}.")
    assert not {r["problem"] for r in data["train"]} & {r["problem"] for r in data["test"]}


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
