"""RELIABILITY.md test 10 against the real broker: a stream that crosses local midnight and
both DST changes of America/New_York, decided by `fds run`. No decision is missing, calendar-day
windows reset exactly at local midnight (also on the 23- and 25-hour days) and sliding windows
do not, each feature equal to a brute-force recomputation."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
import pytest

from fds.streams.kafka import Runner, build_run_engine, close_engine, produce_file
from tests.integration.test_kafka_run import read_all, run_in_thread, settings_for, wait_until

pytestmark = pytest.mark.integration

NY = ZoneInfo("America/New_York")
RULES = """\
version: "dst-1"
timezone: America/New_York
features:
  - {name: spend_today, entity: card_id, agg: sum, field: amount, window: calendar_day}
  - {name: n_today, entity: card_id, agg: count, window: calendar_day}
  - {name: n_3h, entity: card_id, agg: count, window: 3h}
rules: []
"""


def _stream() -> list[dict]:
    """Two cards, a payment every 7 minutes from 20:00 to 06:00 local time around the spring
    change (2026-03-08, 02:00 -> 03:00) and the fall change (2026-11-01, 02:00 -> 01:00)."""
    out = []
    for day in ("2026-03-07", "2026-10-31"):
        start = datetime.fromisoformat(f"{day}T20:00:00").replace(tzinfo=NY).timestamp()
        for i in range(int(11 * 3600 / 420)):  # (10 hours of wall clock, 11 on the fall night)
            ts = start + 420 * i
            out.append({"tx_id": f"{day}-{i}", "ts": ts, "card_id": f"c{i % 2}",
                        "amount": float(1 + i % 5)})  # fmt: skip
    return out


def _brute(txs: list[dict]) -> dict[str, dict]:
    want = {}
    for tx in txs:
        t, day = tx["ts"], datetime.fromtimestamp(tx["ts"], NY).date()
        mine = [x for x in txs if x["card_id"] == tx["card_id"] and x["ts"] <= t]
        today = [x for x in mine if datetime.fromtimestamp(x["ts"], NY).date() == day]
        want[tx["tx_id"]] = {
            "spend_today": sum(x["amount"] for x in today),
            "n_today": len(today),
            "n_3h": sum(1 for x in mine if x["ts"] > t - 3 * 3600),
        }
    return want


def test_a_stream_across_midnight_and_dst_changes(kafka_bootstrap, make_topics, unique_name,
                                                  tmp_path):  # fmt: skip
    txs = _stream()
    # the nights are 10 h and 12 h of local clock long: both changes and both midnights crossed
    hours = {datetime.fromtimestamp(x["ts"], NY).utcoffset() for x in txs}
    assert hours == {timedelta(hours=-5), timedelta(hours=-4)}
    (tmp_path / "tx.jsonl").write_bytes(b"\n".join(orjson.dumps(x) for x in txs) + b"\n")
    (tmp_path / "rules.yaml").write_text(RULES)
    topics = make_topics(partitions=1)
    s = settings_for(kafka_bootstrap, topics, unique_name("g"))
    assert produce_file(tmp_path / "tx.jsonl", s) == len(txs)
    engine = build_run_engine(tmp_path / "rules.yaml", None)
    runner = Runner(s, engine)
    t, errors = run_in_thread(runner)
    try:
        wait_until(lambda: runner.stats.decided >= len(txs), 60, "every decision")
    finally:
        runner.stop()
        t.join(15)
        close_engine(engine)
    assert not errors, errors
    decided = [orjson.loads(r.value) for r in read_all(kafka_bootstrap, topics["decisions"])]
    got = {d["tx_id"]: d for d in decided}
    assert len(decided) == len(got)  # once each
    want = _brute(txs)
    assert set(got) == set(want)  # no gap
    for tx_id, features in want.items():
        assert {k: got[tx_id]["features"][k] for k in features} == features, tx_id
        assert "late" not in got[tx_id]["flags"]
    # the day's count restarts at each local midnight (not at UTC's, not 24 h after the last)
    firsts = [x["tx_id"] for x in txs if datetime.fromtimestamp(x["ts"], NY).strftime("%H:%M")
              < "00:07"]  # fmt: skip
    assert len(firsts) == 2 and all(got[i]["features"]["n_today"] == 1 for i in firsts)
