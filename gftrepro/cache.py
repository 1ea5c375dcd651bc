"""Where models built or converted on first use are kept: ``$GFT_CACHE`` (default ``~/.cache/gft``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("GFT_CACHE", Path.home() / ".cache" / "gft"))
