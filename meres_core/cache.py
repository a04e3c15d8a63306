"""Where meres_core keeps what it builds once per machine: compiled packages and their loader."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`MERES_CACHE_DIR`, default ~/.cache/meres-ros."""
    return Path(os.environ.get("MERES_CACHE_DIR") or Path.home() / ".cache" / "meres-ros")
