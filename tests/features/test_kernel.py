"""The compiled feature kernel (fds.features.kernel): built by Cython and gcc for real, in a
cache of the test's own, and held to the interpreted plan's values bit for bit."""

from __future__ import annotations

import logging
import os
import platform
import random
import re
import subprocess
import sys
import time
from array import array
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fds.errors import ConfigError
from fds.features import FeaturePlan
from fds.features.kernel import BUILD_TIMEOUT_S, KEEP_S, RETRY_AFTER_S, Compiler
from fds.features.shards import shard_of
from tests.features.conftest import ALL_SPECS, GRACE, STARTS, Spec, streams
from tests.features.reference import reference
from tests.features.test_plan_properties import assert_same, run_plan
from tests.features.test_split import _feed as feed
from tests.features.test_split import _make as split_plan
from tests.features.test_split import _split_cases as split_cases

SMALL = [
    SimpleNamespace(name="n_1h", entity="card_id", agg="count", field=None, window="1h"),
    SimpleNamespace(name="mean_1h", entity="card_id", agg="mean", field="amount", window="1h"),
]
# A process loads a kernel once (Cython refuses a module's second load), so what a cache holds
# on disk is seen from a child process, as another fds process would see it.
CHILD = """
import sys
from types import SimpleNamespace as S
from fds.features import FeaturePlan
from fds.features.kernel import Compiler
c = Compiler(sys.argv[1])
specs = [S(name="n_%s" % sys.argv[2], entity="card_id", agg="count", field=None,
           window=sys.argv[2])]
first = FeaturePlan(specs, compiler=c).compiled
if sys.argv[3:] == ["exit"]:
    raise SystemExit(0)  # (at once: the build under way)
assert c.wait()
print(first, FeaturePlan(specs, compiler=c).compiled, c.builds)
"""


def child(cache: Path, window: str, *more: str, umask: int | None = None, env: Any = None) -> str:
    """What a child process says: compiled at its first plan, at its second, builds run."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(cache), window, *more], capture_output=True, text=True,
        preexec_fn=None if umask is None else lambda: os.umask(umask),  # (a single thread)
        env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def plan(specs: list[Any] = ALL_SPECS, tz: str = "UTC", compiler: Compiler | None = None) -> Any:
    return FeaturePlan(specs, timezone=tz, grace=GRACE, sweep_min_events=1, compiler=compiler)


@pytest.fixture(scope="module")
def compiler(tmp_path_factory: pytest.TempPathFactory) -> Compiler:
    """A compiler whose cache holds the kernel of ALL_SPECS (one build for the module: the
    source does not depend on the timezone, whose day clock is bound, not generated)."""
    c = Compiler(tmp_path_factory.mktemp("kernels"))
    assert not plan(compiler=c).compiled  # (not built yet: the build starts)
    assert c.wait(), "the kernel's build did not end"
    assert plan(tz="Europe/Berlin", compiler=c).compiled, "built, but not bound"
    return c


def same(a: list[Any], b: list[Any]) -> bool:
    return repr(a) == repr(b)  # (exact: floats to the last bit, None and NaN included)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=streams())
def test_the_kernel_gives_the_interpreted_values_and_the_brute_force_ones(
    compiler: Compiler, case: tuple[str, list[dict[str, Any]]]
) -> None:
    tz, ops = case
    fast = plan(tz=tz, compiler=compiler)
    assert fast.compiled
    got = run_plan(fast, ops)
    assert same(got, run_plan(plan(tz=tz), ops))
    assert_same(got, reference(ALL_SPECS, ops, timezone=tz, grace=GRACE), ops)


def test_the_kernels_last_seen_tables_are_the_interpreted_ones(tmp_path: Path) -> None:
    # the typed kernel's own fold and lookups of last-seen tables (fds.features.kernel's
    # _fold_at, _seen_in, _seen_since), lists and dicts, against the interpreted plan; and a
    # kernel of the same source in another module (another release's prelude) is another one
    from fds.features import kernel
    from tests.features.test_plan_dense import LAST_SEEN_SPECS, dense_stream, recurring

    specs = [*LAST_SEEN_SPECS, Spec("m_seen_card_2h", "merchant_id", "seen", "card_id", "2h")]
    compiler = Compiler(tmp_path)  # (its own cache: the fixture's holds one kernel)
    assert not plan(specs, compiler=compiler).compiled
    assert compiler.wait()
    ops = recurring(dense_stream(5, 1500, STARTS["UTC"][0], mean_step=20.0), 5)
    for op in ops:  # (a merchant of many cards: its table a dict)
        if op["kind"] == "tx":
            op["tx"]["merchant_id"] = "m"
            op["tx"]["card_id"] = f"c{int(op['tx']['tx_id'][1:]) * 7 % 300}"
    fast = plan(specs, compiler=compiler)
    assert fast.compiled
    got = run_plan(fast, ops)
    assert same(got, run_plan(plan(specs), ops))
    assert_same(got, reference(specs, ops, timezone="UTC", grace=GRACE), ops, specs)
    kinds = {
        type(st[cg.i_last[ci]])
        for cg, states in zip(fast._groups, fast.states, strict=True)
        for st in states.values()
        for ci in range(len(cg.cats))
        if cg.i_last[ci] >= 0
    }
    assert kinds >= {list, dict}
    prelude, other = kernel._PRELUDE, Compiler(tmp_path)
    try:
        kernel._PRELUDE = prelude + "# another release\n"
        assert not plan(specs, compiler=other).compiled
    finally:
        kernel._PRELUDE = prelude
    assert other.wait() and plan(specs, compiler=Compiler(tmp_path)).compiled


# Entity keys of every kind a shard is chosen for: ASCII (read in place by the kernel),
# Latin-1, other planes, a lone surrogate (JSON allows one), long, empty; numbers by value.
SHARD_KEYS = [
    "c1", "", "\u00e9t\u00e9", "\uce74\ub4dc", "\U0001f600", "\ud800x", "k" * 300, 7, -1,
    -(2**70), 3.5, -2.0, True, type("Text", (str,), {})("sub"),
]  # fmt: skip


def test_the_kernel_puts_each_entity_in_the_shard_shard_of_names(compiler: Compiler) -> None:
    # the hot path picks a state's shard itself (the kernel's _shard_of); the plan's other
    # readers (the sweeps, checkpoints, state_sizes) find it by shard_of: both must agree
    fast = plan(compiler=compiler)
    assert fast.compiled
    for i, key in enumerate(SHARD_KEYS):
        tx = {"tx_id": f"t{i}", "ts": STARTS["UTC"][0] + i, "card_id": key, "amount": 1.0}
        assert fast.compute(tx)["c_n_60s"] == 1
    shards = fast.states[next(i for i, cg in enumerate(fast._groups) if cg.ent == "card_id")]
    assert sorted(map(repr, shards)) == sorted(map(repr, SHARD_KEYS))
    assert all(k in shards.parts[shard_of(k)] for k in SHARD_KEYS)
    assert shard_of("c1") == 177 and shard_of("\U0001f600") != shard_of("\ud800x")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=streams(), where=st.floats(0, 1))
def test_a_compiled_plans_checkpoint_continues_exactly_interpreted_and_back(
    compiler: Compiler, case: tuple[str, list[dict[str, Any]]], where: float
) -> None:
    tz, ops = case
    cut = int(where * len(ops))
    whole = run_plan(plan(tz=tz), ops)
    first = plan(tz=tz, compiler=compiler)
    head = run_plan(first, ops[:cut])
    second = plan(tz=tz)
    second.load_state_dict(first.state_dict())
    assert same(head + run_plan(second, ops[cut:]), whole)
    third = plan(tz=tz, compiler=compiler)
    third.load_state_dict(first.state_dict())
    assert third.compiled  # (a restore rebinds: still the kernel)


@pytest.fixture(scope="module")
def prov_compiler(tmp_path_factory: pytest.TempPathFactory) -> Compiler:
    """A compiler whose cache holds the kernel of ALL_SPECS with provenance (another source)."""
    c = Compiler(tmp_path_factory.mktemp("kernels-prov"))
    assert not split_plan(compiler=c).compiled
    assert c.wait(), "the kernel's build did not end"
    return c


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=split_cases(), back=st.booleans())
def test_compiled_plans_split_and_absorb_back_as_interpreted_ones(
    prov_compiler: Compiler, case: tuple[str, list[Any], dict[str, int], int, set[int]], back: bool
) -> None:
    """What a takeover does (split a dead instance's state by partition, merge it into one's
    own): compiled, bit for bit what the interpreted plans give (held to the brute force in
    tests/features/test_split.py)."""
    tz, ops, part, cut, moving = case

    def go(compiler: Compiler | None) -> list[Any]:
        plan = split_plan(tz, compiler=compiler)
        head = feed(lambda p: plan, ops[:cut], part)
        moved = plan.split(moving)
        assert plan.compiled is moved.compiled is (compiler is not None)
        if back:
            plan.absorb(moved)
            assert plan.compiled is (compiler is not None)
            return head + feed(lambda p: plan, ops[cut:], part)
        return head + feed(lambda p: moved if p in moving else plan, ops[cut:], part)

    assert same(go(prov_compiler), go(None))


class _Source:
    """A compiler that keeps the source a plan asks it for and leaves the plan interpreted."""

    def attach(self, plan: Any, source: str, ns: Any, run: Any) -> bool:
        self.source, self.names = source, sorted(ns)
        plan._run = run
        return False


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(st.sampled_from(ALL_SPECS), max_size=10, unique_by=lambda s: s.name),
    provenance=st.booleans(),
)
def test_the_typed_source_of_any_feature_set_is_valid_cython(
    tmp_path_factory: pytest.TempPathFactory, specs: list[Any], provenance: bool
) -> None:
    """The typed source of any feature set translates, not only ALL_SPECS's (whose kernel the
    tests above build and run): a local declared twice, or a declaration a shape of plan
    lacks (no group, one fraud group, provenance), fails the build, which leaves that feature
    set interpreted, said only in a warning. (A value of the wrong type for a C local, a None
    for a double, is a runtime error: the tests above run every aggregate's code.)"""
    from fds.features.kernel import module_source

    got = _Source()
    FeaturePlan(specs, grace=GRACE, provenance=provenance, compiler=got)  # type: ignore[arg-type]
    pyx = tmp_path_factory.mktemp("typed") / "k.pyx"
    pyx.write_text(module_source(got.source, got.names))
    done = subprocess.run(
        [sys.executable, "-m", "cython", "-3", str(pyx)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cdef double T" in got.source  # (typed: not the interpreted source)


@pytest.mark.parametrize("damage", ["head past the log", "negative head", "max position"])
def test_a_damaged_state_raises_in_the_kernel_and_reads_no_memory_off_its_arrays(
    compiler: Compiler, damage: str
) -> None:
    """The typed kernel reads the logs' memory: a position off its array (a damaged state)
    raises IndexError, as ``ts[h]`` does interpreted past the end, rather than read what lies
    outside the array (a review; a negative head, which the interpreted plan counts from the
    end, raises too)."""
    tx = {"tx_id": "t1", "ts": 1.7e9, "card_id": "a", "amount": 5.0, "merchant_id": "m1"}
    for p in (plan(compiler=compiler), plan()):
        p.compute(tx)
        st, cg = p.states[0]["a"], p._groups[0]
        if damage == "max position":  # (a max candidate: a position in the log)
            st[cg.i_mono[0]] = array("q", [10**6])
        else:
            st[cg.i_head[0]] = 99 if damage == "head past the log" else -1
        if p.compiled or damage != "negative head":
            with pytest.raises(IndexError, match="array index out of range"):
                p.compute({**tx, "tx_id": "t2", "ts": 1.7e9 + 10})


def test_fast_math_in_the_environment_does_not_reach_the_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CFLAGS with -ffast-math let gcc fold ``x == x`` (the test for a missing value) to
    true: a missing amount leaving a window was subtracted, and the mean was NaN (a review)."""
    monkeypatch.setenv("CFLAGS", "-O3 -ffast-math")
    c = Compiler(tmp_path)
    specs = [SimpleNamespace(name="m", entity="card_id", agg="mean", field="amount", window="1m")]
    FeaturePlan(specs, compiler=c)
    assert c.wait()
    fast = FeaturePlan(specs, compiler=c)
    assert fast.compiled
    got = [
        fast.compute({"tx_id": f"t{i}", "ts": 1.7e9 + 50 * i, "card_id": "a", "amount": x})
        for i, x in enumerate([float("nan"), 5.0, 10.0])  # (the first leaves at the third)
    ]
    assert got == [{"m": None}, {"m": 5.0}, {"m": 7.5}]


def test_a_relative_cache_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The build runs in a directory of its own: a relative cache named nothing there, and
    every build failed ("Cython's build exited with 1: no output", a review)."""
    monkeypatch.chdir(tmp_path)
    c = Compiler("kernels")
    specs = [SimpleNamespace(name="n", entity="card_id", agg="count", field=None, window="1m")]
    FeaturePlan(specs, compiler=c)
    assert c.wait()
    monkeypatch.chdir("/")
    plan = FeaturePlan(specs, compiler=c)
    assert plan.compiled and c.cache == tmp_path / "kernels"
    assert plan.compute({"tx_id": "t", "ts": 1.7e9, "card_id": "a"}) == {"n": 1}


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="x87 registers: x86 only"
)
def test_x87_registers_asked_for_in_the_environment_do_not_reach_the_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CFLAGS=-mfpmath=387 kept a kernel's doubles in 80-bit registers: the last bits of its
    means, sums and stds differed from the interpreted plan's (a QA pass: 141,966 decisions
    of 150,000), and the kernel, cached without its flags in its key, was loaded by every
    later run whatever its environment."""
    monkeypatch.setenv("CFLAGS", "-mfpmath=387 -O2")
    c = Compiler(tmp_path)
    specs = [
        SimpleNamespace(name=f"{agg}_1h", entity="card_id", agg=agg, field="amount", window="1h")
        for agg in ("sum", "mean", "std")
    ]
    FeaturePlan(specs, compiler=c)
    assert c.wait()
    fast, slow = FeaturePlan(specs, compiler=c), FeaturePlan(specs)
    assert fast.compiled
    rng = random.Random(7)
    for i in range(300):
        tx = {"tx_id": f"t{i}", "ts": 1.7e9 + 60 * i, "card_id": f"c{i % 3}"}
        tx["amount"] = round(rng.lognormvariate(4, 1.5), 2)
        assert repr(fast.compute(tx)) == repr(slow.compute(tx)), i
    monkeypatch.setenv("CFLAGS", "-O2")  # (another environment: another kernel, its own build)
    other = Compiler(tmp_path)
    assert not FeaturePlan(specs, compiler=other).compiled
    assert other.wait() and other.builds == 1  # (waited: no build left running after the test)


def test_an_engine_exports_whether_its_features_run_compiled(compiler: Compiler) -> None:
    """fds_features_compiled was documented and never exported (a QA pass)."""
    from fds.engine import Engine
    from fds.metrics import Metrics

    for c, want in ((None, 0.0), (compiler, 1.0)):
        m = Metrics()
        Engine(features=plan(compiler=c), metrics=m)
        assert m.registry.get_sample_value("fds_features_compiled") == want


def test_a_process_marks_the_kernels_it_loaded_in_use(compiler: Compiler) -> None:
    """A kernel is marked in use when loaded, and then daily by a thread of the process that
    loaded it: a service up for a month had its kernel removed as unused by another process's
    build (its next start built it again), and marks at each plan's sweep came 40 days apart
    for a plan of 90-day windows (a review)."""
    from fds.features import kernel

    assert plan(compiler=compiler).compiled  # (loaded in this process by the fixture)
    (path,) = compiler.cache.glob("fds_kernel_*.so")
    os.utime(path, (1e9, 1e9))
    assert [t.name for t in kernel._marker] == ["fds-kernel-in-use"] and kernel._marker[0].daemon
    kernel._MARK_NOW.set()  # (a day passed)
    deadline = time.monotonic() + 30
    while path.stat().st_mtime == 1e9 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.stat().st_mtime > time.time() - 600


def test_a_plan_switches_to_its_kernel_once_built_at_its_next_event(tmp_path: Path) -> None:
    c = Compiler(tmp_path)
    live, ref = plan(SMALL, compiler=c), plan(SMALL)
    txs = [
        {"tx_id": f"t{i}", "ts": 1e9 + 97.0 * i, "card_id": f"c{i % 7}", "amount": 1.5 * i}
        for i in range(400)
    ]
    before = [live.compute(tx) for tx in txs[:200]]  # interpreted while the kernel builds
    assert not live.compiled
    assert c.wait()
    after = [live.compute(tx) for tx in txs[200:]]
    assert live.compiled and c.builds == 1
    assert same(before + after, [ref.compute(tx) for tx in txs])
    assert list(tmp_path.glob("fds_kernel_*.so")), "the kernel is kept in the cache"


def test_another_process_binds_a_cached_kernel_at_once(tmp_path: Path) -> None:
    assert child(tmp_path, "2h") == "False True 1"  # built, then bound
    (kernel,) = tmp_path.glob("fds_kernel_*.so")
    os.utime(kernel, (1e9, 1e9))
    assert child(tmp_path, "2h") == "True True 0"  # found in the cache: no build
    assert kernel.stat().st_mtime > time.time() - 600  # (its use marked: not swept as unused)


def test_plans_of_one_source_reading_other_names_have_kernels_of_their_own(
    tmp_path: Path,
) -> None:
    """A feature-less plan's source is the same with provenance and without, and only the
    first reads ``_PROV``: one kernel for both failed with KeyError '_PROV' (a review)."""
    c = Compiler(tmp_path)
    for provenance in (True, False):
        FeaturePlan([], provenance=provenance, compiler=c)
        assert c.wait()
        p = FeaturePlan([], provenance=provenance, compiler=c)
        assert p.compiled and p.compute({"tx_id": "t", "ts": 1.0}) == {}
    assert c.builds == 2


def test_a_build_outlives_the_process_that_started_it(tmp_path: Path) -> None:
    """A replay that ends before its kernel is built leaves it built for the next one (the
    build is a child in its own session, not a thread of the process that exits)."""
    assert child(tmp_path, "5h", "exit") == ""
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("fds_kernel_*.so")) and time.monotonic() < deadline:
        time.sleep(0.2)
    while list(tmp_path.glob("build-*")) and time.monotonic() < deadline:
        time.sleep(0.2)  # (the child removes its build directory after the rename)
    assert list(tmp_path.glob("fds_kernel_*.so")) and not list(tmp_path.glob("build-*"))
    assert child(tmp_path, "5h") == "True True 0"


def test_a_failed_build_is_said_once_and_not_tried_again_within_the_hour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CC", "false")  # (the C compiler the build calls fails: a real failure)
    old, young = tmp_path / "build-old", tmp_path / "build-young"  # (left by killed builds)
    old.mkdir()
    young.mkdir()
    os.utime(old, (time.time() - 2 * BUILD_TIMEOUT_S - 60,) * 2)
    unused = tmp_path / "fds_kernel_0123456789abcdef0123.cpython-311-x86_64-linux-gnu.so"
    unused.write_bytes(b"a kernel no process loaded for a month")  # (the cache grew for ever)
    os.utime(unused, (time.time() - KEEP_S - 60,) * 2)
    c = Compiler(tmp_path)
    specs = [SimpleNamespace(name="n", entity="card_id", agg="count", field=None, window="3h")]
    first = plan(specs, compiler=c)
    with caplog.at_level(logging.WARNING, "fds.features.kernel"):
        assert c.wait()
    said = [r.getMessage() for r in caplog.records if r.name == "fds.features.kernel"]
    assert len(said) == 1 and "features stay interpreted" in said[0], said
    assert re.search(r"command '\S*false' failed", said[0]), said  # (the compiler's reason)
    assert "not tried again for 1 h (by any process): delete " in said[0], said
    (output,) = tmp_path.glob("fds_kernel_*.log")  # (the compiler's whole output: kept, and
    assert f"the compiler's whole output: {output}" in said[0], said  # named, a QA pass)
    assert "false" in output.read_text()
    tx = {"tx_id": "t", "ts": 1e9, "card_id": "c", "amount": 2.0}
    assert first.compute(tx) == {"n": 1} and not first.compiled
    assert not plan(specs, compiler=c).compiled and c.builds == 1  # (not tried again)
    assert not old.exists() and young.exists(), "only a build dir older than any build is swept"
    assert not unused.exists()
    (marker,) = tmp_path.glob("fds_kernel_*.failed")
    assert not list(tmp_path.glob("fds_kernel_*.so"))
    # Another process (a service restarted in a loop) does not try it again within the hour...
    again = Compiler(tmp_path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "fds.features.kernel"):
        assert not plan(specs, compiler=again).compiled
    assert again.builds == 0 and "its build failed 0 min ago" in caplog.text
    assert str(marker) in caplog.text and "command" in caplog.text  # (why, how to retry)
    assert caplog.text.count(str(output)) == 1
    assert not plan(specs, compiler=again).compiled and again.builds == 0
    assert caplog.text.count("its build failed") == 1  # (said once)
    # ... but after it, by a process that was held too (a plan made then: a rules reload); a
    # build that succeeds removes the marker.
    os.utime(marker, (time.time() - RETRY_AFTER_S - 1,) * 2)
    monkeypatch.delenv("CC")
    plan(specs, compiler=again)
    assert again.wait() and again.builds == 1 and plan(specs, compiler=again).compiled
    assert not marker.exists() and not output.exists()


def test_a_build_killed_at_its_timeout_names_no_earlier_output_and_wait_sees_it_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A review: an earlier failure's kept output was named as the output of a build killed
    at its timeout (which writes none); and ``wait`` returned before the failure was said."""
    import fds.features.kernel as kernel

    c = Compiler(tmp_path)
    specs = [SimpleNamespace(name="n_19h", entity="card_id", agg="count", field=None, window="19h")]
    key_of = {}
    mark = kernel._mark

    def slow_mark(marker: Path, why: str) -> bool:  # (the window between leaving _waiting
        time.sleep(0.3)  # and the warning, made wide)
        return mark(marker, why)

    monkeypatch.setattr(kernel, "_mark", slow_mark)
    monkeypatch.setattr(kernel, "BUILD_TIMEOUT_S", 0.2)  # (Cython alone takes seconds)
    start = Compiler._start

    def start_after_an_old_failure(self: Compiler, key: str, text: str) -> Any:
        key_of["key"] = key
        self.cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._log(key).write_text("gcc: error: an hour-old failure\n")
        return start(self, key, text)

    monkeypatch.setattr(Compiler, "_start", start_after_an_old_failure)
    with caplog.at_level(logging.WARNING, "fds.features.kernel"):
        FeaturePlan(specs, compiler=c)
        assert c.wait(60)
        said = [r.getMessage() for r in caplog.records if r.name == "fds.features.kernel"]
    assert len(said) == 1 and "the build took over 0 s" in said[0], said
    assert "the compiler's whole output" not in said[0], said
    assert not c._log(key_of["key"]).exists()


def test_a_build_held_by_another_failure_keeps_that_failure_s_output(tmp_path: Path) -> None:
    """A review: the held build's one line ("another build of it failed just now") replaced
    the other build's whole output, which both warnings named."""
    work = tmp_path / "build-k"
    work.mkdir()
    (work / "build.log").write_text("error: another build of it failed just now\n")
    output = tmp_path / "fds_kernel_k.log"
    output.write_text("gcc: error: the real output\n")
    marker = tmp_path / "fds_kernel_k.failed"
    marker.write_text("gcc: error: the real output\n")
    os.utime(marker, (time.time() + 60,) * 2)  # (failed after this build started)
    run = subprocess.run(  # (build_in nices its process: a child's)
        [sys.executable, "-c", "import sys; from fds.features.kernel import build_in; "
         "build_in(*sys.argv[1:])", str(work), str(tmp_path / "fds_kernel_k.so"), str(output)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1 and "another build of it failed just now" in run.stdout, run
    assert output.read_text() == "gcc: error: the real output\n"
    assert marker.read_text() == "gcc: error: the real output\n" and not work.exists()


def test_a_running_plan_takes_its_kernel_once_its_failure_is_past(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service whose kernel failed ran interpreted until its next start or rules reload; it
    asks again (every 10 min, here each 1,024 events): held while the marker holds, built once
    it is gone (deleted, as the warning says, or an hour old)."""
    monkeypatch.setattr("fds.features.plan._KERNEL_RETRY_S", 0.0)
    monkeypatch.setenv("CC", "false")
    c = Compiler(tmp_path)
    specs = [SimpleNamespace(name="n_6h", entity="card_id", agg="count", field=None, window="6h")]
    # (sweeps as rare as a million states make them: the retry does not wait for one, a review)
    live, ref = FeaturePlan(specs, compiler=c, sweep_min_events=10**6), plan(specs)
    assert c.wait() and not live.compiled
    txs = [{"tx_id": f"t{i}", "ts": 1e9 + 6.0 * i, "card_id": f"c{i % 3}"} for i in range(6400)]
    out = [live.compute(tx) for tx in txs[:1100]]
    assert c.builds == 1 and not live.compiled, "tried again while its marker holds"
    monkeypatch.delenv("CC")
    (marker,) = tmp_path.glob("fds_kernel_*.failed")
    marker.unlink()
    out += [live.compute(tx) for tx in txs[1100:2200]]
    out += [live.compute(tx) for tx in txs[2200 : 2200 + 3 * 1024]]  # (3 retries while the
    assert [len(w) for w in c._waiting.values()] == [1], c._waiting  # build runs: one switch
    # waits, a review)
    assert c.wait() and c.builds == 2
    out += [live.compute(tx) for tx in txs[2200 + 3 * 1024 :]]
    assert live.compiled
    assert same(out, [ref.compute(tx) for tx in txs])


def test_a_cache_removed_during_a_build_is_said_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A QA pass: the cache deleted while a kernel was built was said as "no output"."""
    import shutil

    cache = tmp_path / "cache"
    c = Compiler(cache)
    specs = [SimpleNamespace(name="n_8h", entity="card_id", agg="count", field=None, window="8h")]
    with caplog.at_level(logging.WARNING, "fds.features.kernel"):
        p = FeaturePlan(specs, compiler=c)
        while cache.exists():  # (the build may write into it meanwhile)
            shutil.rmtree(cache, ignore_errors=True)
        assert c.wait() and not p.compiled
    assert f"the cache {cache} (FDS_KERNEL_CACHE) was removed during it" in caplog.text
    assert p.compute({"tx_id": "t", "ts": 1e9, "card_id": "c"}) == {"n_8h": 1}
    # ... and a plan made later (a reload's, a running plan's retry) builds it again
    assert not FeaturePlan(specs, compiler=c).compiled and c.wait()
    assert FeaturePlan(specs, compiler=c).compiled and c.builds == 2


def test_a_build_failed_for_a_full_disk_is_said_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A QA pass: a build on a full disk was "exited with 1: no output", its log empty (it
    could not be written either), no word of the disk."""
    import fds.features.kernel as kernel

    monkeypatch.setattr(kernel, "_CHILD", "import sys; sys.exit(1)")  # (as one that wrote none)
    monkeypatch.setattr(kernel, "_free_bytes", lambda folder: 160 * 1024)
    cache = tmp_path / "cache"
    c = Compiler(cache)
    specs = [  # (a source no other test builds: one built in this process is not built again)
        SimpleNamespace(name="full_7h", entity="card_id", agg="count", field=None, window="7h")
    ]
    with caplog.at_level(logging.WARNING, "fds.features.kernel"):
        p = FeaturePlan(specs, compiler=c)
        assert c.wait() and not p.compiled
    assert f"exited with 1: the disk of {cache} is full (160 KB free; a build needs" in caplog.text


def test_a_build_that_cannot_write_its_source_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A QA pass: on a full disk each start left an empty build-* folder in the cache."""
    import errno

    import fds.features.kernel as kernel

    cache = tmp_path / "cache"
    c = Compiler(cache)
    real = Path.write_text

    def full(self: Path, *a: Any, **k: Any) -> int:
        if self.suffix == ".pyx":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError):
        c._start("k1", "x = 1\n")
    assert not list(cache.glob("build-*"))
    monkeypatch.undo()  # ... nor one whose child cannot be started (a review)
    monkeypatch.setattr(
        kernel.subprocess, "Popen", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EAGAIN))
    )
    with pytest.raises(OSError):
        c._start("k1", "x = 1\n")
    assert not list(cache.glob("build-*"))


def test_a_fifo_planted_as_the_marker_blocks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIFO under a marker's name hung the start (its read blocked, the compiler's lock
    held: a review): it is no marker, and a failure's marker replaces it."""
    monkeypatch.setenv("CC", "false")
    assert child(tmp_path, "19h") == "False False 1"  # (failed: its marker left)
    (marker,) = tmp_path.glob("fds_kernel_*.failed")
    marker.unlink()
    os.mkfifo(marker)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), "19h"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.stdout.strip() == "False False 1", done.stderr  # (built again, failed again)
    assert marker.is_file() and "false" in marker.read_text()


def test_a_build_that_fails_leaves_its_marker_even_if_its_process_is_gone(
    tmp_path: Path,
) -> None:
    """A service that dies sooner than its build fails (a restart loop): the child build
    leaves the marker itself, so the next start does not build again."""
    env = {**os.environ, "CC": "false"}
    subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), "9h", "exit"], env=env, check=True)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("*.failed")) and time.monotonic() < deadline:
        time.sleep(0.2)
    (marker,) = tmp_path.glob("fds_kernel_*.failed")
    assert "false" in marker.read_text()  # (the compiler's reason)
    assert child(tmp_path, "9h", env=env) == "False False 0"  # (held: no build)
    # (another compiler is another kernel: built at once, and held by nothing)
    assert child(tmp_path, "9h") == "False True 1"


MODES = {"writable by every user": 0o777, "writable by its group": 0o775}


@pytest.mark.parametrize("how", [*MODES, "another user's"])
def test_a_cache_others_can_write_is_not_loaded_from(tmp_path: Path, how: str) -> None:
    """fds loads code from its cache: one that is not private is refused (a planted kernel
    would run inside the engine), the plans interpreted, nothing built there. Its group too:
    a module is checked by its path and then loaded by it, and a group member could swap it
    between the two (a review)."""
    cache = tmp_path / "kernels"
    assert child(cache, "7h") == "False True 1"
    if how in MODES:
        cache.chmod(MODES[how])
    else:
        if os.geteuid() != 0:
            pytest.skip("changing a directory's owner needs root")
        os.chown(cache, 4242, -1)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(cache), "7h"], capture_output=True, text=True
    )
    assert done.stdout.strip() == "False False 0", done.stderr  # (not loaded, not built)
    assert "features stay interpreted" in done.stderr
    want = f"{how} (mode {MODES[how]:04o})" if how in MODES else "owned by user 4242"
    assert want in done.stderr, done.stderr
    cache.chmod(0o755)
    os.chown(cache, os.geteuid(), -1)
    assert child(cache, "7h") == "True True 0"
    (kernel,) = cache.glob("fds_kernel_*.so")
    kernel.chmod(0o664)  # (a private cache holding a kernel others could rewrite: replaced)
    assert child(cache, "7h") == "False True 1"
    assert not list(cache.glob("*.failed"))


def test_a_folder_put_in_the_cache_s_place_is_not_loaded_from(tmp_path: Path, caplog) -> None:
    """A security review: a writer of the cache's parent renamed the cache away during a
    build and put a folder of theirs in its place; the build (this user's child) wrote its
    module there, and the loader, which checked the kernel file alone, loaded their code. The
    folder the kernel is opened in is checked through the same descriptor now."""
    import shutil

    cache = tmp_path / "kernels"
    assert child(cache, "7h") == "False True 1"  # (a kernel built, this user's)
    (kernel,) = cache.glob("fds_kernel_*.so")
    key = kernel.name.removeprefix("fds_kernel_").split(".")[0]
    cache.rename(tmp_path / "kernels.victim")
    cache.mkdir()
    shutil.copy2(tmp_path / "kernels.victim" / kernel.name, cache / kernel.name)
    cache.chmod(0o777)  # (theirs: any user's, or another's where tests run as root)
    with caplog.at_level("WARNING", logger="fds.features.kernel"):
        assert Compiler(cache)._load(key) is None
    assert "writable by every user" in caplog.text and "fds loads no code from it" in caplog.text
    assert f"fds_kernel_{key}" not in sys.modules


def test_a_cache_under_a_folder_others_can_write_is_not_built_in(tmp_path: Path) -> None:
    """A review: a writer of a parent folder swapped a folder of theirs in for the cache for
    the seconds Cython read the source, and back: their code was built into this user's own
    cache and loaded. A cache with such a folder above it is refused (as ssh's StrictModes
    judges a home); a sticky one, as /tmp, is none."""
    open_to = tmp_path / "shared"
    open_to.mkdir()
    open_to.chmod(0o777)
    cache = open_to / "x" / "kernels"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(cache), "7h"], capture_output=True, text=True
    )
    assert done.stdout.strip() == "False False 0", done.stderr  # (not built, not loaded)
    assert f"is in {open_to}, writable by others (mode 0777)" in done.stderr, done.stderr
    assert not cache.exists()
    open_to.chmod(0o1777)  # (sticky: only an entry's owner renames it)
    assert child(cache, "7h") == "False True 1"


def test_a_cache_on_a_noexec_file_system_is_not_built_in(tmp_path: Path) -> None:
    """No kernel built there loads: each was built, refused by the loader, and built again
    every hour, each a 10-20 s build (a review). Said, and the plans stay interpreted."""
    cache = tmp_path / "noexec"
    cache.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "noexec,size=16m,mode=0700", "tmpfs", str(cache)],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        pytest.skip("mounting a noexec file system needs root (and the mount command)")
    try:
        for where in (cache, cache / "kernels"):  # (there, and made there when first needed)
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(where), "17h"], capture_output=True, text=True
            )
            assert done.stdout.strip() == "False False 0", done.stderr  # (no build)
            assert f"{where} is on a file system mounted noexec" in done.stderr, done.stderr
            assert "set FDS_KERNEL_CACHE to a directory on another" in done.stderr
            assert done.stderr.count("mounted noexec") == 1, done.stderr  # (two plans: once)
        assert not list(cache.iterdir()), "nothing is made there (the cache it would make)"
    finally:
        subprocess.run(["umount", str(cache)], check=False, timeout=30)


def test_a_kernel_built_under_a_permissive_umask_is_loaded(tmp_path: Path) -> None:
    """The linker's file mode follows the umask: under 000 the kernel was world-writable and
    refused by the very check that guards the cache (a review)."""
    cache = tmp_path / "kernels"
    assert child(cache, "11h", umask=0o000) == "False True 1"
    assert child(cache, "11h", umask=0o000) == "True True 0"


def test_a_cache_that_cannot_be_made_leaves_the_plan_interpreted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("")
    c = Compiler(tmp_path / "file" / "kernels")
    specs = [SimpleNamespace(name="n", entity="card_id", agg="count", field=None, window="6h")]
    with caplog.at_level(logging.WARNING, "fds.features.kernel"):
        assert not plan(specs, compiler=c).compiled
    assert "features stay interpreted" in caplog.text and "Not a directory" in caplog.text
    assert f"the cache {c.cache} (FDS_KERNEL_CACHE) cannot be used" in caplog.text
    assert c.wait(0) and not plan(specs, compiler=c).compiled  # (said once, not tried again)
    assert caplog.text.count("features stay interpreted") == 1


@pytest.mark.parametrize("damage", ["garbage", "cut short", "bit flipped", "earlier release"])
def test_a_damaged_cache_entry_is_removed_and_built_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    """A module cut short was loaded, and killed the process by SIGBUS at every start (exit
    135, nothing said: a QA pass); the checksum after its bytes tells it, and a bit flipped."""
    window = {"garbage": "4h", "cut short": "14h", "bit flipped": "15h", "earlier release": "16h"}
    w = window[damage]
    child(tmp_path, w)
    (kernel,) = tmp_path.glob("fds_kernel_*.so")
    data = kernel.read_bytes()
    kernel.write_bytes(
        b"not a shared object" if damage == "garbage"
        else data[:100_000] if damage == "cut short"
        else data[:5000] + bytes([data[5000] ^ 1]) + data[5001:] if damage == "bit flipped"
        else data[: data.rindex(b"\n#fds-sha256:")]  # (no checksum)
    )  # fmt: skip
    c = Compiler(tmp_path)
    specs = [SimpleNamespace(name=f"n_{w}", entity="card_id", agg="count", field=None, window=w)]
    with caplog.at_level(logging.WARNING, "fds.features.kernel"):  # (as the child made it)
        assert not FeaturePlan(specs, compiler=c).compiled
    assert "does not load" in caplog.text and "removed" in caplog.text
    assert c.wait() and FeaturePlan(specs, compiler=c).compiled and c.builds == 1


def test_a_damaged_entry_that_cannot_be_removed_leaves_the_plan_interpreted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A read-only cache holding a damaged entry: its removal failed with PermissionError,
    which stopped fds replay (exit 1, a QA pass)."""
    child(tmp_path, "17h")
    (kernel,) = tmp_path.glob("fds_kernel_*.so")
    kernel.write_bytes(b"not a shared object")
    unlink = Path.unlink

    def read_only(self: Path, missing_ok: bool = False) -> None:
        if self.parent == tmp_path:  # (root ignores a directory's mode, chattr +i needs ext4)
            raise PermissionError(1, "Operation not permitted", str(self))
        unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only)
    c = Compiler(tmp_path)
    specs = [SimpleNamespace(name="n_17h", entity="card_id", agg="count", field=None, window="17h")]
    with caplog.at_level(logging.WARNING, "fds.features.kernel"):
        p = FeaturePlan(specs, compiler=c)
    assert not p.compiled and "does not load" in caplog.text
    assert p.compute({"tx_id": "t", "ts": 1e9, "card_id": "c"}) == {"n_17h": 1}
    c.wait()
    # said once: no build started that could not replace it (a second warning, a QA pass)
    assert c.builds == 0 and len(caplog.records) == 1, caplog.text
    assert not FeaturePlan(specs, compiler=c).compiled and len(caplog.records) == 1


SWAP = """
import os, sys
from types import SimpleNamespace as S
import fds.features.kernel as k
from fds.features import FeaturePlan
cache, kernel, other = sys.argv[1:]
sealed = k._sealed

def swapped(data):  # (checked: now the file at its path is replaced by another's)
    os.replace(other, kernel)
    return sealed(data)

k._sealed = swapped
specs = [S(name="n_21h", entity="card_id", agg="count", field=None, window="21h")]
p = FeaturePlan(specs, compiler=k.Compiler(cache))
print(p.compiled, p.compute({"tx_id": "t", "ts": 1e9, "card_id": "c"}))
"""


def test_the_kernel_loaded_is_the_file_checked(tmp_path: Path) -> None:
    """A kernel was checked by its path, then loaded by it: a file put in its place between the
    two (by whoever can write the cache's parent directories) was loaded unchecked. Loaded
    through the open file it was checked in, the swap changes nothing."""
    cache, other = tmp_path / "cache", tmp_path / "other"
    child(cache, "21h")
    child(other, "22h")  # (another valid module: loaded by the path, it fails)
    (kernel,) = cache.glob("fds_kernel_*.so")
    (planted,) = other.glob("fds_kernel_*.so")
    done = subprocess.run(
        [sys.executable, "-c", SWAP, str(cache), str(kernel), str(planted)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True {'n_21h': 1}", done.stderr
    assert not planted.exists(), "the swap was made"


def test_a_process_loads_one_cached_kernel_after_another(tmp_path: Path) -> None:
    """The dynamic loader knows a module by the name it was opened by: a descriptor's number
    closed and used again for the next kernel named the first (which then did not load)."""
    child(tmp_path, "23h")
    child(tmp_path, "1d")
    script = (
        "import sys\n"
        "from types import SimpleNamespace as S\n"
        "from fds.features import FeaturePlan\n"
        "from fds.features.kernel import Compiler\n"
        "c = Compiler(sys.argv[1])\n"
        "print([FeaturePlan([S(name='n_' + w, entity='card_id', agg='count', field=None,"
        " window=w)], compiler=c).compiled for w in ('23h', '1d')], c.builds)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True
    )
    assert done.stdout.strip() == "[True, True] 0", done.stderr


def test_a_kernel_the_loader_cannot_map_leaves_no_descriptor_held(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each kernel loaded holds its descriptor for good (see the test above); one the dynamic
    loader refused outright (not mapped) held one too, for each failed load (a review)."""
    from fds.features import kernel
    from fds.models.registry import write_summed

    child(tmp_path, "10h")
    (built,) = tmp_path.glob("fds_kernel_*.so")
    built.write_bytes(b"\x7fELF but not a shared object")
    write_summed(built, built.read_bytes())  # (whole: the loader, not the checksum, refuses it)
    held = list(kernel._HELD)
    c = Compiler(tmp_path)
    specs = [SimpleNamespace(name="n_10h", entity="card_id", agg="count", field=None, window="10h")]
    with caplog.at_level(logging.WARNING, "fds.features.kernel"):
        assert not FeaturePlan(specs, compiler=c).compiled
    assert "does not load" in caplog.text and held == kernel._HELD
    assert c.wait()


def _waits_on_a_lock(cache: Path, timeout: float = 120.0) -> bool | None:
    """Does the build child of ``cache`` come to wait in the kernel's lock call (its
    ``/proc/PID/wchan``)? ``None`` where the system does not tell (no such file, or never a
    wait channel named)."""
    deadline, told = time.monotonic() + timeout, False
    while time.monotonic() < deadline:
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if str(cache / "build-").encode() not in (proc / "cmdline").read_bytes():
                    continue
                wchan = (proc / "wchan").read_text()
            except OSError:
                continue
            if "lock_inode_wait" in wchan or "flock" in wchan:  # (not a page lock's wait: a
                return True  # review)
            told = told or wchan not in ("", "0")
        time.sleep(0.05)
    return False if told else None


def test_one_build_of_a_kernel_runs_at_a_time(tmp_path: Path) -> None:
    """Short replays on an empty cache each ran gcc for the same kernel (a QA pass): a build
    waits for another's (a lock per kernel) and takes what it built."""
    import fcntl

    child(tmp_path, "18h")
    (kernel,) = tmp_path.glob("fds_kernel_*.so")
    (lock,) = tmp_path.glob("fds_kernel_*.lock")
    aside = tmp_path / "aside"
    kernel.rename(aside)  # (this process sees none and starts a build...)
    inode = aside.stat().st_ino
    with open(lock, "r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # (... while another process builds it)
        c = Compiler(tmp_path)
        specs = [
            SimpleNamespace(name="n_18h", entity="card_id", agg="count", field=None, window="18h")
        ]
        assert not FeaturePlan(specs, compiler=c).compiled
        waits = _waits_on_a_lock(tmp_path)  # (its build is blocked in flock, not just slow:
        if waits is None:  # c.wait(3) alone passed a build slower than 3 s, a review)
            assert not c.wait(3), "the build went on while another held the lock"
        else:
            assert waits, "the build did not wait for the lock"
        aside.rename(kernel)  # (the other build lands)
    assert c.wait() and FeaturePlan(specs, compiler=c).compiled
    assert kernel.stat().st_ino == inode, "built again instead of taking the other's"


def test_from_env_reads_the_mode_and_the_cache(tmp_path: Path) -> None:
    assert Compiler.from_env({"FDS_FEATURE_KERNEL": "off"}) is None
    c = Compiler.from_env({"FDS_KERNEL_CACHE": str(tmp_path / "k")})
    assert c is not None and c.cache == (tmp_path / "k").resolve()
    assert Compiler.from_env({"FDS_KERNEL_CACHE": str(tmp_path / "k")}) is c  # (shared)
    xdg = Compiler.from_env({"FDS_FEATURE_KERNEL": "compiled", "XDG_CACHE_HOME": str(tmp_path)})
    assert xdg is not None and xdg.cache == (tmp_path / "fds" / "kernels").resolve()
    with pytest.raises(ConfigError, match="FDS_FEATURE_KERNEL='fast' is not one of compiled, off"):
        Compiler.from_env({"FDS_FEATURE_KERNEL": "fast"})


def test_from_env_takes_no_cache_under_a_home_that_is_not_there(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An empty HOME made the cache /.cache, a HOME that does not exist had it created, both
    without a word (a QA pass): now features stay interpreted, and it is said."""
    gone = tmp_path / "gone"
    for env in ({"HOME": ""}, {"HOME": str(gone)}, {"HOME": "rel/dir", "XDG_CACHE_HOME": "x"}):
        caplog.clear()
        with caplog.at_level(logging.WARNING, "fds.features.kernel"):
            assert Compiler.from_env(env) is None
        assert f"no home directory (HOME={env['HOME']!r})" in caplog.text
        assert "set FDS_KERNEL_CACHE" in caplog.text
    assert not gone.exists()
    home = Compiler.from_env({"HOME": str(tmp_path), "XDG_CACHE_HOME": "relative"})
    assert home is not None and home.cache == (tmp_path / ".cache" / "fds" / "kernels").resolve()
