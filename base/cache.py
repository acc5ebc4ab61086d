"""Where fcnwild keeps what it computes once per machine (synthetic data, convolution plans)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$FCNWILD_CACHE``, else ``~/.cache/fcnwild``."""
    return Path(os.environ.get("FCNWILD_CACHE") or Path.home() / ".cache" / "fcnwild")
