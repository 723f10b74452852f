"""Where the benchmarks find the corpus domain they time: the repository's own
corpus (``tests/corpus/domains``, with its image script)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TYPICAL = "vi-desktop-kitchen-sink.xml"


def domains_dir(name: str = TYPICAL) -> Path:
    """The directory holding ``name`` and ``setup-images.sh``."""
    d = REPO / "tests" / "corpus" / "domains"
    if (d / name).is_file() and (d / "setup-images.sh").is_file():
        return d
    raise SystemExit(f"{name} not found in {d}")
