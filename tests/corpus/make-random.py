#!/usr/bin/env python3
"""Write the "random" corpus: domains drawn (fixed seed) from the building blocks of
tests/test_differential.py, kept as files so that every libvirt version's real helper
can be recorded over them (scripts/record-oracle.sh SUITE random) and the "never wider"
test covers random combinations for every version, not only the installed one.

    python3 tests/corpus/make-random.py      (then re-record: the XML hashes change)
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from test_differential import random_domain  # noqa: E402

SEED, COUNT = 20261207, 120


def main() -> int:
    out = HERE / "random"
    out.mkdir(exist_ok=True)
    for old in out.glob("*.xml"):
        old.unlink()
    rng = random.Random(SEED)
    for i in range(COUNT):
        xml, _ = random_domain(rng, i)
        (out / f"rnd-{i:03d}.xml").write_bytes(xml + b"\n")
    print(f"{COUNT} domains in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
