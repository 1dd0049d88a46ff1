"""How fast a snapshot comes back from the state topic, by the readers' fetch size.

    python benchmarks/exp_state_fetch.py [--mb 120] [--rounds 4]
                                         [--out benchmarks/results/state_fetch.md]

A takeover (README, "partitions that move") scans the whole state topic for manifests, then
reads the snapshot of each instance it takes from: both read snapshot chunks (CHUNK, 512 KB)
through kafka-python, whose default ``max_partition_fetch_bytes`` (1 MB) fetches one or two of
them per round trip. Here two instances' snapshots of ``--mb`` MB each (random bytes) are
published to a fresh 6-partition topic; each round times, for each fetch size in turn (sizes
alternate within a round: a shared machine), a scan (every partition, start to end) and the
fetch of one snapshot, wall and CPU time of this process (kafka-python reads on a thread of
its own: the main thread waits). Needs the local broker kit (`fds kafka up`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kafka import KafkaConsumer, KafkaProducer

from fds.streams import kafka_kit
from fds.streams.state_topic import FETCH_BYTES, StateTopic

RESULTS = Path(__file__).parent / "results" / "state_fetch.md"
SIZES = {"1 MB (kafka-python's default)": None, "2 MB": 2 << 20, "4 MB (fds)": FETCH_BYTES,
         "8 MB": 8 << 20, "16 MB": 16 << 20}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bootstrap", default=f"127.0.0.1:{kafka_kit.DEFAULT_PORT}")
    ap.add_argument("--mb", type=int, default=120, help="MB of each of the two snapshots")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    command = shlex.join(["python", "benchmarks/exp_state_fetch.py", *sys.argv[1:]])
    topic = f"bench-state-{uuid.uuid4().hex[:8]}"
    kafka_kit.create_topics(
        args.bootstrap, {"s": {"name": topic, "partitions": 6, "replication_factor": 1}}
    )  # fmt: skip
    try:
        producer = KafkaProducer(
            bootstrap_servers=args.bootstrap, acks="all", linger_ms=5, batch_size=1 << 20,
            max_request_size=2 << 20,
        )  # fmt: skip
        data = os.urandom(args.mb << 20)
        for inst in ("a", "b"):
            StateTopic(topic, f"g/{inst}").publish(producer, data, topic="tx", offsets={0: 1})
        producer.close()
        got: dict[str, list[tuple[float, float]]] = {name: [] for name in SIZES}
        for rnd in range(args.rounds):
            for name, size in SIZES.items():
                cfg = {} if size is None else {"max_partition_fetch_bytes": size}

                def make(cfg: dict = cfg) -> KafkaConsumer:
                    return KafkaConsumer(
                        bootstrap_servers=args.bootstrap, enable_auto_commit=False, **cfg
                    )

                t, c = time.perf_counter(), time.process_time()
                manifests = StateTopic.scan(topic, make, "g/") or {}
                back = StateTopic(topic, "g/a").fetch_foreign(make, manifest=manifests["g/a"])
                got[name].append((time.perf_counter() - t, time.process_time() - c))
                assert back == data, "the snapshot did not come back whole"
                print(f"round {rnd + 1} {name}: {got[name][-1][0]:.2f} s", flush=True)
    finally:
        kafka_kit.delete_topics(args.bootstrap, [topic])
    base = statistics.median(w for w, _ in got[next(iter(SIZES))])
    lines = [
        "# State topic: reading snapshots back, by fetch size",
        "",
        f"Command: `{command}`",
        "",
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end (shared "
        f"machine). Two snapshots of {args.mb} MB on a 6-partition topic; each figure: a scan "
        f"of the whole topic ({2 * args.mb} MB) and the fetch of one snapshot ({args.mb} MB), "
        f"the median of {args.rounds} rounds, sizes alternating within each round.",
        "",
        "| max_partition_fetch_bytes | wall (s) | CPU (s) | MB/s read | speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, v in got.items():
        wall = statistics.median(w for w, _ in v)
        cpu = statistics.median(c for _, c in v)
        lines.append(
            f"| {name} | {wall:.2f} | {cpu:.2f} | {3 * args.mb / wall:.0f} | {base / wall:.2f}x |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
