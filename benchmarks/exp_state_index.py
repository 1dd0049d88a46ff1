"""What a takeover reads to get one snapshot back: with the state topic's index, and without.

    python benchmarks/exp_state_index.py [--instances 4] [--mb 40] [--rounds 4]
                                         [--out benchmarks/results/state_index.md]

A takeover (README, "partitions that move") finds the giving instance's newest manifest, then
reads its snapshot. Without the index (the previous release, and a state topic whose index
does not exist) it scans the whole state topic -- every chunk of every instance's three slots
-- then reads the whole partition of that instance; with it, it reads the index (the manifests
alone) and only the offsets of the snapshot's chunks (the manifest's ``span``).

Here ``--instances`` instances each publish three snapshots of ``--mb`` MB (random bytes: the
three slots compaction keeps) to a fresh 6-partition state topic and its index; each round
times both ways in turn (the order alternating between rounds: a shared machine), wall and CPU
time of this process, and checks that the snapshot came back whole. Needs the local broker kit
(`fds kafka up`). Writes the report and its plot (``state_index.png``).
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kafka import KafkaConsumer, KafkaProducer

from fds.streams import kafka_kit
from fds.streams.state_topic import FETCH_BYTES, StateTopic, index_of, manifest_span

RESULTS = Path(__file__).parent / "results" / "state_index.md"
WAYS = ("whole topic (no index)", "index + span")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bootstrap", default=f"127.0.0.1:{kafka_kit.DEFAULT_PORT}")
    ap.add_argument("--instances", type=int, default=4, help="instances publishing (>= 1)")
    ap.add_argument("--mb", type=int, default=40, help="MB of each snapshot")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.instances < 1 or args.mb < 1 or args.rounds < 1:
        ap.error("--instances, --mb and --rounds must be at least 1")
    command = shlex.join(["python", "benchmarks/exp_state_index.py", *sys.argv[1:]])
    topic = f"bench-state-{uuid.uuid4().hex[:8]}"
    index = index_of(topic)
    kafka_kit.create_topics(
        args.bootstrap,
        {
            "s": {"name": topic, "partitions": 6, "replication_factor": 1},
            "i": {"name": index, "partitions": 1, "replication_factor": 1,
                  "configs": {"cleanup.policy": "compact"}},
        },
    )  # fmt: skip

    def make() -> KafkaConsumer:
        return KafkaConsumer(
            bootstrap_servers=args.bootstrap, enable_auto_commit=False,
            max_partition_fetch_bytes=FETCH_BYTES,
        )  # fmt: skip

    idents = [f"g/i{n}" for n in range(args.instances)]
    dead = idents[-1]  # (published last: its partition is read whole without the index)
    got: dict[str, list[tuple[float, float]]] = {w: [] for w in WAYS}
    try:
        producer = KafkaProducer(
            bootstrap_servers=args.bootstrap, acks="all", linger_ms=5, batch_size=1 << 20,
            max_request_size=2 << 20,
        )  # fmt: skip
        newest = b""
        for n, ident in enumerate(idents):
            st = StateTopic(topic, ident, index=index)
            for k in range(3):
                newest = os.urandom(args.mb << 20)
                st.publish(producer, newest, topic="tx", offsets={n % 6: k + 1})
                producer.flush(timeout=120)
            print(f"{ident}: 3 snapshots of {args.mb} MB published", flush=True)
        producer.close()

        def take(way: str) -> bytes | None:
            if way == WAYS[1]:
                found = StateTopic.scan(topic, make, "g/", index=index) or {}
                return StateTopic(topic, dead).fetch_foreign(make, manifest=found[dead])
            found = StateTopic.scan(topic, make, "g/") or {}
            assert manifest_span(found[dead]) is not None
            old = {k: v for k, v in found[dead].items() if k != "span"}  # (a release before)
            return StateTopic(topic, dead).fetch_foreign(make, manifest=old)

        for rnd in range(args.rounds):
            for way in WAYS if rnd % 2 == 0 else WAYS[::-1]:
                t, c = time.perf_counter(), time.process_time()
                back = take(way)
                got[way].append((time.perf_counter() - t, time.process_time() - c))
                assert back == newest, "the snapshot did not come back whole"
                print(f"round {rnd + 1} {way}: {got[way][-1][0]:.2f} s", flush=True)
    finally:
        kafka_kit.delete_topics(args.bootstrap, [topic, index])
    wall = {w: statistics.median(x for x, _ in v) for w, v in got.items()}
    cpu = {w: statistics.median(c for _, c in v) for w, v in got.items()}
    total = 3 * args.mb * args.instances
    lines = [
        "# State topic: what a takeover reads to get one snapshot, with the index and without",
        "",
        f"Command: `{command}`",
        "",
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end (shared "
        f"machine); broker: the local kit on the same machine. {args.instances} instances, "
        f"each with three snapshots of {args.mb} MB on a 6-partition state topic ({total} MB "
        f"in all, what compaction keeps); each figure: finding the manifests and reading one "
        f"instance's newest snapshot ({args.mb} MB), the median of {args.rounds} rounds, the "
        "order alternating between rounds.",
        "",
        "| how | wall (s) | CPU of this process (s) | all rounds, wall (s) |",
        "|---|---:|---:|---|",
    ]
    for w in WAYS:
        runs = ", ".join(f"{x:.2f}" for x, _ in got[w])
        lines.append(f"| {w} | {wall[w]:.2f} | {cpu[w]:.2f} | {runs} |")
    ratio = wall[WAYS[0]] / wall[WAYS[1]]
    lines += [
        "",
        f"With the index a takeover gets the snapshot **{ratio:.1f}x** faster here. Without "
        f"it, it reads the {total} MB of the topic, then the dead instance's partition whole "
        "(its three slots and any other instance's hashed there); with it, the manifests and "
        f"the {args.mb} MB of the one snapshot: the time no longer grows with the number of "
        "instances or the slots compaction keeps.",
        "",
        _plot(wall, args.out.with_suffix(".png")),
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _plot(wall: dict[str, Any], path: Path) -> str:
    from plots import bars, figure, save

    fig, (ax,) = figure(1, height=2.6)
    bars(ax, wall, xlabel="seconds (wall, median)", title="one snapshot back", fmt=".2f")
    return save(fig, path, "time to get one snapshot back, with the index and without")


if __name__ == "__main__":
    raise SystemExit(main())
