"""What a manifest records about the machine and the libraries that made a version."""

from __future__ import annotations

import platform
from typing import Any

import gftrepro


def environment() -> dict[str, Any]:
    """Versions of what can change results."""
    env = {"gft": gftrepro.__version__, "python": platform.python_version(), "platform": platform.platform()}
    for mod in ("torch", "transformers", "vllm", "datasets", "pyarrow"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # not installed (vllm is optional) or broken import
            continue
    try:
        import torch

        env["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:
        env["device"] = "unknown"
    return env
