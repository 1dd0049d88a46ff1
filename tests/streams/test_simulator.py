"""The built-in simulator: determinism, contract, statistics, drift, files and CLI."""

from __future__ import annotations

import argparse
import gzip
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

from fds.errors import ConfigError
from fds.schema import parse_label, parse_transaction
from fds.streams import simulate_cli
from fds.streams.simulator import (
    SCENARIOS,
    Simulation,
    _Clock,
    labels_path,
    simulate,
    summarize,
    write,
)
from fds.timeutil import get_zone, parse_ts

DAY = 86400.0
ZONE = get_zone("Asia/Seoul")


@pytest.fixture(scope="module")
def sim() -> Simulation:
    """A month with drift on day 14: big enough for statistics, small enough to be fast."""
    return simulate(days=28, seed=11, cards=6_000, merchants=600, drift_day=14)


@pytest.fixture(scope="module")
def frauds(sim: Simulation) -> list[dict]:
    return [t for t in sim.transactions if t["tx_id"] in sim.scenarios]


def _hour(ts: float) -> int:
    return datetime.fromtimestamp(ts, ZONE).hour


# --- determinism -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["s.jsonl", "s.jsonl.gz"])
def test_same_seed_gives_byte_identical_files(tmp_path: Path, name: str) -> None:
    kw = dict(days=4, seed=5, cards=800, merchants=150, drift_day=2)
    a_tx, a_lab = write(simulate(**kw), tmp_path / "a" / name)
    b_tx, b_lab = write(simulate(**kw), tmp_path / "b" / name)
    assert a_tx.read_bytes() == b_tx.read_bytes()
    assert a_lab.read_bytes() == b_lab.read_bytes()
    assert a_lab.stat().st_size > 0


def test_other_seed_gives_other_stream() -> None:
    a = simulate(days=2, seed=1, cards=300, merchants=120)
    b = simulate(days=2, seed=2, cards=300, merchants=120)
    assert [t["amount"] for t in a.transactions[:50]] != [t["amount"] for t in b.transactions[:50]]


# --- contract ----------------------------------------------------------------------------------


def test_every_transaction_satisfies_the_contract(sim: Simulation) -> None:
    txs = sim.transactions
    for tx in txs[:: max(len(txs) // 5_000, 1)]:  # the pydantic check on a sample of 5,000
        parsed = parse_transaction(tx, ZONE)
        assert "extra" not in parsed, f"unknown keys in {tx}"
    required = {"tx_id", "ts", "card_id", "amount", "currency", "merchant_id", "mcc", "country",
                "channel", "customer_id"}  # fmt: skip
    for tx in txs:
        assert required <= tx.keys()
        assert tx["amount"] > 0
        assert sim.start <= tx["ts"] < sim.end
        if tx["channel"] == "online":
            assert tx["device_id"] and tx["ip"] and "lat" not in tx
        else:
            assert tx["channel"] == "pos" and -90 <= tx["lat"] <= 90 and "device_id" not in tx
    assert len({t["tx_id"] for t in txs}) == len(txs)
    ts = [t["ts"] for t in txs]
    assert ts == sorted(ts)


def test_labels_are_late_frauds_of_existing_transactions(sim: Simulation) -> None:
    tx_ts = {t["tx_id"]: t["ts"] for t in sim.transactions}
    assert len(sim.labels) == len(sim.scenarios) > 0
    assert {lab["tx_id"] for lab in sim.labels} == set(sim.scenarios)
    for lab in sim.labels:
        assert parse_label(lab)["is_fraud"] is True
        assert lab["source"] in ("customer", "chargeback")
        assert lab["ts"] > tx_ts[lab["tx_id"]]
    ts = [lab["ts"] for lab in sim.labels]
    assert ts == sorted(ts)
    assert set(sim.scenarios.values()) <= set(SCENARIOS[1:])


def test_starts_at_local_midnight_and_spans_the_days(sim: Simulation) -> None:
    start = datetime.fromtimestamp(sim.start, ZONE)
    assert (start.hour, start.minute, start.isoformat()[:10]) == (0, 0, "2026-01-01")
    assert sim.end - sim.start == 28 * DAY
    assert sim.drift_ts == sim.start + 14 * DAY


def test_default_start_is_a_local_midnight_in_any_timezone() -> None:
    sim = simulate(days=2, seed=1, cards=300, merchants=120, timezone="Europe/Paris")
    start = datetime.fromtimestamp(sim.start, get_zone("Europe/Paris"))
    assert (start.isoformat()[:10], start.hour, start.minute) == ("2026-01-01", 0, 0)
    assert sim.end - sim.start == 2 * DAY


@pytest.mark.parametrize("first", ["2026-03-08", "2026-11-01"])  # New York: 23 h and 25 h days
def test_local_hours_follow_the_wall_clock_on_dst_days(first: str) -> None:
    ny = get_zone("America/New_York")
    clock = _Clock(parse_ts(f"{first}T00:00:00", ny), 2, "America/New_York")
    hours = np.array([1.5, 5.0, 23.5])
    for day in (0, 1):
        local = [datetime.fromtimestamp(t, ny) for t in clock.at(np.full(3, day), hours)]
        expected = int(first[-2:]) + day
        assert [(t.day, t.hour, t.minute) for t in local] == [
            (expected, 1, 30), (expected, 5, 0), (expected, 23, 30)
        ]  # fmt: skip


def test_the_hour_a_fall_back_repeats_gets_times_in_both_passes() -> None:
    """A QA pass: wall-clock times of the repeated hour were all its first pass (fold 0), so a
    stream across the fall-back had that real hour nearly empty."""
    ny = get_zone("America/New_York")
    clock = _Clock(parse_ts("2026-11-01T00:00:00", ny), 1, "America/New_York")
    ts = clock.at(np.zeros(1000, dtype=int), np.linspace(1.0, 1.999, 1000))
    offsets = {datetime.fromtimestamp(t, ny).utcoffset().total_seconds() / 3600 for t in ts}
    assert offsets == {-4.0, -5.0}  # EDT's pass and EST's
    passes = np.histogram(ts, bins=2, range=(ts.min(), ts.min() + 7200))[0]
    assert min(passes) > 400  # (about half each)
    # the hour a spring-forward skips: after it, as before (a review: half went before it)
    spring = _Clock(parse_ts("2026-03-08T00:00:00", ny), 1, "America/New_York")
    ts = spring.at(np.zeros(100, dtype=int), np.linspace(2.0, 2.99, 100))
    assert {datetime.fromtimestamp(t, ny).hour for t in ts} == {3}


# --- statistics --------------------------------------------------------------------------------


def test_fraud_rate_is_realistic(sim: Simulation) -> None:
    s = summarize(sim)
    assert 0.002 <= s["fraud_rate"] <= 0.01, s
    # About one transaction per card per day.
    assert 0.7 * 6_000 * 28 < s["transactions"] < 1.3 * 6_000 * 28


def test_every_scenario_happens(sim: Simulation) -> None:
    assert set(sim.scenarios.values()) == set(SCENARIOS[1:])


def test_label_delays_have_a_short_and_a_long_part(sim: Simulation) -> None:
    tx_ts = {t["tx_id"]: t["ts"] for t in sim.transactions}
    delay = {lab["source"]: [] for lab in sim.labels}
    for lab in sim.labels:
        delay[lab["source"]].append((lab["ts"] - tx_ts[lab["tx_id"]]) / DAY)
    short, long = np.array(delay["customer"]), np.array(delay["chargeback"])
    assert short.min() >= 1.0 and np.percentile(short, 90) <= 3.5  # reports, 1-3 days
    assert long.min() >= 7.0 and long.max() <= 60.0  # chargebacks, 7-60 days
    assert long.max() > 30.0
    share_short = len(short) / (len(short) + len(long))
    assert 0.3 < share_short < 0.8


def test_drift_changes_the_fraud_pattern(sim: Simulation, frauds: list[dict]) -> None:
    assert sim.drift_ts is not None
    pre = [t for t in frauds if t["ts"] < sim.drift_ts]
    post = [t for t in frauds if t["ts"] >= sim.drift_ts]
    assert len(pre) > 100 and len(post) > 100

    def stats(g: list[dict]) -> tuple[float, float, float]:
        return (
            float(np.mean([t["amount"] for t in g])),
            float(np.mean([t["country"] == "KR" for t in g])),
            float(np.mean([_hour(t["ts"]) < 6 for t in g])),
        )

    (a0, dom0, night0), (a1, dom1, night1) = stats(pre), stats(post)
    assert a1 < 0.6 * a0, "post-drift frauds should be moderate amounts"
    assert dom1 > dom0 + 0.3, "post-drift frauds should be domestic"
    assert night1 > night0 + 0.3, "post-drift frauds should happen at night"
    # The ring never appears before the drift, and dominates after it.
    assert not any(sim.scenarios[t["tx_id"]] == "drift_ring" for t in pre)
    ring = [t for t in post if sim.scenarios[t["tx_id"]] == "drift_ring"]
    assert len(ring) > len(post) / 2


def test_drift_ring_is_learnable_from_windowed_features(
    sim: Simulation, frauds: list[dict]
) -> None:
    """Ring incidents: many distinct merchants per card within hours; devices reused across
    victims; merchants that keep being hit. Legit cards rarely look like that."""
    ring = [t for t in frauds if sim.scenarios[t["tx_id"]] == "drift_ring"]
    merchants_per_card: dict[str, set[str]] = defaultdict(set)
    cards_per_device: dict[str, set[str]] = defaultdict(set)
    for t in ring:
        merchants_per_card[t["card_id"]].add(t["merchant_id"])
        cards_per_device[t["device_id"]].add(t["card_id"])
    assert np.median([len(m) for m in merchants_per_card.values()]) >= 4
    assert np.median([len(c) for c in cards_per_device.values()]) >= 3
    ring_merchants = {t["merchant_id"] for t in ring}
    hit = [t for t in sim.transactions if t["merchant_id"] in ring_merchants]
    fraud_share = sum(t["tx_id"] in sim.scenarios for t in hit) / len(hit)
    assert fraud_share > 20 * summarize(sim)["fraud_rate"]
    # Legit transactions at night at the same merchants exist (gamers), so "night" alone is
    # not enough, but they come one at a time.
    legit_night = [t for t in hit if t["tx_id"] not in sim.scenarios and _hour(t["ts"]) < 6]
    assert legit_night


def test_legit_behaviour_gives_naive_rules_false_positives(sim: Simulation) -> None:
    """Travel abroad and new phones: legitimate, and what 'new country/device' rules flag."""
    seen_country: dict[str, set[str]] = defaultdict(set)
    seen_device: dict[str, set[str]] = defaultdict(set)
    legit_new_country = legit_new_device = 0
    for t in sim.transactions:
        card, legit = t["card_id"], t["tx_id"] not in sim.scenarios
        if legit and seen_country[card] and t["country"] not in seen_country[card]:
            legit_new_country += 1
        if legit and "device_id" in t:
            if len(seen_device[card]) >= 2 and t["device_id"] not in seen_device[card]:
                legit_new_device += 1
            seen_device[card].add(t["device_id"])
        seen_country[card].add(t["country"])
    assert legit_new_country > 50
    assert legit_new_device > 20


def test_old_scenarios_match_their_descriptions(sim: Simulation, frauds: list[dict]) -> None:
    by: dict[str, list[dict]] = defaultdict(list)
    for t in frauds:
        by[sim.scenarios[t["tx_id"]]].append(t)
    ct = by["card_testing"]
    assert all(t["channel"] == "online" for t in ct)
    assert np.mean([t["amount"] <= 3_000 for t in ct]) > 0.5  # tiny tests ...
    assert max(t["amount"] for t in ct) >= 500_000  # ... then large ones
    ato = by["account_takeover"]
    assert all(t["channel"] == "online" for t in ato)
    # A foreign IP: abroad for the 92% of cards issued in KR (KR itself for foreign cards).
    assert np.mean([t["country"] != "KR" for t in ato]) > 0.85
    assert np.median([t["amount"] for t in ato]) > 5 * np.median([t["amount"] for t in ct])
    comp = by["compromised_merchant"]
    assert all(t["channel"] == "pos" for t in comp)


def test_no_drift_means_no_ring() -> None:
    sim = simulate(days=6, seed=3, cards=3_000, merchants=300, drift_day=None)
    assert sim.drift_ts is None
    assert "drift_ring" not in set(sim.scenarios.values())


# --- errors, files and CLI ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "needle"),
    [({"days": 0}, "days"), ({"merchants": 10}, "merchants"), ({"drift_day": -1}, "drift_day"),
     ({"timezone": "Mars/Base"}, "timezone"), ({"start": "2026-01-01T06:00:00"}, "midnight"),
     ({"start": "2026-01-01T00:00:00+09:00", "timezone": "Europe/Paris"}, "midnight"),
     ({"days": 10**8}, "fewer days")],
)  # fmt: skip
def test_bad_arguments_say_what_is_wrong(kw: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        simulate(**kw)


def test_labels_path_sits_beside_the_transactions() -> None:
    assert labels_path("out/sim.jsonl") == Path("out/sim.labels.jsonl")
    assert labels_path("sim.jsonl.gz") == Path("sim.labels.jsonl.gz")
    assert labels_path("sim") == Path("sim.labels.jsonl")


def test_written_files_round_trip(tmp_path: Path) -> None:
    sim = simulate(days=3, seed=2, cards=500, merchants=150, drift_day=1)
    tx_path, lab_path = write(sim, tmp_path / "s.jsonl.gz")
    with gzip.open(tx_path) as f:
        assert [orjson.loads(line) for line in f] == sim.transactions
    with gzip.open(lab_path) as f:
        assert [orjson.loads(line) for line in f] == sim.labels


@pytest.mark.parametrize("interrupted_batch", [1, 2])  # while writing transactions, labels
def test_an_interrupted_write_leaves_the_previous_files(
    tmp_path: Path, interrupted_batch: int
) -> None:
    old = simulate(days=3, seed=1, cards=2_000, merchants=120)
    old_tx, old_lab = write(old, tmp_path / "s.jsonl")
    before = old_tx.read_bytes(), old_lab.read_bytes()
    assert before[1]
    batches = 0

    def ctrl_c(_n: int) -> None:
        nonlocal batches
        batches += 1
        if batches == interrupted_batch:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write(simulate(days=3, seed=2, cards=2_000, merchants=120), old_tx, on_rows=ctrl_c)
    assert (old_tx.read_bytes(), old_lab.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl", "s.labels.jsonl"]


def test_only_json_lines_names_are_written(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ConfigError, match="jsonl"):
        write(simulate(days=1, cards=100, merchants=120), tmp_path / "s.csv")
    with pytest.raises(SystemExit) as e:
        _cli(["simulate", "--days", "1", "--out", str(tmp_path / "s.csv")])
    assert e.value.code == 2
    assert "JSON Lines" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fds")
    simulate_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError:
        return 2


def test_cli_writes_both_files_and_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sim.jsonl"
    argv = ["simulate", "--days", "3", "--seed", "4", "--cards", "600", "--merchants", "150"]
    assert _cli([*argv, "--drift-day", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "fraud" in printed.out and "label delay" in printed.out
    assert "materialising" in printed.err  # progress
    n = len(out.read_bytes().splitlines())
    assert n > 1_000
    assert (tmp_path / "sim.labels.jsonl").exists()
    sim = simulate(days=3, seed=4, cards=600, merchants=150, drift_day=1)
    assert n == len(sim.transactions)


def test_a_second_stream_takes_an_id_prefix_of_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A QA pass: a continuation (a later --start) into the same topics began at t0000000
    again, and a trainer held the labels of ids it had seen for minutes."""
    out = tmp_path / "next.jsonl"
    argv = ["simulate", "--days", "5", "--seed", "4", "--cards", "1000", "--quiet"]
    argv += ["--merchants", "150", "--start", "2026-02-01T00:00:00"]
    assert _cli([*argv, "--id-prefix", "s2-", "--out", str(out)]) == 0
    ids = [orjson.loads(line)["tx_id"] for line in out.read_bytes().splitlines()]
    assert ids[0] == "s2-0000000" and all(i.startswith("s2-") for i in ids)
    labels = [orjson.loads(x) for x in (tmp_path / "next.labels.jsonl").read_bytes().splitlines()]
    assert labels and set(x["tx_id"] for x in labels) <= set(ids)
    with pytest.raises(SystemExit):
        _cli([*argv, "--id-prefix", "a b", "--out", str(out)])
    assert "1 to 32 letters, digits or - _ . :, not ending in a digit" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # (t1 and t past 10 million ids: both t10000000)
        _cli([*argv, "--id-prefix", "t1", "--out", str(out)])


def test_cli_summary_of_a_stream_without_labels_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A QA pass: one card for a day has no fraud, and the summary said "p10 None d"."""
    argv = ["simulate", "--days", "1", "--cards", "1", "--merchants", "100"]
    assert _cli([*argv, "--out", str(tmp_path / "s.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "none (no label)" in out and "None" not in out


def test_cli_no_progress_hides_the_stages_and_counts_local_days_across_dst(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A QA pass: `--no-progress` still printed the stage lines, and 14 days across the spring
    change of Europe/Berlin (one day of 23 hours) were "over 13.96 days"."""
    argv = ["simulate", "--days", "14", "--cards", "200", "--merchants", "100"]
    argv += ["--start", "2026-03-20T00:00:00", "--timezone", "Europe/Berlin", "--no-progress"]
    assert _cli([*argv, "--out", str(tmp_path / "s.jsonl")]) == 0
    printed = capsys.readouterr()
    assert printed.err == ""
    assert " over 14 days, " in printed.out and "label delay" in printed.out


def test_cli_rejects_a_drift_day_outside_the_stream(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["simulate", "--days", "3", "--drift-day", "5", "--out", str(tmp_path / "x.jsonl")]
    assert _cli(argv) == 2
    with pytest.raises(SystemExit) as e:
        _cli(["simulate", "--drift-day", "soon", "--out", str(tmp_path / "x.jsonl")])
    assert e.value.code == 2
    assert "'none'" in capsys.readouterr().err


def test_cli_default_start_is_a_local_midnight_in_the_given_timezone(tmp_path: Path) -> None:
    out = tmp_path / "sim.jsonl"
    argv = ["simulate", "--days", "1", "--cards", "300", "--merchants", "120", "--quiet"]
    assert _cli([*argv, "--timezone", "Europe/Paris", "--out", str(out)]) == 0
    paris = get_zone("Europe/Paris")
    days = {datetime.fromtimestamp(orjson.loads(line)["ts"], paris).date().isoformat()
            for line in out.read_bytes().splitlines()}  # fmt: skip
    assert days == {"2026-01-01"}
    sim = simulate(days=1, cards=300, merchants=120, timezone="Europe/Paris")
    assert len(out.read_bytes().splitlines()) == len(sim.transactions)


def test_the_labels_beside_a_stream_keep_its_suffix_and_an_earlier_pair_is_found(tmp_path):
    """A QA pass: `--out x.ndjson` wrote its labels over `--out x.jsonl`'s (x.labels.jsonl),
    and a replay of either took the other stream's. Now x.labels.ndjson; a pair an earlier
    release wrote (x.ndjson + x.labels.jsonl) is still found, unless x.jsonl owns that name."""
    from fds.streams.simulator import labels_beside, labels_path

    assert labels_path(tmp_path / "x.ndjson").name == "x.labels.ndjson"
    assert labels_path(tmp_path / "x.json.gz").name == "x.labels.json.gz"
    (tmp_path / "x.ndjson").write_text("")
    assert labels_beside(tmp_path / "x.ndjson") is None
    (tmp_path / "x.labels.jsonl").write_text("")
    assert labels_beside(tmp_path / "x.ndjson") == tmp_path / "x.labels.jsonl"  # (earlier)
    (tmp_path / "x.jsonl").write_text("")
    assert labels_beside(tmp_path / "x.ndjson") is None  # x.jsonl's own
    (tmp_path / "x.labels.ndjson").write_text("")
    assert labels_beside(tmp_path / "x.ndjson") == tmp_path / "x.labels.ndjson"
