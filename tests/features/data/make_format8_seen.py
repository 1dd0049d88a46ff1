"""How ``format8_seen.pickle`` was made: the state of the release before last-seen tables
(badbd52, format 8) fed the first 600 ops of the stream of
``test_shards.test_a_state_of_format_8_with_long_seen_columns_goes_on``.

    git worktree add /tmp/old badbd52
    python tests/features/data/make_format8_seen.py /tmp/old tests/features/data/format8_seen.pickle

(Run from this tree: the stream and the declarations are this tree's test helpers; ``fds`` is
the old tree's.)
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path


def main(old: str, out: str) -> None:
    sys.path.insert(0, old)  # fds from the old tree (imported first: it stays the old one)
    import fds
    from fds.features import FeaturePlan

    assert fds.__file__.startswith(old), fds.__file__
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the tests' helpers: this tree's
    from tests.features.conftest import GRACE, STARTS
    from tests.features.test_plan_dense import LAST_SEEN_SPECS, dense_stream, recurring

    specs = [s for s in LAST_SEEN_SPECS if s.name not in ("seen_m_day", "seen_m_5m")]
    ops = recurring(dense_stream(7, 900, STARTS["UTC"][0], mean_step=20.0), 7)
    plan = FeaturePlan(specs, grace=GRACE, sweep_min_events=1)
    for op in ops[:600]:
        plan.on_label(op) if op["kind"] == "label" else plan.compute(op["tx"])
    sd = plan.state_dict()
    assert sd["format"] == 8, sd["format"]
    with open(out, "wb") as f:
        pickle.dump(sd, f, protocol=5)


if __name__ == "__main__":
    main(*sys.argv[1:3])
