"""Where `fds run`'s main thread spends its time: a py-spy profile.

    pip install py-spy
    python benchmarks/profile_kafka.py [--rate 2000] [--seconds 10] [--out FILE.md]
    python benchmarks/profile_kafka.py --backlog 100000 [--out FILE.md]

By default runs the latency scenario of bench_kafka.py (default rules and model, a registry
with one trained version, a paced load) with `py-spy record --idle` attached to the `fds run`
process, and writes the main thread's wall time per call path below the poll loop (idle waits
included: that is where a record waits). With ``--backlog N`` it pre-produces N transactions
(as the throughput scenario of bench_kafka.py) and profiles `fds run` deciding them, CPU only:
the share of each function (inclusive) and of each call path, where a record's time goes when
`fds run` runs flat out. Needs the local broker kit (started if needed) and py-spy.
"""

from __future__ import annotations

import argparse
import collections
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_kafka as bk
from scratch import scratch_dir

from fds.streams import kafka_kit


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument(
        "--backlog",
        type=int,
        default=0,
        metavar="N",
        help="profile deciding N pre-produced transactions instead (CPU only)",
    )
    ap.add_argument(
        "--out",
        default=None,
        help="report (default: benchmarks/results/"
        "profile_kafka.md, or profile_kafka_backlog.md with --backlog)",
    )
    args = ap.parse_args()
    if args.out is None:
        name = "profile_kafka_backlog.md" if args.backlog else "profile_kafka.md"
        args.out = str(bk.REPO / "benchmarks" / "results" / name)
    if shutil.which("py-spy") is None:
        print("profile_kafka: error: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    command = shlex.join(["python", "benchmarks/profile_kafka.py", *sys.argv[1:]])
    bootstrap = kafka_kit.up()
    pipeline = bk.default_pipeline()
    raw = scratch_dir("fds-profile-") / "spy.txt"
    spies: list[subprocess.Popen] = []
    popen = subprocess.Popen

    def spied(cmd: list[str], **kw: object) -> subprocess.Popen:  # attach py-spy to fds run
        p = popen(cmd, **kw)  # type: ignore[call-overload]
        if "fds.streams.kafka" in cmd:
            spies.append(popen(
                ["py-spy", "record", "--idle", "-r", "500", "-f", "raw", "-o", str(raw),
                 "-p", str(p.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
        return p

    version = subprocess.run(["py-spy", "--version"], capture_output=True, text=True).stdout
    version = version.strip()
    if args.backlog:
        bk.prebuild_kernel("rules/default.yaml")  # (as a long-running service has it)
        topics = bk.fresh_topics(bootstrap)
        bk.produce(bootstrap, topics["transactions"], args.backlog)
        cmd = bk.fds_cmd(bootstrap, topics, *pipeline, "--max-idle", "3")
        spy = ["py-spy", "record", "-r", "200", "-f", "raw", "-o", str(raw), "--", *cmd]
        subprocess.run(spy, cwd=bk.REPO, env=bk.run_env(bk.REPO), check=True)
        n_out, rate = bk.throughput(bk.read_topic(bootstrap, topics["decisions"]))
        funcs, paths, total = shares(raw)
        lines = [
            "# Where `fds run`'s main thread spends its CPU on a backlog",
            "",
            f"Command: `{command}` ({version}, 200 samples/s, CPU only). {args.backlog:,} "
            "transactions pre-produced (bench_kafka.py's stream), `fds run` with the default "
            f"rules and model deciding them: {n_out:,} decisions at {rate:,.0f} tx/s (sampling "
            "slows it down: not comparable with kafka.md; the shares are what this is for).",
            "",
            f"Main-thread samples below `Runner._poll_loop`: {total:,}.",
            "",
            "| share (inclusive) | function |",
            "|---:|---|",
            *(f"| {n / total:.1%} | `{f}` |" for f, n in funcs.most_common(30)),
            "",
            "| share | call path below the poll loop (first five frames) |",
            "|---:|---|",
            *(f"| {n / total:.1%} | `{p}` |" for p, n in paths.most_common(25)),
        ]
        Path(args.out).write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}")
        return 0
    subprocess.Popen = spied  # type: ignore[misc]
    try:
        lat = bk.measure_latency(
            bootstrap, lambda t: bk.fds_cmd(bootstrap, t, *pipeline), bk.REPO, args.rate,
            args.seconds,
        )  # fmt: skip
    finally:
        subprocess.Popen = popen  # type: ignore[misc]
    for s in spies:
        s.wait(60)
    _, paths, total = shares(raw)
    tot = lat["total"]
    lines = [
        "# Where `fds run`'s main thread spends its time at a steady load",
        "",
        f"Command: `{command}` ({version}, 500 samples/s, idle included). Load "
        f"{args.rate:,.0f} tx/s for {args.seconds:g} s after a {bk.RAMP_S:g} s ramp; latency in "
        f"that run: p50 {bk.pct(tot, 0.5):.0f} ms, p99 {bk.pct(tot, 0.99):.0f} ms (sampling "
        "slows `fds run` down: not comparable with kafka.md; the shares are what this is for).",
        "",
        f"Main-thread samples below `Runner._poll_loop`: {total:,} (the process start and the "
        "warm-up before the load are outside it).",
        "",
        "| share | call path below the poll loop (first five frames) |",
        "|---:|---|",
    ]
    lines += [f"| {n / total:.1%} | `{path}` |" for path, n in paths.most_common(25)]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


def shares(raw: Path) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """Samples per function (each counted once per stack: inclusive) and per call path (its
    first five frames) below ``Runner._poll_loop`` in py-spy's raw output, and their total."""
    funcs: collections.Counter[str] = collections.Counter()
    paths: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        names = [f.split(" (")[0] for f in stack.split(";")]
        if "Runner._poll_loop" in names:
            below = names[names.index("Runner._poll_loop") + 1 :]
            paths[" > ".join(below[:5])] += int(n)
            funcs.update(dict.fromkeys(below, int(n)))
    return funcs, paths, sum(paths.values())


if __name__ == "__main__":
    raise SystemExit(main())
