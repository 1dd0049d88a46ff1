"""Precision benchmark: rules alone vs static / frozen / adaptive models vs rules + adaptive.

    python benchmarks/bench_precision.py                    # the committed figures
    python benchmarks/bench_precision.py --rules rules/pre-drift.yaml --name precision_pre_drift
    python benchmarks/bench_precision.py --input my.csv --mapping my-mapping.yaml --k 50

Exactly ``fds bench precision`` (fds/bench.py), run from the repository root: the simulator with
a scheduled drift and realistic label delays (customer reports after 1-3 days, chargebacks after
7-60) goes through the real engine (features -> rules -> adaptive model -> policy); each
variant's daily top-k is scored against the truth. Writes benchmarks/results/<name>.md and .png,
each quoting the command that produced it. A path option's value that exists where it is run
from is read there, and ``--out`` is written there; any other relative path (the defaults,
``rules/pre-drift.yaml``) is read from the repository root (each was: a QA pass's own file was not
found).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    paths = ("--input", "--mapping", "--labels", "--rules", "--model", "--out")

    def where_run(flag: str, value: str) -> str:
        """A path option's value as given where this is run: ``--out``, or one that is there."""
        return str(Path(value).resolve()) if flag == "--out" or Path(value).exists() else value

    here: list[str] = []
    for i, a in enumerate(sys.argv[1:]):
        flag, eq, value = a.partition("=")
        if eq and flag in paths:
            a = f"{flag}={where_run(flag, value)}"
        elif i and sys.argv[i] in paths:  # (the option before it)
            a = where_run(sys.argv[i], a)
        here.append(a)
    os.chdir(ROOT)
    sys.argv = ["fds", "bench", "precision", *here]
    from fds.cli import main

    sys.exit(main(sys.argv[1:]))
