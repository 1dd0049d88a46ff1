"""The service gap of a failover of `fds run` under live traffic: the dead instance's partitions
rebuilt from the input, or taken over from its snapshot in the state topic (README, "State that
survives a crash, and partitions that move"; Runner._bring_up_to_date, _take_over).

    python benchmarks/bench_failover.py [--rounds 2] [--days 20] [--cards 5000] [--rate 300]
                                        [--out benchmarks/results/failover.md]

A kit broker of its own (ports 29692/29693 or --port, its own data dir, stopped at the end).
Each run, on fresh topics (6 input partitions) and a fresh group:

1. the history: the simulator's ``--days`` for ``--cards`` cards, shifted to end now, produced
   keyed by card_id with each record's timestamp its event time (as the feature horizon, found
   with offsets_for_times, expects);
2. two `fds run` (``--rules rules/default.yaml --model none --checkpoint-every 5``, instance ids
   a and b, session timeout 6 s by FDS_SESSION_TIMEOUT_MS), b started once a decides: both
   decide the history; the ``takeover`` way adds ``--state-topic`` to both;
3. live traffic at ``--rate`` (the history's transactions again, new tx_ids, event time = wall
   time); once each instance wrote a checkpoint covering live traffic (and, with the state
   topic, published it), instance a is killed with SIGKILL; live traffic goes on for
   ``--after`` seconds past the survivor's restore, then stops and every tx_id is waited for.

Measured from the decisions topic (``decided_at`` of each decision; the partition of its tx_id
is known from what was produced) and the survivor's log: the largest interval between
consecutive decisions of the partitions the survivor held before the kill (from 5 s before the
kill to 60 s after); the time from the kill to its first decision of a moved partition; when the
assignment of all six came; the restore's own duration and records folded (its log line); the
snapshot's fetch (``taken over ... seconds=``); tx_ids never decided; decisions flagged `late`
after the kill. The two ways alternate (ABBA over the rounds) on the same machine and stream.
Writes the report and its plot (``failover.png``) beside it.
"""

from __future__ import annotations

import argparse
import calendar
import itertools
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import chaos_kafka  # noqa: E402
import plots  # noqa: E402
from bench_takeover import partition_of  # noqa: E402

from fds.pipeline import DEFAULT_RULES  # noqa: E402
from fds.streams import kafka_kit  # noqa: E402
from fds.streams.simulator import simulate  # noqa: E402
from fds.streams.state_topic import StateTopic, manifest_offsets  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "failover.md"
PORT, CONTROLLER_PORT = 29692, 29693  # apart from the kit's default and chaos_kafka's
BOOTSTRAP = f"127.0.0.1:{PORT}"
chaos_kafka.BOOTSTRAP = BOOTSTRAP  # its helpers (count_output, read_decisions) read it there
SESSION_S = 6.0  # the broker's minimum session timeout (group.min.session.timeout.ms), as the
# survivor test uses: the time the broker takes to notice the dead instance, common to both ways
CHECKPOINT_S = 5.0  # --checkpoint-every: how old the snapshot a takeover starts from can be
WINDOW_S = (5.0, 60.0)  # the own partitions' gap is looked for from 5 s before the kill to 60 after
WAYS = ("rebuild", "takeover")


def log_time(line: str) -> float | None:
    """The wall-clock time of an `fds run` log line (its ``ts="...Z"``, UTC to the ms)."""
    m = re.match(r'ts="([^".]+)\.(\d{3})Z"', line)
    if not m:
        return None
    return calendar.timegm(time.strptime(m[1], "%Y-%m-%dT%H:%M:%S")) + int(m[2]) / 1000


def lines_since(path: Path, since: float) -> list[tuple[float, str]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        t = log_time(line)
        if t is not None and t >= since:
            out.append((t, line))
    return out


def held(path: Path, before: float) -> set[int]:
    """The input partitions an instance held at ``before`` (its last assignment logged)."""
    got: set[int] = set()
    for line in path.read_text(errors="replace").splitlines():
        t = log_time(line)
        if t is not None and t < before and "partitions assigned:" in line:
            got = {int(p) for p in re.findall(r"transactions\[(\d+)\]", line)}
    return got


def published(topic: str, ident: str) -> dict[int, int]:
    """The input offsets the newest snapshot of ``ident`` in the state topic covers."""
    make = lambda: KafkaConsumer(bootstrap_servers=BOOTSTRAP)  # noqa: E731
    got = StateTopic.scan(topic, make, ident, timeout_s=30) or {}
    return manifest_offsets(got.get(ident) or {})


def stamped(tx: dict[str, Any]) -> tuple[bytes, bytes, int]:
    """Value, key (the card, as `fds produce` keys it) and record timestamp (the event time)."""
    return orjson.dumps(tx), str(tx["card_id"]).encode(), int(tx["ts"] * 1000)


def produce_history(topic: str, txs: list[dict[str, Any]], shift: float) -> dict[str, int]:
    """Send the history shifted by ``shift`` seconds; tx_id -> input partition."""
    p = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=5)
    where = {}
    try:
        for tx in txs:
            value, key, ts_ms = stamped({**tx, "ts": round(tx["ts"] + shift, 3)})
            p.send(topic, value=value, key=key, timestamp_ms=ts_ms)
            where[tx["tx_id"]] = partition_of(tx["card_id"])
        p.flush()
    finally:
        p.close()
    return where


class Live(threading.Thread):
    """Live traffic: the history's transactions again in its order, new tx_ids, event time =
    wall time, paced to ``rate`` per second until stopped."""

    def __init__(self, topic: str, pool: list[dict[str, Any]], rate: float, prefix: str) -> None:
        super().__init__(daemon=True)
        self.topic, self.pool, self.rate, self.prefix = topic, pool, rate, prefix
        self.where: dict[str, int] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        p = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=5)
        t0, i = time.monotonic(), 0
        try:
            while not self.halt.is_set():
                tx = self.pool[i % len(self.pool)]
                tx = {**tx, "tx_id": f"{self.prefix}{i:07d}", "ts": round(time.time(), 3)}
                value, key, ts_ms = stamped(tx)
                p.send(self.topic, value=value, key=key, timestamp_ms=ts_ms)
                self.where[tx["tx_id"]] = partition_of(tx["card_id"])
                i += 1
                ahead = i / self.rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)  # pacing to the offered load
            p.flush()
        finally:
            p.close()


def decided_time(d: dict[str, Any]) -> float:
    return datetime.fromisoformat(d["decided_at"].replace("Z", "+00:00")).timestamp()


def one_run(way: str, rnd: int, txs: list[dict[str, Any]], args: Any, work: Path) -> dict:
    name = f"fo-{way}-{uuid.uuid4().hex[:6]}"
    topics = kafka_kit.create_topics(BOOTSTRAP, prefix=name + ".")
    group = f"{name}-g"
    shift = time.time() - txs[-1]["ts"] - 1.0  # the history ends now
    where = produce_history(topics["transactions"], txs, shift)
    n_hist = len(where)
    cmd = [
        sys.executable, "-m", "fds", "run", "--bootstrap", BOOTSTRAP,
        "--input-topic", topics["transactions"], "--output-topic", topics["decisions"],
        "--dlq-topic", topics["dead_letters"], "--group", group,
        "--rules", args.rules, "--model", "none", "--metrics-port", "-1",
        "--checkpoint-every", f"{CHECKPOINT_S:g}",
        *(["--state-topic", topics["state_changelog"]] if way == "takeover" else []),
    ]  # fmt: skip
    env = {
        **os.environ, "PYTHONPATH": str(REPO),
        "FDS_SESSION_TIMEOUT_MS": str(int(SESSION_S * 1000)),
    }  # fmt: skip
    procs: dict[str, subprocess.Popen] = {}
    logs = {i: work / f"{name}-{i}.log" for i in "ab"}

    def start(inst: str) -> None:
        extra = ["--group-instance-id", inst, "--state-dir", str(work / name / inst)]
        with logs[inst].open("w") as log:
            procs[inst] = subprocess.Popen(
                [*cmd, *extra], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def ckpt_since(inst: str, t: float) -> bool:
        f = work / name / inst / "engine.ckpt"
        return f.exists() and f.stat().st_mtime > t

    live = Live(topics["transactions"], txs, args.rate, f"L{rnd}{way[0]}-")
    t_kill = t_live = 0.0
    try:
        start("a")
        ok = chaos_kafka.wait(lambda: chaos_kafka.count_output(topics["decisions"]) > 0, 120)
        assert ok, "instance a decided nothing in 120 s"
        start("b")
        t0 = time.monotonic()
        ok = chaos_kafka.wait(
            lambda: chaos_kafka.count_output(topics["decisions"]) >= n_hist, 900
        )  # (duplicates may count: the live phase's wait makes sure both are past the history)
        assert ok, "the history was not decided in 900 s"
        history_s = time.monotonic() - t0
        t_live = time.time()
        live.start()
        # Both live: each wrote a checkpoint that covers live traffic (and published it)
        ok = chaos_kafka.wait(
            lambda: ckpt_since("a", t_live + 2) and ckpt_since("b", t_live + 2), 120
        )
        assert ok, "no checkpoint of both instances within 120 s of live traffic"
        snap: dict[int, int] = {}
        if way == "takeover":
            ok = chaos_kafka.wait(
                lambda: snap.update(published(topics["state_changelog"], f"{group}/a"))
                or (len(snap) >= 3 and min(snap.values()) > 0),
                60,
            )  # fmt: skip
            assert ok, f"no snapshot of instance a published: {snap}"
            assert published(topics["state_changelog"], f"{group}/b"), "no snapshot of b"
        before = held(logs["b"], time.time())
        load = os.getloadavg()[0]
        t_kill = time.time()
        procs["a"].kill()
        procs["a"].wait()
        restored = (
            "rebuild of the partitions moved here partitions=", "rebuild partitions=",
            'catch-up partitions=',
        )  # fmt: skip
        ok = chaos_kafka.wait(
            lambda: any(
                any(r in ln for r in restored) for _, ln in lines_since(logs["b"], t_kill)
            ),
            300,
        )  # fmt: skip
        time.sleep(args.after)  # live traffic past the restore (a fixed span of load)
        live.halt.set()
        live.join(30)
        where.update(live.where)
        ok = chaos_kafka.wait(
            lambda: chaos_kafka.count_output(topics["decisions"]) >= len(where), 300
        )
        procs["b"].send_signal(signal.SIGTERM)
        code = procs["b"].wait(60)
    finally:
        live.halt.set()
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    got = chaos_kafka.read_decisions(topics["decisions"], committed=False)
    kafka_kit.delete_topics(BOOTSTRAP, list(topics.values()))
    return measure(way, rnd, got, where, before, t_kill, logs["b"], snap) | {
        "history": n_hist, "history_s": history_s, "live": len(live.where), "exit": code,
        "load": load, "log": logs["b"].name,
    }  # fmt: skip


def measure(
    way: str, rnd: int, got: list[dict[str, Any]], where: dict[str, int], own: set[int],
    t_kill: float, log_b: Path, snap: dict[int, int],
) -> dict[str, Any]:  # fmt: skip
    moved = set(range(6)) - own
    lo, hi = t_kill - WINDOW_S[0], t_kill + WINDOW_S[1]
    own_t = sorted(
        t for d in got if where.get(d["tx_id"]) in own and lo <= (t := decided_time(d)) <= hi
    )
    gaps = [(b - a, a) for a, b in itertools.pairwise(own_t)]
    gap, gap_at = max(gaps) if gaps else (float("nan"), float("nan"))
    after = [d for d in got if decided_time(d) > t_kill]
    first_moved = min(
        (decided_time(d) for d in after if where.get(d["tx_id"]) in moved), default=float("nan")
    )
    lines = lines_since(log_b, t_kill)
    assigned = [t for t, ln in lines if "partitions assigned:" in ln]
    row: dict[str, Any] = {
        "way": way, "round": rnd, "own": sorted(own), "moved": sorted(moved),
        "own_gap": gap, "own_gap_from": gap_at - t_kill,
        "first_moved": first_moved - t_kill,
        "assigned": assigned[0] - t_kill if assigned else float("nan"),
        "lost": len(set(where) - {d["tx_id"] for d in got}),
        "late": sum("late" in (d.get("flags") or []) for d in after),
        "dups": len(got) - len({d["tx_id"] for d in got}),
        "snapshot": snap, "restore": None, "restore_s": float("nan"), "folded": None,
        "took_s": float("nan"), "took_bytes": None, "before_fetch": float("nan"), "why": [],
    }  # fmt: skip
    for t, ln in lines:
        if m := re.search(
            r"(rebuild of the partitions moved here|rebuild|catch-up) partitions=\[([^]]*)\] "
            r"records=(\d+) seconds=([\d.]+)", ln
        ):  # fmt: skip
            row.update(restore=m[1], restore_s=float(m[4]), folded=int(m[3]))
            row["restore_line"] = ln
        if m := re.search(  # (quoted since 2026-12-06: bytes="N" in the fields)
            r'taken over from the snapshot.* bytes=\\?"?(\d+)\\?"? seconds=\\?"?([\d.]+)', ln
        ):
            row.update(took_s=float(m[2]), took_bytes=int(m[1]), took_line=ln)
            # before the fetch: committed offsets, the next records' peek, the horizon, the
            # scan of the state topic for the newest manifests (not in its seconds=)
            row["before_fetch"] = t - float(m[2]) - row["assigned"] - t_kill
        if "not taken over" in ln or "are not rebuilt alone" in ln or "grace period" in ln:
            row["why"].append(ln)
    row["first_moved_net"] = row["first_moved"] - SESSION_S  # less the detection
    row["moved_after_assigned"] = row["first_moved"] - row["assigned"]
    return row


def fmt(v: float, nd: int = 2) -> str:
    return "-" if v != v else f"{v:.{nd}f}"


def report(rows: list[dict], args: Any, command: str, load: float, n_hist: int) -> str:
    lines = [
        "# Failover of `fds run` under live traffic: rebuild from the input vs takeover "
        "from the snapshot", "",
        f"Command: `{command}`", "",
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores "
        f"(shared: the broker, both instances, the load generator), load average {load:.1f} at "
        f"the start. The history: the simulator, {args.cards:,} cards x {args.days} days, "
        f"{n_hist:,} transactions, shifted to end at the start of each run, record timestamps "
        f"= event times; live traffic at {args.rate:g} tx/s (event time = wall time). `fds run "
        f"--rules {args.rules} --model none --checkpoint-every {CHECKPOINT_S:g}`, instance ids a "
        f"and b, session timeout {SESSION_S:g} s (FDS_SESSION_TIMEOUT_MS); the takeover way "
        "adds `--state-topic`. Instance a killed (SIGKILL) once both checkpointed live traffic "
        "(and published it). Times in seconds from the kill, from the decisions' `decided_at` "
        "and the survivor's log.", "",
        "| way | round | load | survivor's own gap | gap starts | all six assigned | first "
        "moved decision | minus session timeout | from the assignment | restore (log) | records "
        "folded | assigned to snapshot fetch | snapshot fetch+cut | lost | late after kill | "
        "duplicates |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['way']} | {r['round']} | {r['load']:.1f} | {fmt(r['own_gap'])} | "
            f"{fmt(r['own_gap_from'])} | {fmt(r['assigned'])} | {fmt(r['first_moved'])} | "
            f"{fmt(r['first_moved_net'])} | {fmt(r['moved_after_assigned'])} | "
            f"{r['restore'] or 'NONE'} "
            f"{fmt(r['restore_s'], 1)} | {r['folded']} | {fmt(r['before_fetch'])} | "
            f"{fmt(r['took_s'], 1)} | {r['lost']} | "
            f"{r['late']} | {r['dups']} |"
        )
    med = {
        w: {k: statistics.median(r[k] for r in rows if r["way"] == w)
            for k in ("own_gap", "first_moved", "first_moved_net", "moved_after_assigned",
                      "restore_s")}
        for w in WAYS if any(r["way"] == w for r in rows)
    }  # fmt: skip
    if len(med) == 2:
        rb, to = med["rebuild"], med["takeover"]
        lines += [
            "",
            "| median over rounds | rebuild | takeover | rebuild / takeover |",
            "|---|---:|---:|---:|",
        ]
        for k, label in (
            ("own_gap", "survivor's own partitions: longest gap"),
            ("first_moved", "kill to first moved decision"),
            ("first_moved_net", "the same minus the session timeout"),
            ("moved_after_assigned", "assignment to first moved decision"),
            ("restore_s", "restore (its log line)"),
        ):
            a, b = rb[k], to[k]
            lines.append(f"| {label} | {fmt(a)} | {fmt(b)} | {fmt(a / b if b else float('nan'))} |")
    lines += ["", "The survivor's restore lines:", ""]
    for r in rows:
        lines.append(f"- {r['way']} round {r['round']}: `{r.get('restore_line', 'none')}`")
        if r.get("took_line"):
            lines.append(f"  - `{r['took_line']}`")
        lines.extend(f"  - why: `{ln}`" for ln in r["why"])
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], out: Path) -> str:
    fig, axes = plots.figure(3, height=3.2 + 0.25 * len(rows))
    label = {f"{r['way']} r{r['round']}": r for r in rows}
    for ax, key, title in (
        (axes[0], "own_gap", "survivor's own partitions: longest gap"),
        (axes[1], "first_moved", "kill to first decision of a moved partition"),
        (axes[2], "restore_s", "restore of the moved partitions (log)"),
    ):
        targets = [(SESSION_S, f"session timeout {SESSION_S:g} s")] if key == "first_moved" else []
        plots.bars(
            ax, {k: r[key] for k, r in label.items()}, xlabel="seconds", title=title,
            targets=targets, fmt=".2f",
        )  # fmt: skip
    return plots.save(fig, out.with_suffix(".png"), "failover gaps, both ways")


def main() -> int:
    global PORT, CONTROLLER_PORT, BOOTSTRAP
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--days", type=int, default=20)
    ap.add_argument("--cards", type=int, default=5000)
    ap.add_argument("--rate", type=float, default=300.0, help="live transactions per second")
    ap.add_argument("--after", type=float, default=15.0,
                    help="seconds of live traffic after the survivor's restore")  # fmt: skip
    ap.add_argument("--rules", default=str(Path(DEFAULT_RULES).relative_to(REPO)))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--port", type=int, default=PORT,
                    help="the broker's port (its controller's: the next one)")  # fmt: skip
    args = ap.parse_args()
    PORT, CONTROLLER_PORT = args.port, args.port + 1
    BOOTSTRAP = chaos_kafka.use_port(args.port)  # (its helpers read it there)
    command = shlex.join(["python", "benchmarks/bench_failover.py", *sys.argv[1:]])
    sim = simulate(days=args.days, cards=args.cards, merchants=max(args.cards // 20, 100), seed=3)
    txs = sim.transactions
    load = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="fds-failover-"))
    ddir = work / "kafka"
    rows = []
    kafka_kit.up(PORT, CONTROLLER_PORT, ddir)
    try:
        for rnd in range(1, args.rounds + 1):
            for way in WAYS if rnd % 2 else WAYS[::-1]:  # ABBA: drift falls on both
                row = one_run(way, rnd, txs, args, work)
                print({k: v for k, v in row.items() if not k.endswith("line")}, flush=True)
                rows.append(row)
    finally:
        kafka_kit.down(ddir, wipe=True)
    rows.sort(key=lambda r: (r["way"], r["round"]))
    text = report(rows, args, command, load, len(txs))
    text += "\n" + plot(rows, args.out) + "\n"
    args.out.write_text(text)
    print(f"wrote {args.out} (logs in {work})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
