"""The recipe of the embedded tiny models (``gftrepro/testbed/models.py`` says what they are): the tokenizer,
the architectures, the SFT that trains them, and the build into a folder (temporary, then renamed).

    python -m gftrepro.testbed.build --out data/models     # the committed builds, about 9 minutes on 2 cores
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from gftrepro.cache import cache_root

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
MODEL_SPECS: dict[str, dict[str, int | float]] = {
    "teacher": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
                "intermediate_size": 384, "seed": 1, "steps": 3000, "lr": 3e-3, "variants": 2},
    "student": {"hidden_size": 96, "num_hidden_layers": 3, "num_attention_heads": 3,
                "intermediate_size": 288, "seed": 2, "steps": 3000, "lr": 3e-3, "variants": 0},
}
DATA = {"teacher": ("pretrain", "train"), "student": ("pretrain",)}
ARCH_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
VOCAB_SIZE = 384
BATCH = 32
MAX_POSITIONS = 1024
RECIPE_VERSION = 5  # bump when the build below changes


def recipe_hash(name: str) -> str:
    from gftrepro.testbed.task import SEED

    recipe = {"spec": MODEL_SPECS[name], "data": DATA[name], "template": CHAT_TEMPLATE, "v": RECIPE_VERSION,
              "data_seed": SEED, "vocab": VOCAB_SIZE}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


def chat_pairs(splits: tuple[str, ...], variants: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, response) texts of the bundled ``splits`` as the pipeline formats them; each arithmetic
    problem of the fine-tuning kind also gets ``variants`` solutions in random valid step orders."""
    import random

    from gftrepro.problems import BUNDLED
    from gftrepro.prompts import QWEN_MATH_COT
    from gftrepro.testbed.task import varied_solution

    rng = random.Random(seed)
    pairs = []
    for split in splits:
        with open(BUNDLED["testbed"] / f"{split}.jsonl", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                prompt = (f"<|im_start|>system\n{QWEN_MATH_COT}<|im_end|>\n<|im_start|>user\n{row['problem']}"
                          "<|im_end|>\n<|im_start|>assistant\n")
                pairs.append((prompt, row["solution"] + "<|im_end|>"))
                if row["kind"] == "arith-2step":
                    pairs.extend((prompt, varied_solution(row["problem"], rng) + "<|im_end|>")
                                 for _ in range(variants))
    return pairs


def build_tokenizer():
    """Byte-level BPE trained on the chat-formatted train split; digits one per token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                  pre_tokenizers.ByteLevel(add_prefix_space=False)])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator((p + r for p, r in chat_pairs(("pretrain", "train"), 0, 0)), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = MAX_POSITIONS
    return tok


def train_sft(model, tokenizer, name: str) -> None:
    """Plain SFT with the pipeline's own loss: AdamW, 5% warmup + cosine, batches of 32."""
    import random

    import torch
    from transformers import get_cosine_schedule_with_warmup

    from gftrepro.engine.batches import Example, collate
    from gftrepro.logprobs import Policy
    from gftrepro.losses import token_loss

    spec = MODEL_SPECS[name]
    steps = int(spec["steps"])
    examples = []
    for i, (prompt, response) in enumerate(chat_pairs(DATA[name], int(spec["variants"]), int(spec["seed"]))):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"]
        examples.append(Example(p + r, len(p), 1.0, "expert", i))
    policy = Policy(model)
    opt = torch.optim.AdamW(policy.parameters(), lr=float(spec["lr"]), betas=(0.9, 0.95), weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, max(1, steps // 20), steps)
    rng = random.Random(int(spec["seed"]))
    model.train()
    for _ in range(steps):
        b = collate(rng.sample(examples, BATCH), tokenizer.pad_token_id, torch.device("cpu"))
        lp, _ = policy(b["input_ids"], b["attention_mask"], b["response_mask"])
        token_loss(lp, b["response_mask"], None, method="sft").backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


def build_model(name: str, vocab_size: int, eos_ids: list[int], pad_id: int):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    spec = {k: int(MODEL_SPECS[name][k]) for k in ARCH_KEYS}
    seed = int(MODEL_SPECS[name]["seed"])
    config = LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=None,
        eos_token_id=eos_ids[0],
        pad_token_id=pad_id,
        tie_word_embeddings=True,
        **spec,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos_ids, pad_token_id=pad_id)
    return model


def build(name: str, parent: Path) -> Path:
    """Build and train ``name`` into ``parent/<name>-<recipe hash>`` (temporary folder, then rename)."""
    final = parent / f"{name}-{recipe_hash(name)}"
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    try:
        tok = build_tokenizer()
        eos_ids = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
        model = build_model(name, len(tok), eos_ids, tok.pad_token_id)
        train_sft(model, tok, name)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "recipe.json").write_text(json.dumps({"name": name, **MODEL_SPECS[name], "v": RECIPE_VERSION}))
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first: its build is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Build and train the testbed models (committed: --out data/models)")
    ap.add_argument("--out", type=Path, default=None, help="parent folder (default: the cache)")
    args = ap.parse_args()
    for model_name in MODEL_SPECS:
        print(model_name, build(model_name, args.out or cache_root() / "testbed"))
