"""The embedded tiny models: real ``transformers`` causal LMs, built locally, no hub needed.

- Tokenizer: byte-level BPE with no merges (every byte is a token, so any text round-trips),
  plus ChatML special tokens and a Qwen2.5-style chat template. EOS is ``<|im_end|>``;
  ``<|endoftext|>`` is the pad token and a second stop token, as in Qwen2.5 instruct models.
- Models: ``LlamaForCausalLM`` with head_dim 32 (vLLM rejects head_dim 16). The teacher is
  wider and deeper than the student.

For the sampling stages the weights are randomly initialised from a fixed seed. A model is built
on first use into ``$GFT_CACHE`` (default ``~/.cache/gft``) under a name that includes a hash of
its recipe, via a temporary folder renamed into place, so concurrent first uses are safe and a
changed recipe never reuses an old build. Referenced in configs as ``testbed:teacher`` and
``testbed:student``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from gftrepro.errors import GftError

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
MODEL_SPECS: dict[str, dict[str, int]] = {
    "teacher": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
                "intermediate_size": 384, "seed": 1},
    "student": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 192, "seed": 2},
}
MAX_POSITIONS = 1024
RECIPE_VERSION = 1  # bump when the build below changes


def cache_root() -> Path:
    return Path(os.environ.get("GFT_CACHE", Path.home() / ".cache" / "gft"))


def recipe_hash(name: str) -> str:
    recipe = {"spec": MODEL_SPECS[name], "template": CHAT_TEMPLATE, "v": RECIPE_VERSION}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


def build_tokenizer():
    """Byte-level tokenizer: 256 byte tokens, then the special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_chars))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = MAX_POSITIONS
    return tok


def build_model(name: str, vocab_size: int, eos_ids: list[int], pad_id: int):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    spec = dict(MODEL_SPECS[name])
    seed = spec.pop("seed")
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


def ensure_model(name: str) -> Path:
    """Return the folder of testbed model ``name``, building it on first use."""
    if name not in MODEL_SPECS:
        raise GftError(f"unknown testbed model 'testbed:{name}' (known: {', '.join(MODEL_SPECS)})")
    final = cache_root() / "testbed" / f"{name}-{recipe_hash(name)}"
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    try:
        tok = build_tokenizer()
        eos_ids = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
        model = build_model(name, len(tok), eos_ids, tok.pad_token_id)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first: its build is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
