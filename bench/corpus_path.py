"""Where the benchmarks find the corpus domain they time, without ``../shared``.

The repository's corpus (``tests/corpus/domains``) when it is there, else the
copy of the one domain and its image script in ``bench/data``.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TYPICAL = "vi-desktop-kitchen-sink.xml"


def domains_dir(name: str = TYPICAL) -> Path:
    """The directory holding ``name`` and ``setup-images.sh``."""
    for d in (REPO / "tests" / "corpus" / "domains", REPO / "bench" / "data"):
        if (d / name).is_file() and (d / "setup-images.sh").is_file():
            return d
    raise SystemExit(f"{name} not found in tests/corpus/domains or bench/data")
