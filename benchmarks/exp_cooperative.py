"""Does kafka-python's cooperative-sticky assignor keep a member fetching during a rebalance?

    python benchmarks/exp_cooperative.py [--out benchmarks/results/cooperative.md]

Three plain consumers in one group on a 6-partition topic fed at ~500 records/s: A from the
start; B joins at 5 s and, once assigned, stops polling for 20 s (as a member rebuilding its
state would); C joins at 12 s, starting a rebalance that waits for B. Reported per member: the
gaps of more than 1 s between two polls that returned records. Run with the eager range
assignor (kafka-python's default) and with cooperative-sticky. Needs the local broker kit.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import threading
import time
import uuid
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.assignors.range import RangePartitionAssignor

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fds.streams import kafka_kit  # noqa: E402


def trial(bootstrap: str, assignor: type) -> dict[str, list[tuple[float, float]]]:
    topic, group = f"coop-{uuid.uuid4().hex[:8]}", f"coop-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 6, 1)])
    stop = threading.Event()
    t0 = time.monotonic()
    gaps: dict[str, list[tuple[float, float]]] = {}

    def produce() -> None:
        p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        i = 0
        while not stop.is_set():
            p.send(topic, key=str(i).encode(), value=b"x")
            i += 1
            time.sleep(0.002)
        p.close()

    def member(name: str, start: float, end: float, hold: float = 0.0) -> None:
        time.sleep(start)
        c = KafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=group,
            partition_assignment_strategy=(assignor,), max_poll_interval_ms=60_000,
            session_timeout_ms=10_000, auto_offset_reset="latest",
        )  # fmt: skip
        last, held, mine = None, False, []
        while time.monotonic() - t0 < end:
            got = c.poll(timeout_ms=100)
            now = time.monotonic()
            if any(got.values()):
                if last is not None and now - last > 1.0:
                    mine.append((round(last - t0, 1), round(now - last, 1)))
                last = now
            if hold and not held and c.assignment():
                held = True
                time.sleep(hold)  # a member rebuilding its state: no poll meanwhile
        gaps[name] = mine
        c.close()

    threads = [
        threading.Thread(target=member, args=("A (from the start)", 0.0, 45.0)),
        threading.Thread(
            target=member, args=("B (joins at 5 s, then 20 s without a poll)", 5.0, 43.0, 20.0)
        ),
        threading.Thread(target=member, args=("C (joins at 12 s)", 12.0, 42.0)),
    ]
    feeder = threading.Thread(target=produce)
    feeder.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    feeder.join()
    admin.delete_topics([topic])
    admin.close()
    return gaps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cooperative.md"))
    args = ap.parse_args()
    command = shlex.join(["python", "benchmarks/exp_cooperative.py", *sys.argv[1:]])
    bootstrap = kafka_kit.up()
    lines = [
        "# kafka-python's assignors during a rebalance that waits for a busy member",
        "",
        f"Command: `{command}`. Gaps of more than 1 s between two polls that returned records, "
        "as (start of the gap in s, its length in s).",
        "",
        "| assignor | member | gaps > 1 s |",
        "|---|---|---|",
    ]
    for name, assignor in (("range (eager)", RangePartitionAssignor),
                           ("cooperative-sticky", CooperativeStickyAssignor)):  # fmt: skip
        for member, gaps in sorted(trial(bootstrap, assignor).items()):
            lines.append(f"| {name} | {member} | {gaps} |")
            print(lines[-1], flush=True)
    lines.append("")
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
