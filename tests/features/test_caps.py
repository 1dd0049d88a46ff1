"""max_entities: a flood of new entity ids is held near the cap, the entities idle longest are
evicted first, and what stays active keeps its exact features."""

from __future__ import annotations

import logging
import math
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fds import gcpolicy
from fds.errors import ConfigError
from fds.features.plan import FeaturePlan
from fds.features.shards import SHARDS, shard_of
from fds.metrics import Metrics
from fds.pipeline import build_engine
from fds.rules.ruleset import FeatureSpec, load_ruleset_text

SPECS = [
    FeatureSpec(name="n_1m", entity="card_id", agg="count", window="1m"),
    FeatureSpec(name="amt_1d", entity="card_id", agg="sum", field="amount", window="1d"),
    FeatureSpec(name="seen_m", entity="card_id", agg="seen", field="merchant_id", window="1d"),
    FeatureSpec(name="m_n_1h", entity="merchant_id", agg="count", window="1h"),
]
T0 = 1_767_193_200.0


def flood(n: int, regulars: int = 10) -> list[dict]:
    """One event a second: every other one a regular card's (each seen every 2 x regulars
    seconds), the others a card never seen before."""
    out = []
    for i in range(n):
        card = f"reg{(i // 2) % regulars}" if i % 2 == 0 else f"new{i}"
        out.append({
            "tx_id": f"t{i}", "ts": T0 + i, "card_id": card,
            "amount": float(i % 97), "merchant_id": f"m{i % 7}",
        })  # fmt: skip
    return out


def plan(cap: int | None = None, **kw: object) -> FeaturePlan:
    return FeaturePlan(
        SPECS, grace=0, max_entities={"card_id": cap} if cap else None, sweep_min_events=50, **kw
    )


def test_a_flood_of_new_cards_is_held_near_the_cap_and_regular_cards_keep_exact_features() -> None:
    capped, free = plan(400), plan()
    most = 0
    for tx in flood(20_000):
        got, want = capped.compute(tx), free.compute(tx)
        most = max(most, len(capped.states[0]))
        if tx["card_id"].startswith("reg"):  # never idle long enough to be evicted
            assert got == want, tx
    assert len(free.states[0]) > 9_000  # (held for their day)
    assert most <= 400 + 400 // 8 + 512  # the cap, a check period and a sweep step
    assert capped.evictions_by_cap() == {"card_id": capped.evicted_entities} != {"card_id": 0}
    assert capped.max_entities == {"card_id": 400}
    assert {"reg0", "reg9"} <= set(capped.states[0])  # the oldest idle went first
    # a card evicted early starts from nothing when it comes back: its own features only
    back = capped.compute({**flood(2)[1], "ts": T0 + 20_000, "tx_id": "x"})
    assert (back["n_1m"], back["seen_m"]) == (1, False)


def test_with_the_cap_unreached_the_features_are_an_uncapped_plans() -> None:
    capped, free = plan(50_000), plan()
    for tx in flood(5_000):
        assert capped.compute(tx) == free.compute(tx)
    assert capped.evictions_by_cap() == {"card_id": 0}
    assert len(capped.states[0]) == len(free.states[0])


def test_a_cap_that_cannot_be_held_keeps_the_shortest_window_and_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    p = plan(20)
    with caplog.at_level(logging.WARNING, logger="fds.features.plan"):
        for tx in flood(3_000):
            p.compute(tx)
    said = [r.getMessage() for r in caplog.records if "max_entities" in r.getMessage()]
    assert len(said) == 1, said
    assert "over its max_entities of 20" in said[0] and "within 60 s" in said[0], said
    # every card active within the shortest window (1 min) is still held
    active = {tx["card_id"] for tx in flood(3_000)[-60:]}
    assert active <= set(p.states[0])


def test_a_restored_state_continues_a_capped_sweep_as_the_uninterrupted_plan() -> None:
    txs = flood(12_000)
    a, b = plan(300), plan(300)
    for tx in txs[:6_000]:
        a.compute(tx)
    b.load_state_dict(pickle.loads(pickle.dumps(a.state_dict())))
    assert b._idle == a._idle and b.evicted_by_cap == a.evicted_by_cap
    for tx in txs[6_000:]:
        assert a.compute(tx) == b.compute(tx)
    assert a.evictions_by_cap() == b.evictions_by_cap() != {"card_id": 0}


# A child process: the features of a stream under a cap of 300, and the evictions, written
# to a file (argv: the file; "whole", or "first" / "rest" and a state's file: the stream up to
# a sweep in progress after its 4,000th event, the state saved; from that state on).
CHILD = """
import pickle, random, sys
from tests.features.test_caps import T0, plan
rng = random.Random(5)
txs = [
    {"tx_id": f"t{i}", "ts": T0 + i, "card_id": f"c{rng.randrange(1500)}",
     "amount": float(i % 97), "merchant_id": f"m{i % 7}"}
    for i in range(8000)
]
out, mode, *state = sys.argv[1:]
p, got = plan(300), []
if mode == "rest":
    with open(state[0], "rb") as f:
        p.load_state_dict(pickle.load(f))
for i, tx in enumerate(txs[p._accepted:]):
    got.append(p.compute(tx))
    if mode == "first" and i >= 4000 and p._sweep_todo:
        with open(state[0], "wb") as f:
            pickle.dump(p.state_dict(), f)
        break
with open(out, "wb") as f:
    pickle.dump((got, p.evictions_by_cap()["card_id"]), f)
"""


def _child(seed: int, path: Path, *args: str) -> tuple[list[dict], int]:
    env = {**os.environ, "PYTHONHASHSEED": str(seed)}
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), *args],
        env=env, cwd=root, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return pickle.loads(path.read_bytes())


def test_what_a_cap_evicts_is_the_same_in_every_process(tmp_path: Path) -> None:
    # the sweeps went shard by shard, the shards by Python's string hash (seeded per process):
    # two replays of one file, or a run and its restart, evicted others among cards idle about
    # as long, and their features differed (a QA pass); now the shards are shard_of's
    out, state = tmp_path / "out.pickle", str(tmp_path / "state.pickle")
    whole = [_child(seed, out, "whole") for seed in (1, 2)]
    assert whole[0] == whole[1] and whole[0][1] > 1_000  # (evicting throughout)
    first = _child(3, out, "first", state)
    rest = _child(4, out, "rest", state)  # (restored mid-sweep, in another process)
    assert first[0] + rest[0] == whole[0][0] and first[1] < rest[1] == whole[0][1]


def _at_floor_flood(n: int) -> list[dict]:
    """A flood that a cap of 20 cannot hold: ~30 new cards a minute (the shortest window, 1
    minute, keeps them), one in four of them back 1.5-2.5 minutes later (evicted or not by
    then, as the sweeps fall), and 2,000 devices, each seen every 2,000 s (uncapped: ~600 held
    for their 10-minute window, swept every 75 s)."""
    txs = flood(n)
    for i, tx in enumerate(txs):
        tx["device_id"] = f"d{i * 7 % 2000}"
        if i % 8 == 1 and i > 300:
            tx["card_id"] = f"new{i - 2 * (45 + i // 8 % 30)}"
    return txs


FLOOR_SPECS = [*SPECS, FeatureSpec(name="d_n", entity="device_id", agg="count", window="10m")]


def test_a_state_restored_mid_sweep_at_the_floor_continues_as_the_uninterrupted_plan(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # a cap that cannot be held is checked again after as many events as its type holds; a
    # restore forgot that it was at the floor and checked after an eighth of the cap: other
    # evictions from then on (a QA pass: 492 of 58,711 snapshots after a restart)
    def make() -> FeaturePlan:
        return FeaturePlan(FLOOR_SPECS, grace=0, max_entities={"card_id": 20}, sweep_min_events=50)

    txs = _at_floor_flood(6_000)
    a = make()
    for i, tx in enumerate(txs):
        a.compute(tx)
        if i >= 1_000 and a._sweep_todo and a._at_floor[0]:
            break
    else:
        pytest.fail("no sweep in progress at the floor")
    b = make()
    b.load_state_dict(pickle.loads(pickle.dumps(a.state_dict())))
    with caplog.at_level(logging.WARNING, logger="fds.features.plan"):
        for tx in txs[i + 1 :]:
            assert b.compute(tx) == a.compute(tx), tx
    assert b.evicted_by_cap == a.evicted_by_cap
    # (its warning is said again by the new process: a restarted one said nothing, a QA pass)
    said = [r.getMessage() for r in caplog.records if "max_entities of 20" in r.getMessage()]
    assert len(said) == 2, said  # (a's once, b's once)


def test_a_state_of_the_release_before_at_the_floor_takes_this_schedule_at_once() -> None:
    # the release before scheduled a floor's next sweep after as many events as every type
    # held: loaded, that schedule was waited out once, and a card type capped at 100 held
    # 4,294 after an upgrade (a QA pass)
    def make() -> FeaturePlan:
        return FeaturePlan(FLOOR_SPECS, grace=0, max_entities={"card_id": 20}, sweep_min_events=50)

    txs = _at_floor_flood(6_000)
    a = make()
    for tx in txs[:3_000]:
        a.compute(tx)
    assert a._at_floor[0] and len(a.states[0]) < 200
    sd = a.state_dict()
    body = gcpolicy.loads(sd["state"])
    del body["shards"], body["at_floor"]  # (what the release before saved)
    body["sweep_after"] = body["accepted"] + sum(len(s) for s in body["states"]) + 10_000
    b = make()
    b.load_state_dict({**sd, "state": gcpolicy.dumps(body)})
    most = 0
    for tx in txs[3_000:]:
        b.compute(tx)
        most = max(most, len(b.states[0]))
    assert most < 200, most


def test_a_cap_that_cannot_be_held_holds_about_what_is_active(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # at the floor the cap is checked after as many events as its type holds, not as all
    # types hold: the devices (uncapped) let the cards grow to 10,554 for ~500 active between
    # two checks (a QA pass); and the warning says how many are active, not only held (an
    # operator would have raised the cap 50x for nothing)
    p = FeaturePlan(FLOOR_SPECS, grace=0, sweep_min_events=50)
    txs = _at_floor_flood(8_000)
    for tx in txs[:3_000]:  # (no cap yet: every card of the day held)
        p.compute(tx)
    held = len(p.states[0])
    p.max_entities = {"card_id": 20}
    most = 0
    with caplog.at_level(logging.WARNING, logger="fds.features.plan"):
        for tx in txs[3_000:]:
            p.compute(tx)
            most = max(most, len(p.states[0]))
    assert p.state_sizes()["device_id"] > 500 and held > 1_000
    active = 30 + 10  # (new cards within the last minute, one every 2 s; the 10 regulars)
    assert len(p.states[0]) <= 3 * active + 50 and most <= held + 1, (len(p.states[0]), most)
    said = [r.getMessage() for r in caplog.records if "max_entities" in r.getMessage()]
    assert len(said) == 1, said
    told = int(said[0].split("holds ")[1].split()[0])
    about = int(said[0].split("about ")[1].split()[0])
    to = int(said[0].split("raise max_entities to ")[1].split()[0])
    assert held <= told <= held + 1 and to == math.ceil(about * 8 / 7 * 1.25), said
    assert active - 5 <= about <= active + 5, said


def test_the_advised_cap_is_more_than_the_cap_in_force(caplog: pytest.LogCaptureFixture) -> None:
    # the floor comes once 7/8 of the cap are active: 8/7 of them was the cap in force (35
    # active under a cap of 40 advised 40), and a cap of 8/7 of the active was at the floor
    # half the time (a review)
    p = FeaturePlan(FLOOR_SPECS, grace=0, max_entities={"card_id": 36}, sweep_min_events=50)
    with caplog.at_level(logging.WARNING, logger="fds.features.plan"):
        for tx in _at_floor_flood(3_000):
            p.compute(tx)
    said = [r.getMessage() for r in caplog.records if "max_entities of 36" in r.getMessage()]
    assert said, "the cap was held"
    to = int(said[0].split("raise max_entities to ")[1].split()[0])
    assert to > 36 and to >= 40 * 8 / 7, said


class _NoKernel:
    """A compiler whose kernel is never built (a build under way, or failed)."""

    tag = None

    def attach(self, plan: FeaturePlan, source: str, ns: object, run: object) -> bool:
        plan._run = run  # type: ignore[method-assign]
        return False


def test_a_plan_waiting_for_its_kernel_evicts_as_one_that_has_it() -> None:
    # the kernel was asked for again through the sweeps' count: every 1,024 events such a
    # plan checked its caps, where a compiled one (or one without a compiler) did not (a
    # review): the processes evicted others
    caps = {"card_id": 10_000}  # (checked every 1,250 events)
    waiting = FeaturePlan(SPECS, grace=0, max_entities=caps, compiler=_NoKernel())  # type: ignore[arg-type]
    plain = FeaturePlan(SPECS, grace=0, max_entities=caps)
    for tx in _at_floor_flood(40_000):
        assert waiting.compute(tx) == plain.compute(tx), tx
    assert waiting.evicted_by_cap == plain.evicted_by_cap != [0, 0]


def test_a_type_held_in_a_few_shards_is_sampled_all_the_same() -> None:
    # every shard holding any over twice the median (0: most shards empty) was skipped, the
    # sample was empty and compute raised IndexError at each event (a review)
    specs = [
        FeatureSpec(name="d_n_10m", entity="device_id", agg="count", window="10m"),
        FeatureSpec(name="d_n_1d", entity="device_id", agg="count", window="1d"),
    ]
    p = FeaturePlan(specs, grace=60, max_entities={"device_id": 10_000}, sweep_min_events=50)
    ids = (k for j in range(10**7) if shard_of(k := f"x-{j:x}") < 3)
    for n, k in zip(range(14_000), ids, strict=False):
        p.compute({"tx_id": f"a{n}", "ts": T0 + n, "device_id": k})
    assert p.evictions_by_cap() == {"device_id": p.evicted_by_cap[0]} != {"device_id": 0}


def test_the_metric_counts_the_evictions_decided_here_not_restored_nor_folded(
    tmp_path: Path,
) -> None:
    # fds_state_evicted_by_cap_total was the state's count: restored after a kill -9 it fell
    # below what the dead process had exported (a counter reset to Prometheus: a spike of
    # every eviction restored), and a restore's fold of records decided before counted their
    # evictions again (a QA pass). The state keeps its count; the metric is this process's.
    path = tmp_path / "r.yaml"
    path.write_text(rules_text("1", "max_entities: {card_id: 100}\n"))
    txs = flood(6_000)
    first = build_engine(path, None, guardrails=False)
    for tx in txs[:2_000]:
        first.decide(tx)
    metrics = Metrics()
    engine = build_engine(path, None, metrics=metrics, guardrails=False)
    try:
        plan = engine.features
        assert isinstance(plan, FeaturePlan) and isinstance(first.features, FeaturePlan)
        plan.load_state_dict(pickle.loads(pickle.dumps(first.features.state_dict())))
        restored = plan.evicted_by_cap[0]

        def exported() -> float | None:
            labels = {"entity": "card_id"}
            return metrics.registry.get_sample_value("fds_state_evicted_by_cap_total", labels)

        assert restored > 200 and exported() == 0
        for tx in txs[2_000:4_000]:  # (decided before the restart: folded)
            engine.fold(tx)
        folded = plan.evicted_by_cap[0] - restored
        assert folded > 200 and exported() == 0 and not plan.folding
        for tx in txs[4_000:]:
            engine.decide(tx)
        decided = plan.evicted_by_cap[0] - restored - folded
        assert decided > 200 and exported() == decided
        assert plan.evictions_by_cap() == {"card_id": restored + folded + decided}
    finally:
        engine.close()
        first.close()


def test_a_state_saved_before_caps_loads_with_every_horizon_in_full() -> None:
    a = plan()
    for tx in flood(1_000):
        a.compute(tx)
    sd = a.state_dict()
    body = gcpolicy.loads(sd["state"])
    del body["idle"], body["evicted_by_cap"]
    b = plan(10_000)  # (over what it holds: under it, the cap's cut is taken at once)
    b.load_state_dict({**sd, "state": gcpolicy.dumps(body)})
    assert b._idle == [cg.keep for cg in b._groups] and b.evicted_by_cap == [0, 0]
    assert b.max_entities == {"card_id": 10_000}  # (configured, not saved)


def test_a_cap_is_a_whole_number_of_a_declared_entity() -> None:
    with pytest.raises(ValueError, match="max_entities names 'device_id', no feature's entity"):
        plan().max_entities = {"device_id": 5}
    with pytest.raises(ValueError, match="a whole number of 1 or more: True"):
        plan().max_entities = {"card_id": True}


def rules_text(version: str, cap: str) -> str:
    return (
        f'version: "{version}"\n'
        f"{cap}"
        "features:\n"
        "  - {name: n_1m, entity: card_id, agg: count, window: 1m}\n"
        "  - {name: n_1d, entity: card_id, agg: count, window: 1d}\n"
        "rules: []\n"
    )


@pytest.mark.parametrize(
    ("cap", "where", "says"),
    [
        ("max_entities: {device_id: 5}\n", ":2:", "max_entities names 'device_id', the entity"),
        # (pydantic's words were "greater than 0", "a valid integer": the range, a QA pass)
        ("max_entities:\n  card_id: 0\n", ":3:12:", "from 1 to 1,000,000,000,000 is needed, not 0"),
        ("max_entities:\n  card_id: yes\n", ":3:12:", "is needed, not True"),
        ("max_entities:\n  card_id: 2.5e6\n", ":3:12:", "is needed, not '2.5e6'"),
        ("max_entities:\n  card_id: 1e6\n", ":3:12:", "not '1e6': write 1000000"),
        ("max_entities:\n  card_id: 2.0e+6\n", ":3:12:", "not 2000000.0: write 2000000"),
        # (2**64 and more crashed the ruleset's digest, a reload too: a QA pass)
        ("max_entities:\n  card_id: 99999999999999999999999\n", ":3:12:", "is needed, not 9999"),
    ],
)
def test_a_bad_cap_in_the_rules_file_is_told_at_its_line(cap: str, where: str, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_ruleset_text(rules_text("1", cap), "r.yaml")
    assert str(e.value).startswith("r.yaml" + where) and says in str(e.value), str(e.value)


def test_a_rules_reload_changes_the_cap_and_the_cap_is_exported(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(rules_text("1", ""))
    metrics = Metrics()
    engine = build_engine(path, None, watch=True, metrics=metrics, guardrails=False)
    try:
        txs = flood(4_000)
        for tx in txs[:1_000]:
            engine.decide(tx)
        assert engine.features.max_entities == {}  # type: ignore[union-attr]
        st = path.stat()
        path.write_text(rules_text("2", "max_entities: {card_id: 100}\n"))
        os.utime(path, ns=(st.st_mtime_ns + 10**9,) * 2)
        rs = engine.rules
        deadline = time.monotonic() + 30  # (its watcher may take it first)
        while rs.current.version != "2" and time.monotonic() < deadline:  # type: ignore[union-attr]
            rs.check_now()  # type: ignore[union-attr]
            time.sleep(0.05)
        assert rs.current.version == "2", rs.last_error  # type: ignore[union-attr]
        for tx in txs[1_000:]:
            engine.decide(tx)
        assert engine.features.max_entities == {"card_id": 100}  # type: ignore[union-attr]
        evicted = metrics.registry.get_sample_value(
            "fds_state_evicted_by_cap_total", {"entity": "card_id"}
        )
        assert evicted is not None and evicted > 1_000
        assert len(engine.features.states[0]) < 700  # type: ignore[union-attr]
    finally:
        engine.close()


def test_the_cut_is_read_from_whole_shards_not_the_oldest_entities(monkeypatch) -> None:
    """A review: the sample was the first states in the dicts' order, the oldest inserted of
    the first shard once a shard held more than the sample (a cap of a million): their newest
    times were recent (long-lived cards), the cut fell to the floor, and far more than an
    eighth of the cap was evicted."""
    import fds.features.plan as plan_mod

    monkeypatch.setattr(plan_mod, "_CAP_SAMPLE", 10)
    p = plan(10**6)
    for i in range(5_000):  # ~20 a shard
        p.compute({"tx_id": f"t{i}", "ts": T0 + i, "card_id": f"c{i:05d}", "amount": 1.0})
    sample = list(p._sample(0))
    whole, j = [], p._accepted % SHARDS  # (from a shard that moves with each event)
    while len(whole) < 10:  # shards whole, each a random share (one held 8 states under
        whole += list(p.states[0].parts[j % SHARDS].values())  # some hash seed: a review)
        j += 1
    assert [id(st) for st in sample] == [id(st) for st in whole]
    assert max(int(st[0][1:]) for st in sample) >= 2_500  # (not only the oldest inserted)


def test_a_cap_taken_away_stops_a_capped_sweep_in_progress() -> None:
    """A review: the cut of a sweep under way went on evicting once the cap was removed (a
    reload), or restored into a plan without one."""
    p = plan(3_000)
    txs = flood(40_000)
    i = 0
    while not (  # until a capped sweep has just started
        p._sweep_todo and p._idle[0] < p._groups[0].keep and len(p._sweep_todo[0][3]) > 200
    ):
        p.compute(txs[i])
        i += 1
    i -= 1
    saved = pickle.loads(pickle.dumps(p.state_dict()))
    p.max_entities = None
    before = p.evicted_by_cap[0]
    for tx in txs[i + 1 : i + 100]:
        p.compute(tx)
    assert p.evicted_by_cap[0] == before and p._idle[0] == p._groups[0].keep
    q = plan()
    q.load_state_dict(saved)
    assert q._idle[0] == q._groups[0].keep
    for tx in txs[i + 1 : i + 100]:
        q.compute(tx)
    assert q.evicted_by_cap[0] == before


def test_a_cap_set_during_a_flood_acts_from_the_next_events() -> None:
    """A QA pass: a cap added by a reload (or at a restart from a state saved without one)
    waited for the sweep's schedule, an event per entity held: 62 times the cap were held
    before its first eviction."""
    p = FeaturePlan(SPECS, grace=0)  # (sweeps considered once per entity held)
    txs = [{**tx, "card_id": f"n{i}"} for i, tx in enumerate(flood(30_000))]
    for tx in txs[:8_000]:
        p.compute(tx)
    saved = pickle.loads(pickle.dumps(p.state_dict()))
    p.max_entities = {"card_id": 1_000}
    for tx in txs[8_000:8_030]:
        p.compute(tx)
    assert len(p.states[0]) <= 1_000 and p.evicted_by_cap[0] > 6_000
    q = FeaturePlan(SPECS, grace=0, max_entities={"card_id": 1_000})
    q.load_state_dict(saved)
    for tx in txs[8_000:8_030]:
        q.compute(tx)
    assert len(q.states[0]) <= 1_000


def test_a_small_cap_is_checked_after_an_eighth_of_it() -> None:
    """A QA pass: a cap under 8,000 was checked every 1,000 events (sweep_min_events): 1,351
    held at a cap of 400, every event a new card."""
    p = FeaturePlan(SPECS, grace=0, max_entities={"card_id": 400})
    most = 0
    for i, tx in enumerate(flood(6_000)):
        p.compute({**tx, "card_id": f"n{i}"})
        most = max(most, len(p.states[0]))
    assert most <= 400 + 400 // 8 + 1, most


def test_rules_check_says_the_cap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A QA pass: `fds rules check` said nothing of a file's cap."""
    from fds.cli import main

    path = tmp_path / "r.yaml"
    path.write_text(rules_text("1", "max_entities: {card_id: 5000000}\n"))
    assert main(["rules", "check", str(path)]) == 0
    assert "timezone UTC, max_entities card_id 5,000,000" in capsys.readouterr().out


def test_a_cap_that_cannot_be_held_keeps_the_sweeps_schedule() -> None:
    """A review: a small cap that cannot be held (every entity active within its shortest
    window) swept all the states every eighth of the cap of events, 2-7x each event's cost."""
    p = FeaturePlan(SPECS, grace=0, max_entities={"card_id": 100})
    sweeps = 0
    for i, tx in enumerate(flood(20_000)):  # a new card every other second: ~60 in 1 min...
        p.compute({**tx, "card_id": f"n{i}", "ts": T0 + i / 50})  # ...50 a second: 3,000
        sweeps += bool(p._sweep_todo) and p._sweep_todo[0][2] == 0
    assert p._at_floor == [True, False]
    assert sweeps < 40, sweeps  # (one per entity held of events, not one per 12)


def _steered(crafted: bool) -> int:
    """Legitimate devices kept by a cap of 10,000 (11,000 seen over 20 hours) after 4,500 new
    ids within a minute: random ones, or ones made to fall in shard 0."""
    specs = [
        FeatureSpec(name="d_n_10m", entity="device_id", agg="count", window="10m"),
        FeatureSpec(name="d_n_24h", entity="device_id", agg="count", window="24h"),
    ]
    p = FeaturePlan(specs, grace=60, max_entities={"device_id": 10_000}, sweep_min_events=50)
    for i in range(11_000):
        p.compute({"tx_id": f"l{i}", "ts": T0 + i * 20 * 3600 / 11_000, "device_id": f"dev-{i}"})
    ids = [
        f"x-{j:x}"
        for j in range(2 * 10**6 if crafted else 4_500)
        if not crafted or shard_of(f"x-{j:x}") == 0
    ]
    t = T0 + 20 * 3600
    for n, k in enumerate(ids[:4_500]):
        p.compute({"tx_id": f"a{n}", "ts": t + n * 60 / 4_500, "device_id": k})
    for n in range(3_000):  # (quiet afterwards: the sweeps end)
        p.compute({"tx_id": f"q{n}", "ts": t + 60 + n / 100, "device_id": "dev-0"})
    return sum(f"dev-{i}" in p.states[0] for i in range(11_000))


def test_ids_made_to_fall_in_one_shard_do_not_steer_the_cut() -> None:
    # the shards are a public CRC of the id, and the cut was read from whole shards from shard
    # 0 on: such a flood made the sample, the cut fell to the floor, and 90 of 11,000
    # devices were kept where random ids left 4,311 (a review)
    at_random, crafted = _steered(False), _steered(True)
    assert at_random > 3_000 and crafted >= 0.8 * at_random, (at_random, crafted)


def test_a_cap_raised_over_what_is_held_stops_a_capped_sweep_in_progress() -> None:
    """A review: a cap raised (a reload) while a capped sweep was under way went on evicting
    with the old cap's cut: 197 cards of the 1,949 held, each losing its history."""
    p = plan(2_000)
    txs = flood(40_000)
    i = 0
    while not (p._sweep_todo and p._idle[0] < p._groups[0].keep):
        p.compute(txs[i])
        i += 1
    p.max_entities = {"card_id": 1_000_000}
    before, held = p.evicted_by_cap[0], len(p.states[0])
    for tx in txs[i : i + 100]:
        p.compute(tx)
    assert p.evicted_by_cap[0] == before and len(p.states[0]) >= held


@pytest.mark.parametrize("raised", [2_000, 2_600])
def test_a_cap_raised_below_what_is_held_cuts_by_the_new_cap(raised: int) -> None:
    """A review: a cap raised during a capped sweep, to less than was held, went on evicting
    towards 7/8 of the old cap (876 kept where 2,000 keeps ~1,750); a reload of the same cap
    changed nothing (it ended the sweep under way)."""
    p = plan()
    txs = flood(40_000)
    for tx in txs[:6_000]:
        p.compute(tx)
    p.max_entities = {"card_id": 1_000}
    i = 6_000
    while not p._sweep_todo:
        p.compute(txs[i])
        i += 1
    idle = p._idle[0]
    p.max_entities = {"card_id": 1_000}  # (a reload of the same rules)
    assert p._idle[0] == idle and p._sweep_todo
    held = len(p.states[0])
    p.max_entities = {"card_id": raised}
    assert held > raised and p._idle[0] > idle
    while p._sweep_todo:
        p.compute(txs[i] | {"card_id": "reg0"})  # (no new card meanwhile)
        i += 1
    assert raised * 7 / 8 * 0.9 <= len(p.states[0]) <= raised
