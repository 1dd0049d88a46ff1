"""Exactly-once: how long another instance waits for a killed instance's open transaction.

    python benchmarks/exp_eos_takeover.py [--timeouts 60000,10000] [--rounds 2] [--out FILE]

`fds run --exactly-once` keeps one transaction open per batch (decisions, dead letters and the
input offsets). An instance killed with a transaction open leaves its offsets pending: the
instance that takes its partitions over (another transactional id, so it cannot fence the
dead one) reads their committed offsets only once the broker has aborted that transaction,
``transaction_timeout_ms`` after it began (plus up to the broker's
``transaction.abort.timed.out.transaction.cleanup.interval.ms``, 10 s by default). Until then
nothing of those partitions is decided.

Each round, on a kit broker of its own (ports 19792/19793, its own data dir, stopped at the
end): fresh topics and group; 3,000 transactions produced; instance ``a`` (``--exactly-once``,
``--max-poll-records 200``, its own transactional id) kills itself with SIGKILL after the flush
of its third batch, before the commit (``FDS_FAULT_KILL_AFTER_FLUSH=3``: a transaction left
open); instance ``b`` (another instance and transactional id) starts at once in the same group
once what a committed has been read (2 s without more), and decides the rest.
Measured from a's death: the first decision of b that a read_committed
consumer sees, and the whole stream committed. The session timeout is 6 s
(``FDS_SESSION_TIMEOUT_MS``) for both, so b is assigned a's partitions ~6 s after the kill in
every round; the rest is the transaction's wait. Writes benchmarks/results/eos_takeover.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from scratch import scratch_dir  # noqa: E402

from fds.streams import kafka_kit  # noqa: E402
from fds.streams.kafka import KafkaSettings, produce_file  # noqa: E402

PORT, CONTROLLER_PORT = 19792, 19793
BOOTSTRAP = f"127.0.0.1:{PORT}"
RESULTS = REPO / "benchmarks" / "results" / "eos_takeover.md"
N = 3000
SESSION_MS = 6000
T0 = 1767225600.0


def write_stream(path: Path) -> None:
    with path.open("wb") as f:
        for i in range(N):
            rec = {"tx_id": f"tx{i:07d}", "ts": T0 + i, "card_id": f"c{i % 97}", "amount": 5.0}
            f.write(orjson.dumps(rec) + b"\n")


def committed_count(consumer: KafkaConsumer) -> int:
    """Decisions visible to a read_committed consumer so far (polls what arrived)."""
    n = 0
    for recs in consumer.poll(timeout_ms=100, max_records=100_000).values():
        n += len(recs)
    return n


def one_round(timeout_ms: int, stream: Path, work: Path) -> dict[str, Any]:
    name = f"eos-{uuid.uuid4().hex[:6]}"
    topics = kafka_kit.create_topics(BOOTSTRAP, prefix=name + ".")
    produce_file(stream, KafkaSettings(bootstrap=BOOTSTRAP, input_topic=topics["transactions"]))
    group = f"{name}-g"
    base = [
        sys.executable, "-m", "fds", "run", "--bootstrap", BOOTSTRAP,
        "--input-topic", topics["transactions"], "--output-topic", topics["decisions"],
        "--dlq-topic", topics["dead_letters"], "--group", group, "--rules", "none",
        "--model", "none", "--state-dir", "none", "--metrics-port", "-1", "--exactly-once",
        "--max-poll-records", "200",
    ]  # fmt: skip
    env = {
        **os.environ, "PYTHONPATH": str(REPO), "FDS_SESSION_TIMEOUT_MS": str(SESSION_MS),
        "FDS_TRANSACTION_TIMEOUT_MS": str(timeout_ms),
    }  # fmt: skip
    reader = KafkaConsumer(
        topics["decisions"], bootstrap_servers=BOOTSTRAP, isolation_level="read_committed",
        auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
    )  # fmt: skip
    procs: list[subprocess.Popen] = []
    try:
        seen = 0
        with (work / f"{name}-a.log").open("w") as log:
            a = subprocess.Popen(
                [*base, "--group-instance-id", "a", "--transactional-id", f"{group}-a"],
                cwd=REPO, env={**env, "FDS_FAULT_KILL_AFTER_FLUSH": "3"}, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            procs.append(a)
            a.wait(timeout=120)
        killed = time.monotonic()
        assert a.returncode == -signal.SIGKILL, f"a exited {a.returncode}: see {log.name}"
        quiet = time.monotonic()
        while time.monotonic() - quiet < 2.0:  # read what a committed before b starts
            got = committed_count(reader)
            seen += got
            quiet = time.monotonic() if got else quiet
        before = seen
        with (work / f"{name}-b.log").open("w") as log:
            b = subprocess.Popen(
                [*base, "--group-instance-id", "b", "--transactional-id", f"{group}-b",
                 "--max-idle", "3"],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            procs.append(b)
            first = done = None
            while time.monotonic() - killed < timeout_ms / 1000 + 120:
                seen += committed_count(reader)
                now = time.monotonic() - killed
                if first is None and seen > before:
                    first = now
                if seen >= N:
                    done = now
                    break
            b.send_signal(signal.SIGTERM)
            b.wait(timeout=30)
    finally:  # (a failed round left its processes, reader and topics behind: a review)
        for p in procs:
            if p.poll() is None:
                p.kill()
        reader.close()
        kafka_kit.delete_topics(BOOTSTRAP, topics.values())
    return {"timeout_ms": timeout_ms, "before": before, "first": first, "done": done,
            "committed": seen}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--timeouts", default="60000,10000", help="transaction_timeout_ms values")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of each, interleaved")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    timeouts = [int(x) for x in args.timeouts.split(",")]
    work = scratch_dir("fds-eos-")
    ddir = work / "kafka"
    kafka_kit.up(PORT, CONTROLLER_PORT, ddir)
    stream = work / "tx.jsonl"
    write_stream(stream)
    rows: list[dict[str, Any]] = []
    try:
        for rnd in range(args.rounds):
            for t in timeouts if rnd % 2 == 0 else timeouts[::-1]:
                r = one_round(t, stream, work)
                r["round"] = rnd + 1
                print(r, flush=True)
                rows.append(r)
    finally:
        kafka_kit.down(ddir, wipe=True)
    fmt = lambda x: "never" if x is None else f"{x:.1f}"  # noqa: E731
    cmd = "python benchmarks/exp_eos_takeover.py " + shlex.join(sys.argv[1:])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "# Exactly-once: the wait for a killed instance's open transaction",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Python {platform.python_version()}, {os.cpu_count()} cores, load average {load} at "
        f"the end; broker: the kit's Apache Kafka {kafka_kit.KAFKA_VERSION} (its defaults: "
        "`transaction.abort.timed.out.transaction.cleanup.interval.ms` 10 s); session timeout "
        f"{SESSION_MS / 1000:g} s; {N:,} transactions. Seconds from the kill of instance a "
        "(its transaction open) to what a read_committed consumer sees of instance b.",
        "",
        "| transaction_timeout_ms | round | committed before the kill | b's first decision "
        "| all committed | committed at the end |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['timeout_ms']:,} | {r['round']} | {r['before']:,} | {fmt(r['first'])} | "
            f"{fmt(r['done'])} | {r['committed']:,} |"
        )
    lines += ["", "| transaction_timeout_ms | median: b's first decision | all committed |",
              "|---:|---:|---:|"]  # fmt: skip
    for t in timeouts:
        mine = [r for r in rows if r["timeout_ms"] == t]
        firsts = [r["first"] for r in mine if r["first"] is not None]
        dones = [r["done"] for r in mine if r["done"] is not None]
        lines.append(
            f"| {t:,} | {fmt(statistics.median(firsts) if firsts else None)} | "
            f"{fmt(statistics.median(dones) if dones else None)} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
