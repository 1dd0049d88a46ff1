"""Where `fds run`'s main thread spends its time at a steady load: a py-spy profile.

    pip install py-spy
    python benchmarks/profile_kafka.py [--rate 2000] [--seconds 10] [--out FILE.md]

Runs the latency scenario of bench_kafka.py (default rules and model, a registry with one
trained version, a paced load) with `py-spy record --idle` attached to the `fds run` process,
and writes the main thread's wall time per call path below the poll loop (idle waits included:
that is where a record waits). Needs the local broker kit (started if needed) and py-spy.
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
    ap.add_argument("--out", default=str(bk.REPO / "benchmarks" / "results" / "profile_kafka.md"))
    args = ap.parse_args()
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
    paths: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        names = [f.split(" (")[0] for f in stack.split(";")]
        if "Runner._poll_loop" in names:
            i = names.index("Runner._poll_loop")
            paths[" > ".join(names[i + 1 : i + 6])] += int(n)
    total = sum(paths.values())
    version = subprocess.run(["py-spy", "--version"], capture_output=True, text=True).stdout
    tot = lat["total"]
    version = version.strip()
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


if __name__ == "__main__":
    raise SystemExit(main())
