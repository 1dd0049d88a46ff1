"""Hot reload of a rules file, off the hot path, swapped atomically between two events.

:class:`ReloadingRuleset` is what the engine holds as its rule stage. A background thread polls
the file (size, mtime, inode and, when those change, a SHA-256 of the bytes); a changed file is
read once it has stayed unchanged for a poll (a file saved in place may be read half-written
otherwise, and a prefix of a rules file is often a valid rules file), then parsed, compiled and
its inline tests run on that thread. Only a ruleset that passes everything replaces
the current one, by a single reference assignment; the engine's thread reads that reference once
per event, so an event is evaluated entirely by one ruleset. A broken file is logged with its
``file:line``, counted, and the last good ruleset stays in force.

>>> import pathlib, tempfile
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "r.yaml").write_text('version: "1"\\nrules: []\\n')
>>> rules = ReloadingRuleset(d / "r.yaml", start=False, settle_seconds=0)
>>> rules.version
'1'
>>> _ = (d / "r.yaml").write_text('version: "2"\\nrules: [oops]\\n')
>>> rules.check_now(), rules.version, rules.counts
('rejected', '1', {'ok': 0, 'rejected': 1, 'unchanged': 0})
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from stat import S_ISFIFO
from typing import Any

import orjson

from fds import gcpolicy, yamlio
from fds.errors import ConfigError, describe
from fds.features.spec import DEFAULT_GRACE, grace_seconds
from fds.policy import Policy
from fds.rules.expr import condition_key
from fds.rules.ruleset import (
    PolicySpec,
    Ruleset,
    check_tests,
    load_ruleset_text,
    read_rules_file,
)
from fds.timeutil import format_ts, same_zone

__all__ = ["ReloadingRuleset", "deciding", "load_quietly"]

log = logging.getLogger("fds.rules")
# The watched file's stat while it cannot be read (deleted, moved away).
_GONE = (-1, -1, -1, -1, -1)
_Key = tuple[int, int, int, int, int]
#: How long after it was loaded the rules in force may turn out to be a part of their file,
#: caught while it was written in place (see ReloadingRuleset._caught_mid_write).
MID_WRITE_S = 10.0


def _key(st: os.stat_result) -> _Key:
    """What says a file changed: size and mtime; the inode for a replacement made with the
    old file's size and mtime (``cp -p``, ``rsync -t`` and ``tar x`` keep the mtime); the
    ctime for a chmod that makes an unreadable file readable (rejected once, it stayed so)."""
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, st.st_ctime_ns)


class ReloadingRuleset:
    """A rule stage that follows its file. Implements the engine's ``RuleStage``.

    Its :attr:`policy` is the matching ``PolicyStage``: the thresholds of a reloaded file apply
    from the first event the new rules decide. Feature declarations cannot change by reload
    (their state is built at start): such a file is rejected with a message to restart.

    Parameters
    ----------
    path
        The rules file. It must load (and its inline tests pass) at construction time, unless
        a copy was kept (``keep``).
    poll_seconds
        How often the watcher thread looks at the file's size and mtime.
    settle_seconds
        How long a changed file must stay unchanged before it is read (default: one poll).
    start
        Start the watcher thread now (tests may drive :meth:`check_now` instead).
    on_result
        Called with ``("ok" | "rejected", ruleset_or_None, error_or_None)`` after each reload
        attempt.
    metrics
        An :class:`fds.metrics.Metrics` (or None): ``ruleset_reload(result)`` after each attempt
        and ``ruleset_info(version)`` for the ruleset in force.
    keep
        A file to keep a copy of the last good rules in (``fds run``: in its state dir). A
        file that does not load at start is then an error line, and the copy decides until
        the file is fixed (a file rejected by a hot reload, still on disk, refused the next
        restart: an instance rescheduled decided nothing, a QA pass).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        poll_seconds: float = 1.0,  # an analyst's save shows up within two seconds
        settle_seconds: float | None = None,
        start: bool = True,
        on_result: Callable[[str, Ruleset | None, Exception | None], None] | None = None,
        metrics: Any = None,
        keep: str | Path | None = None,
    ) -> None:
        self.path = Path(path)
        self.keep = Path(keep) if keep is not None else None
        self.poll_seconds = poll_seconds
        self.settle_seconds = poll_seconds if settle_seconds is None else settle_seconds
        self._seen: tuple[_Key, float] | None = None  # a change, since when
        self.on_result = on_result
        self.counts = {"ok": 0, "rejected": 0, "unchanged": 0}
        self.last_error: Exception | None = None
        self._stat: _Key | None = None
        self._digest: bytes | None = None
        try:
            text, self._stat, self._digest = self._read()
            self.current: Ruleset = load_ruleset_text(text, str(self.path), run_tests=True)
        except ConfigError as e:
            self._from_kept(e)
        # kept by the watcher's first look (fds run holds its state dir's lock by then: a
        # second instance refused there wrote over the first one's copy, a review)
        self._to_keep: str | None = text if self.last_error is None else None
        try:  # a pipe given as the rules file (`<(...)`) is read once, not watched (a review:
            self._pipe = S_ISFIFO(os.stat(self.path).st_mode)  # its write moved its mtime, and
        except OSError:  # it was then refused as "now a pipe")
            self._pipe = False
        if self._pipe:
            log.info('rules file is a pipe: read once, not watched path="%s"', self.path)
        # the digest of the file the rules in force came from, and its text (a file caught
        # mid-write: see _check_version) and when it was loaded
        self._in_force = self._digest if self.last_error is None else None
        self._text = text if self.last_error is None else ""
        self._in_force_key = self._stat if self.last_error is None else None
        self._loaded_at = time.monotonic()
        self.version: str | None = self.current.version
        #: The policy stage of the ruleset in force (its thresholds follow reloads).
        self.policy = Policy.from_spec(self.current.policy)
        self.applied = self.current  # the ruleset of the last evaluate (the hot path's)
        # called with the ruleset swapped in, at its first evaluate (the hot path's thread):
        # what follows a reload besides the policy (the feature plan's max_entities)
        self.on_swap: list[Callable[[Ruleset], None]] = []
        # what each version served decided with, by digest (a version comes back only with its
        # own rules; kept in the engine's checkpoint, so also across restarts). Not bounded on
        # purpose: a version forgotten could come back with other rules, and decisions that
        # carry it could no longer be told apart. It grows by one entry (~200 B) per reload
        # that brings a new version, a person's edit: thousands in years.
        self._served: dict[str | None, str] = {self.current.version: deciding(self.current)}
        self._retired: list[Ruleset] = []  # replaced on the hot path since the last drain
        # those and the one in force, in one reference: what a scrape adds up (it read the one
        # in force only, and a counter went down by a reload's undrained counts: a QA pass)
        self._undrained: tuple[Ruleset, ...] = (self.applied,)
        self.metrics = metrics
        if metrics is not None:
            metrics.ruleset_info(self.current.version)
            metrics.ruleset_file_ok(self.last_error is None)
            if self.last_error is not None:  # (the reload alert fires on a restart too)
                metrics.ruleset_reload("rejected")
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one reload at a time (thread vs check_now)
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    # -- the hot path ---------------------------------------------------------------------
    takes_quiet = True  # (see Ruleset.evaluate)

    def evaluate(
        self,
        tx: Mapping[str, Any],
        features: Mapping[str, Any] | None = None,
        quiet: Collection[str] = frozenset(),
    ) -> list[dict[str, Any]]:
        """Hits of the ruleset in force; ``version`` then names the ruleset that produced them."""
        rs = self.current  # read the reference once: one event, one ruleset
        if rs is not self.applied:  # first event after a swap: thresholds follow, same thread
            self.policy.configure(rs.policy)
            for follow in self.on_swap:
                follow(rs)
            self._retired.append(self.applied)  # its skip counts are still to be drained
            self.applied = rs
            self._undrained = (*self._retired, rs)
        self.version = rs.version
        return rs.evaluate(tx, features, quiet)

    @property
    def missing_counts(self) -> dict[str, int]:
        """The counts not drained yet of the ruleset in force and of those it replaced since
        the last drain (:meth:`Metrics.watch_ruleset`)."""
        return _summed(rs.missing_counts for rs in self._undrained)

    @property
    def error_counts(self) -> dict[str, int]:
        return _summed(rs.error_counts for rs in self._undrained)

    @property
    def evaluated(self) -> tuple[Any, ...]:
        """The rules of the ruleset in force that are evaluated (not paused)."""
        return self.applied.evaluated

    @property
    def coming(self) -> tuple[Any, ...]:
        """The evaluated rules of a ruleset loaded and not yet applied (the next event applies
        it): exported at 0 at once, so increase() sees their first hits (their series appeared
        only with the next event, at its count: a QA pass)."""
        current = self.current
        return () if current is self.applied else current.evaluated

    def hold_counts(self) -> Callable[[], None]:
        """:meth:`Ruleset.hold_counts` of the ruleset in force; a ruleset that the held record
        swaps in (a reload landed just before it) forgets what that one record counted."""
        held = self.applied
        restore = held.hold_counts()

        def put_back() -> None:
            restore()
            if self.applied is not held:  # it has counted this record alone
                self.applied.drain_counts()

        return put_back

    def drain_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """:meth:`Ruleset.drain_counts` over the ruleset in force and those it replaced since
        the last call (a reload does not lose the skips counted before it). Deciding thread."""
        retired, self._retired = self._retired, []
        self._undrained = (self.applied,)  # (under the metrics' lock: see drain_rule_counts)
        drained = [rs.drain_counts() for rs in (*retired, self.applied)]
        return _summed(m for m, _ in drained), _summed(e for _, e in drained)

    # -- the watcher ----------------------------------------------------------------------
    def _read(self) -> tuple[str, _Key, bytes]:
        try:  # (before the read: a write after it is a change seen at the next poll)
            st = os.stat(self.path)
        except OSError as e:
            read_rules_file(self.path, "--rules")  # says why, as for every rules file
            raise ConfigError(  # (readable after all, gone a moment ago: no raw OSError)
                f"cannot read the rules file: {e.strerror}; check the path (--rules)",
                where=str(self.path),
            ) from None
        data = read_rules_file(self.path, "--rules")
        return yamlio.decode(data, str(self.path)), _key(st), hashlib.sha256(data).digest()

    def check_now(self) -> str:
        """Look at the file once; reload if it changed. Returns ok | rejected | unchanged."""
        if self._to_keep is not None:
            self._keep(self._to_keep)
            self._to_keep = None
        if self._pipe:
            self.counts["unchanged"] += 1
            return "unchanged"
        with self._lock:
            try:
                st = os.stat(self.path)
            except OSError as e:
                if self._stat == _GONE:  # said once, like a broken file that stays unchanged
                    self.counts["unchanged"] += 1  # (it was rejected again every second)
                    return "unchanged"
                self._stat = _GONE
                return self._failed(
                    ConfigError(
                        f"cannot read: {e.strerror}; restore the file (or save it again): the "
                        "rules in force stay until then",
                        where=str(self.path),
                    )
                )
            key = _key(st)
            if key == self._stat or not self._settled(key):
                self.counts["unchanged"] += 1
                return "unchanged"
            if S_ISFIFO(st.st_mode):  # (its read waited 30 s for a writer, and the watcher with
                self._stat = key  # it: a good file put back was seen 49 s late, a QA pass)
                return self._failed(
                    ConfigError(
                        "the rules file is now a pipe: a watched rules file is a regular file; "
                        "put the file back: the rules in force stay until then",
                        where=str(self.path),
                    )
                )
            try:
                text, stat, digest = self._read()
                after = os.stat(self.path)
            except (OSError, ConfigError) as e:
                self._stat = key  # said once, until the file changes again
                return self._failed(e)
            if _key(after) != stat:  # written to while read (saved in place, not renamed):
                self.counts["unchanged"] += 1  # read it again next time
                return "unchanged"
            self._stat = stat
            if digest == self._digest:
                # deleted or unreadable, then back as the rules in force were: nothing said
                # it, the error stood (a QA pass); a rejected file back as it was stays so
                if self.last_error is not None and digest == self._in_force:
                    self.last_error = None
                    log.info(
                        'rules file readable again, unchanged path="%s" version="%s"',
                        self.path, self.current.version,
                    )  # fmt: skip
                    if self.metrics is not None:
                        self.metrics.ruleset_file_ok(True)
                self.counts["unchanged"] += 1
                return "unchanged"
            self._digest = digest
            try:
                new = load_quietly(text, str(self.path))
                # the zone and features first: a test may fail because the zone moved `hour`
                # (a change of zone was told as a failed inline test, a QA pass)
                self._check_features(new)
                check_tests(new)
                self._check_version(new, text, stat)
                decides = deciding(new)  # (before the swap: it raised after it, the rules in
                # force unsaid and the metrics stale, for a cap of 2**64, a QA pass)
            except ConfigError as e:
                return self._failed(e)
            except Exception as e:  # a loader bug must not end the watcher: reject and say so
                why = f"could not be loaded ({describe(e)})"
                return self._failed(ConfigError(why, where=str(self.path)))
            self.current = new  # the atomic swap: one reference assignment
            self._in_force, self._text, self._loaded_at = digest, text, time.monotonic()
            self._in_force_key = stat
            self._served[new.version] = decides
            self.last_error = None
            self.counts["ok"] += 1
            log.info('rules reloaded path="%s" version="%s"', self.path, new.version)
            self._keep(text)
            if self.metrics is not None:
                self.metrics.ruleset_reload("ok")
                self.metrics.ruleset_info(new.version)
                self.metrics.ruleset_file_ok(True)
            if self.on_result is not None:
                self.on_result("ok", new, None)
            return "ok"

    def _settled(self, key: _Key) -> bool:
        """Whether the file has looked like ``key`` for ``settle_seconds`` (a writer still at
        it changes its size or mtime in between)."""
        if self.settle_seconds <= 0:
            return True
        now = time.monotonic()
        if self._seen is None or self._seen[0] != key:
            self._seen = (key, now)
            return False
        return now - self._seen[1] >= self.settle_seconds

    def _check_version(self, new: Ruleset, text: str, key: _Key) -> None:
        # Decisions record the ruleset that made them (ruleset_version): two different rulesets
        # under one version made that record ambiguous (a review). An edit of comments, layout
        # or inline tests only leaves the rules as they were and needs no new version. A
        # version served earlier comes back only with its rules (v1 -> v2 -> other rules named
        # v1 was taken: a QA pass).
        served = self._served.get(new.version)
        if served is not None and deciding(new) != served:
            again = new.version != self.current.version
            if not again and self._caught_mid_write(text, key):
                log.warning(
                    'rules file %s version="%s" was read while being written (%d of %d '
                    "characters, %.0f s ago): its whole text now decides under the same "
                    "version; write rules files by a rename, so that no part of one is read",
                    self.path, new.version, len(self._text), len(text),
                    time.monotonic() - self._loaded_at,
                )  # fmt: skip
                return
            changed = "" if again else f": {what_changed(self.current, new)} changed"
            raise ConfigError(
                f"the rules changed but the version did not ({new.version!r}"
                + (", which named other rules earlier" if again else changed)
                + "): give the file a new version, which decisions record as ruleset_version",
                where=new.where("version"),
            )

    def _caught_mid_write(self, text: str, key: _Key) -> bool:
        """Were the rules in force read from a part of this file, while it was written in
        place: the same file (inode), its text then a beginning of this one, read at most
        MID_WRITE_S ago, cut inside a line, short of a section (the policy) the whole file
        has, or inside its last rule or section (:func:`_continues`)? (The first 6 of 14
        rules, without the policy, decided under the new version, and the whole file was then
        refused for that version for good: a QA pass.) An edit that adds rules at the end
        needs a new version, as any."""
        was, part = self._in_force_key, self._text
        return (
            was is not None and was[2:4] == key[2:4] and len(text) > len(part)
            and text.startswith(part) and time.monotonic() - self._loaded_at <= MID_WRITE_S
            # cut inside a line, short of a section the whole file has (its policy), or inside
            # the last rule or section (a rule's `state: shadow` or the policy's budget came
            # seconds later: the part decided, the whole file was refused for good, a QA
            # pass): not an edit that added rules at the end (a new version: a review)
            and (
                _cut_in_a_line(part, was[0])
                or bool(_sections(text) - _sections(part))
                or _continues(part, text[len(part) :])
            )
        )  # fmt: skip

    def _keep(self, text: str) -> None:
        """Keep ``text``, the rules now in force, in :attr:`keep` (written atomically; a
        failure is said, deciding goes on)."""
        if self.keep is None:
            return
        from fds.models.registry import write_atomic

        copied = False
        try:
            self.keep.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.keep, text.encode())
            copied = True
            write_atomic(self._source_of_kept, _source(self.path).encode())
        except OSError as e:  # (it said "will not start", and a restart decided with the older
            after = "will not start"  # copy: a QA pass on a full disk)
            if self._kept_usable():
                then = "?"
                with contextlib.suppress(OSError):
                    then = format_ts(self.keep.stat().st_mtime)
                after = (
                    "decides with them"
                    if copied
                    else f"decides with the older rules of the copy kept there at {then}"
                )
            log.warning(
                "cannot keep a copy of the rules in force in %s (%s): a restart with a "
                "rules file that does not load %s", self.keep, describe(e), after,
            )  # fmt: skip

    def _kept_usable(self) -> bool:
        """Is a copy kept of this very rules file (what a start that cannot load it decides
        with, :meth:`_from_kept`)?"""
        try:
            return (
                self.keep is not None
                and self.keep.is_file()
                and self._source_of_kept.read_text() == _source(self.path)
            )
        except OSError:
            return False

    @property
    def _source_of_kept(self) -> Path:
        """Beside :attr:`keep`: the rules file its copy is of."""
        assert self.keep is not None
        return self.keep.with_name(self.keep.name + ".source")

    def _from_kept(self, error: ConfigError) -> None:
        """The rules file does not load at start: decide with the copy kept of the last good
        rules, if any (else ``error`` is raised); said as an error line."""
        kept = self.keep
        try:  # (only for a file there that does not load, and a copy of that very file: a
            # missing or mistyped --rules, or another file, started on the old copy, a review)
            if kept is None or not self.path.is_file() or not self._kept_usable():
                raise error
            text = read_rules_file(kept, "--rules")
            self.current = load_ruleset_text(yamlio.decode(text, str(kept)), str(kept))
        except (OSError, ConfigError):
            raise error from None
        self.last_error = error.with_traceback(None)
        with contextlib.suppress(OSError):  # (said once: reloaded when the file changes)
            self._stat = _key(os.stat(self.path))
            self._digest = hashlib.sha256(self.path.read_bytes()).digest()
        if self._stat is None:
            self._stat = _GONE
        when = "?"
        with contextlib.suppress(OSError):  # (its age: a release before the copy does not
            when = format_ts(kept.stat().st_mtime)  # update it, a downgrade's rules are newer)
        log.error(
            'rules file %s cannot be used (%s): deciding with the last good rules, version="%s", '
            "kept in %s at %s; fix the file: it is loaded once it is good",
            self.path, error, self.current.version, kept, when,
        )  # fmt: skip

    def _check_features(self, new: Ruleset) -> None:
        # Feature state is built from the declarations at start; a reload swaps rules and policy
        # only. A changed declaration would leave rules reading values nobody computes; another
        # timezone would move `hour` and `is_night` while calendar-day windows keep resetting at
        # the old midnight; another grace would not be the one the plan and its checkpoints
        # keep (its log is trimmed to the old grace: a larger one could not be honoured).
        old_tz, new_tz = self.current.spec.timezone, new.spec.timezone
        if not same_zone(new_tz, old_tz):  # (UTC -> Etc/UTC was refused: a QA pass)
            raise ConfigError(
                f"timezone changed ({old_tz} -> {new_tz}): calendar-day windows were built in "
                "the old one; restart the engine to apply it",
                where=new.where("timezone"),
            )
        old_spec, new_spec = self.current.spec, new.spec
        if new_spec.grace_seconds != old_spec.grace_seconds:  # (`5m` and `300s` are one grace)
            raise ConfigError(
                f"grace changed ({old_spec.grace} -> {new_spec.grace}): the feature state folds "
                "late events in with the old one, and its checkpoints are bound to it; restart "
                "the engine to apply it",
                where=new.where("grace"),
            )
        old = {f.name: f for f in self.current.features}
        now = {f.name: f for f in new.features}
        if now != old:  # (in another order they are the same features: snapshots keep theirs)
            changed = sorted({n for n, f in now.items() if old.get(n) != f} | (set(old) - set(now)))
            at = [i for i, f in enumerate(new.features) if old.get(f.name) != f]
            raise ConfigError(  # at the first changed or added one, else (removed) at features:
                f"feature declarations changed ({', '.join(changed)}): hot reload swaps rules and "
                "policy only; restart the engine to apply new features",
                where=new.where("features", *at[:1]),
            )

    def served(self) -> dict[str | None, str]:
        """Each version served and the digest of what it decided with (for a checkpoint)."""
        return dict(self._served)

    def remember_served(self, saved: Mapping[str | None, str]) -> None:
        """Take the versions a checkpoint's process served: a hot reload checks against them
        too, and a file that names other rules under a version served before the restart is
        logged as an error (decisions carry the version: an audit could not tell the two
        apart; the engine goes on deciding with the file as it is: a QA pass)."""
        now = self.current.version
        for version, digest in saved.items():
            if version == now and digest != self._served[now]:
                log.error(
                    'rules file %s version="%s" names other rules than the same version did '
                    "before the restart: decisions record ruleset_version, so the two cannot "
                    "be told apart; give the file a new version",
                    self.path, now,
                )  # fmt: skip
            self._served.setdefault(version, digest)

    def _failed(self, e: Exception) -> str:
        # (kept until the next good file, without the frames it was raised through: they held
        # the rejected file's whole YAML tree alive, a review)
        self.last_error = e = e.with_traceback(None)
        self.counts["rejected"] += 1
        log.error('rules reload rejected (the rules in force kept): %s kept_version="%s"', e,
                  self.current.version)  # fmt: skip
        if self.metrics is not None:
            self.metrics.ruleset_reload("rejected")
            self.metrics.ruleset_file_ok(False)
        if self.on_result is not None:
            self.on_result("rejected", None, e)
        return "rejected"

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.check_now()
            except Exception:  # never let the watcher die: the engine must keep deciding
                log.exception('rules watcher error path="%s"', self.path)

    def start(self) -> None:
        """Start the watcher thread (daemon)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fds-rules-watch", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the watcher thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ReloadingRuleset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sections(text: str) -> set[str]:
    """The top-level keys of a rules file's text."""
    return set(re.findall(r"^([A-Za-z_][\w-]*)[ \t]*:", text, re.MULTILINE))


#: A writer's buffer (8 KiB in Python and C stdio, 128 KiB in cp) is a multiple of this: a
#: part read while the file was written ends at such a size.
WRITE_BLOCK = 1024


def _cut_in_a_line(part: str, size: int) -> bool:
    """Was ``part`` (``size`` bytes) cut inside a line by a writer's buffer: no line break at
    its end, and a size a whole number of :data:`WRITE_BLOCK`? (A whole file saved without a
    final line break, as editors do, was taken for one, and an edit of its last line under the
    same version decided without a word: a review.)

    >>> _cut_in_a_line("review_at: 0.5", 14), _cut_in_a_line("x" * 8192, 8192)
    (False, True)
    """
    return not part.endswith("\n") and size > 0 and size % WRITE_BLOCK == 0


def _continues(part: str, added: str) -> bool:
    r"""Does ``added`` (what followed ``part`` in the file) go on with the entry ``part`` ended
    in: its first line indented deeper than the last list item or top-level key of ``part``?
    (``    state: shadow`` after a rule's ``score:``; ``  alert_budget_per_day:`` after the
    policy's ``review_at:``; not ``  - id: ...``, a rule of its own.)

    >>> _continues("rules:\n  - id: a\n    score: 1\n", "    state: shadow\n")
    True
    >>> _continues("rules:\n  - id: a\n    score: 1\n", "  - id: b\n")
    False
    """
    first = next((ln for ln in added.splitlines() if _significant(ln)), None)
    if first is None:
        return False
    for line in reversed(part.splitlines()):
        if _significant(line) and (line.lstrip().startswith("- ") or not line[0].isspace()):
            return _indent(first) > _indent(line)
    return False


def _significant(line: str) -> bool:
    """A line that is not blank nor a comment."""
    return bool(line.strip()) and not line.lstrip().startswith("#")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _source(path: Path) -> str:
    """A rules file as its kept copy names it (absolute)."""
    return str(path.absolute())


def load_quietly(text: str, path: str) -> Ruleset:
    """:func:`load_ruleset_text` as a hot reload runs it, beside the deciding thread: the
    collector paused while the file's YAML tree is alive (its full passes over that tree, a
    million objects for 8,000 rules, held every thread up to 0.5 s: benchmarks/results/
    rules.md); what the load keeps is visited once, after it."""
    with gcpolicy.collector_paused():
        return load_ruleset_text(text, path)


def deciding(rs: Ruleset) -> str:
    """What of a ruleset decides (:func:`_deciding_spec`), as a digest."""
    spec = _deciding_spec(rs)
    return hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).hexdigest()


def what_changed(old: Ruleset, new: Ruleset) -> str:
    """What decides otherwise in ``new`` than in ``old``: the parts that differ, a rule by
    its id (a same-version edit of the cap alone was told "the rules changed": a QA pass)."""
    a, b = _deciding_spec(old), _deciding_spec(new)
    parts = [k for k in sorted(a.keys() | b.keys()) if k != "rules" and a.get(k) != b.get(k)]
    rules_a = {r["id"]: r for r in a["rules"]}
    rules_b = {r["id"]: r for r in b["rules"]}
    ids = sorted(i for i in rules_a.keys() | rules_b.keys() if rules_a.get(i) != rules_b.get(i))
    if not ids and a["rules"] != b["rules"]:
        parts.append("the rules' order")
    return ", ".join([*parts, *(f"rule {i}" for i in ids[:5])] + (["..."] if ids[5:] else []))


def _deciding_spec(rs: Ruleset) -> dict[str, Any]:
    """What of a ruleset decides: its spec without the rules' inline tests, a
    condition as its syntax tree and the features by name and window length (``a >  5`` or
    ``(a > 5)`` for
    ``a > 5``, or the features in another order, were refused as other rules under the same
    version, where the README promises that an edit of layout alone needs none). An earlier
    release's digests, of its condition's text, are kept in its checkpoints under another key
    (see :meth:`fds.engine.Engine.state_dict`): never compared with these."""
    spec = rs.spec.model_dump(mode="json", exclude={"rules": {"__all__": {"tests"}}})
    for rule in spec["rules"]:
        rule["when"] = condition_key(rule["when"])
    # a grace is its length, and the default's is left out: the digests of files without
    # `grace`, kept in checkpoints, are those of the releases before it
    grace = rs.spec.grace_seconds
    del spec["grace"]
    if grace != grace_seconds(DEFAULT_GRACE):
        spec["grace"] = grace
    # keys added since, at their defaults, are left out alike (a rule's `breaker: true`, the
    # policy's `breaker_multiple: 3.0`)
    for rule in spec["rules"]:
        if rule["breaker"]:
            del rule["breaker"]
    if spec["policy"]["breaker_multiple"] == PolicySpec.model_fields["breaker_multiple"].default:
        del spec["policy"]["breaker_multiple"]
    if not spec["max_entities"]:
        del spec["max_entities"]
    spec["features"] = sorted(spec["features"], key=lambda f: f["name"])
    declared_by_name = sorted(rs.features, key=lambda f: f.name)
    for f, declared in zip(spec["features"], declared_by_name, strict=True):
        # a window is its length (`2h` and `120m` were other rules under one version: a review)
        f["window"] = declared.window_seconds or declared.window
    return spec


def _summed(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    """Per-rule counts of several rulesets added up."""
    total: dict[str, int] = {}
    for part in counts:
        for rule, n in part.items():
            total[rule] = total.get(rule, 0) + n
    return total
