"""Library noise silenced when a command runs (never at import): progress bars, warnings, notices. Called by
the CLI's ``guarded`` and by ``gft run --jobs``'s worker processes."""

from __future__ import annotations

import logging
import os


def quiet_libraries() -> None:
    """Silence library progress bars and warnings (called when a command runs, never at import)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.ERROR)  # e.g. its notice on tied weights at save_state
    # where torchao is installed (the lowmem extra), transformers imports it on every model load: it logs one line
    # per CUDA extension it cannot load (every CPU machine) and torch a deprecation notice per enum it registers
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
