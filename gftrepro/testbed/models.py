"""The embedded tiny models: real ``transformers`` causal LMs, built and trained locally, no hub.

- Tokenizer: byte-level BPE (trained with a 384-token budget; 355 tokens result) on the bundled
  pretrain and train splits in chat format, with digits always split one per token (arithmetic
  stays digit-wise), ChatML special tokens and a Qwen2.5-style chat template. EOS is
  ``<|im_end|>``; ``<|endoftext|>`` is the pad token and a second stop token, as in Qwen2.5
  instruct models.
- Models: ``LlamaForCausalLM`` with head_dim 32 (vLLM rejects head_dim 16), trained by SFT
  (``gftrepro.losses.token_loss``, method ``sft``) with the Qwen math system prompt, as the pipeline
  prompts them. The **student** (hidden 96 x 3 layers, 0.3M parameters) is pretrained on the broad
  ``pretrain`` mix only (one-step facts, the probe skill, about 3% two-step task problems): it
  knows every step and the probe, and chains two steps some of the time. The **teacher** (hidden
  128 x 4 layers) also sees every ``train`` problem with its canonical solution and two solutions in
  other valid styles (additions' operands swapped), for longer: it is right most of the time and
  writes in styles the expert does not. The held-out ``test`` and ``probe`` splits are never
  trained on.

The builds are committed in ``data/models/<name>-<recipe hash>/`` (about 5 MB), made by
``python -m gftrepro.testbed.build --out data/models`` (about 9 minutes on a 2-core CPU, one
model after the other). When
the recipe changes, its hash changes, the committed folder no longer matches, and the model is
built on first use into ``$GFT_CACHE`` (default ``~/.cache/gft``) instead, via a temporary folder
renamed into place. Referenced in configs as ``testbed:teacher`` and ``testbed:student``.

This module finds a model (``ensure_model``, which ``gftrepro.models.resolve_model`` calls for a
``testbed:`` reference: the one place a model can be built on first use); ``build.py`` is the recipe.
"""

from __future__ import annotations

from pathlib import Path

from gftrepro.cache import cache_root
from gftrepro.errors import GftError
from gftrepro.testbed.build import MODEL_SPECS, build, recipe_hash

__all__ = ["COMMITTED", "MODEL_SPECS", "ensure_model"]

COMMITTED = Path(__file__).resolve().parents[2] / "data" / "models"


def ensure_model(name: str) -> Path:
    """The folder of testbed model ``name``: the committed build if its recipe matches, else a
    build in the cache (trained on first use)."""
    if name not in MODEL_SPECS:
        raise GftError(f"unknown testbed model 'testbed:{name}' (known: {', '.join(MODEL_SPECS)})")
    committed = COMMITTED / f"{name}-{recipe_hash(name)}"
    if (committed / "config.json").exists():
        return committed
    return build(name, cache_root() / "testbed")
