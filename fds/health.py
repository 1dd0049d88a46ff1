"""Health checks for a supervisor: ``/healthz`` (liveness) and ``/readyz`` (readiness).

Served on the metrics port, beside ``/metrics`` (:func:`fds.metrics.serve`). Pure logic with
an injectable clock, so what each endpoint answers is tested without sleeping.

* **liveness**: the service's main loop stores the monotonic clock in :attr:`Health.beat` as it
  goes (once per poll, not per record: one attribute store). ``/healthz`` answers 200 while
  the newest beat is at most ``stale_after_s`` old, else 503 with what is stale and since
  when: the process is stuck, and restarting it is the cure.
* **readiness**: ``ready()``, a callback of the service, says whether it decides now and, when
  not, why (starting, restoring, waiting for the broker, draining). ``/readyz`` answers 200
  only when the process is also live.

Examples
--------
>>> now = [100.0]
>>> h = Health(stale_after_s=120, ready=lambda: (False, "joining the group"),
...            clock=lambda: now[0], wall=lambda: 1_767_225_600.0 + now[0])
>>> h.liveness()[0], h.readiness()
(200, (503, {'status': 'not ready', 'reason': 'joining the group'}))
>>> now[0] += 121                      # no beat for 121 s
>>> code, body = h.liveness()
>>> code, body["status"], body["stale_for_s"], body["last_progress"]
(503, 'stuck', 121.0, '2026-01-01T00:01:40Z')
>>> h.beat = now[0]                    # what the loop does
>>> h.liveness()[0]
200
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

__all__ = ["LIVENESS_MARGIN_S", "Beating", "Health", "health_app", "stack_of", "stale_after"]

log = logging.getLogger(__name__)

#: How often :meth:`Health.watching` looks at the beats.
WATCH_EVERY_S = 5.0

#: Beyond ``broker_timeout_s`` (the longest a call to the broker is waited for without a beat:
#: fds exits by itself after it), the time CPU-bound work may hold the loop without a beat: a
#: checkpoint written on the loop (5 s at 200,000 cards, benchmarks/results/checkpoint.md), a
#: snapshot unpickled at a takeover (2 s at 100,000 cards x 10 days), a batch of 5,000 records.
#: A minute leaves room for ten times those.
LIVENESS_MARGIN_S = 60.0


def stale_after(broker_timeout_s: float) -> float:
    """How long a service may go without a beat before ``/healthz`` calls it stuck.

    >>> stale_after(60.0)
    120.0
    """
    return broker_timeout_s + LIVENESS_MARGIN_S


class Health:
    """What ``/healthz`` and ``/readyz`` answer.

    Parameters
    ----------
    stale_after_s
        Longest time without a beat that is still progress (:func:`stale_after`).
    ready
        Called at each ``/readyz`` request (from the HTTP server's thread): ``(True, what it
        does)`` when the service decides, ``(False, why not)`` otherwise. ``None``: the
        service has no readiness check, and ``/readyz`` is not served.
    clock, wall
        Monotonic clock of the beats, and the wall clock their time is told in.
    """

    def __init__(
        self,
        *,
        stale_after_s: float,
        ready: Callable[[], tuple[bool, str]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.stale_after_s = stale_after_s
        self.ready = ready
        self._clock = clock
        self._wall = wall
        self._beat = clock()
        #: The newest stall's last beat before it and first beat after it (``watching`` says
        #: how long it lasted: from the newest beat instead, it said up to a pass more).
        self.stall = (self._beat, self._beat)

    @property
    def beat(self) -> float:
        """``clock()`` at the main loop's newest sign of progress (a start counts as one);
        a loop sets it (``health.beat = now``: a stall is recorded as with :meth:`tick`; the
        Kafka loops set it and said a stall up to a watcher's pass longer than it lasted)."""
        return self._beat

    @beat.setter
    def beat(self, now: float) -> None:
        if now - self._beat > self.stale_after_s:
            self.stall = (self._beat, now)
        self._beat = now

    def tick(self) -> None:
        """A sign of progress now."""
        self.beat = self._clock()

    def liveness(self) -> tuple[int, dict[str, Any]]:
        """``(200, ...)`` while the newest beat is recent, else ``(503, ...)`` saying since
        when the loop has made no progress."""
        age = self._clock() - self.beat
        if age <= self.stale_after_s:  # (with a reason as every other answer: a QA pass)
            return 200, {"status": "ok", "reason": f"the main loop made progress {age:.1f} s ago"}
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._wall() - age))
        return 503, {
            "status": "stuck",
            "reason": f"the main loop has made no progress for {age:.0f} s "
            f"(more than {self.stale_after_s:.0f} s)",
            "last_progress": since,
            "stale_for_s": round(age, 1),
        }

    @contextlib.contextmanager
    def watching(self, every_s: float = WATCH_EVERY_S) -> Iterator[None]:
        """While in it, a daemon thread logs a warning when the calling thread (the main
        loop) stops beating for longer than ``stale_after_s`` -- what ``/healthz`` then
        answers 503 for -- with where that thread is, and another once it beats again (a main
        loop stuck 200 s in a model call said nothing: a pod restarted by its probe left no
        trace of why in its log, a QA pass)."""
        ident, done = threading.get_ident(), threading.Event()
        # A loop stuck in C code that holds the interpreter (a native call, a giant unpickle)
        # stops this thread too: a C timer, re-armed at each pass, then writes every thread's
        # stack to stderr (a review: nothing was said until the call returned).
        silent_s = self.stale_after_s + 2 * every_s

        def watch() -> None:
            said: float | None = None  # the beat the loop was stuck after, once said
            while not done.wait(every_s):
                with contextlib.suppress(Exception):  # (stderr without a descriptor: none)
                    faulthandler.dump_traceback_later(silent_s, exit=False)
                beat = self.beat
                age = self._clock() - beat
                if age > self.stale_after_s and said != beat:
                    said = beat
                    log.warning(
                        "the main loop has made no progress: /healthz answers 503 (a restart "
                        'is the cure if it stays so) seconds="%.0f" limit_s="%.0f" at="%s"',
                        age, self.stale_after_s, stack_of(ident),
                    )  # fmt: skip
                elif said is not None and beat != said:
                    before, after = self.stall
                    log.warning(
                        'the main loop makes progress again after a stall seconds="%.1f"',
                        (after if before == said else beat) - said,
                    )  # fmt: skip
                    said = None

        thread = threading.Thread(target=watch, name="fds-health-watch", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=1.0)
            faulthandler.cancel_dump_traceback_later()

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """``(200, ...)`` when the service decides and is live, else ``(503, reason)``."""
        code, body = self.liveness()
        if code != 200:
            return code, {**body, "status": "not ready"}
        assert self.ready is not None
        ready, reason = self.ready()
        return (200, {"status": "ready", "reason": reason}) if ready else (
            503, {"status": "not ready", "reason": reason}
        )  # fmt: skip


def stack_of(ident: int, depth: int = 4) -> str:
    """Where thread ``ident`` is: its innermost frames, innermost first (``file:line
    function``, joined by ``<``).

    >>> "stack_of" in stack_of(threading.get_ident())
    True
    """
    frame = sys._current_frames().get(ident)
    if frame is None:
        return "(the thread has ended)"
    frames = traceback.extract_stack(frame)[-depth:]
    return " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))


class Beating:
    """A Kafka consumer whose every ``poll`` is a beat of ``health`` (a read that takes long
    but advances is progress); everything else is the consumer's.

    >>> h = Health(stale_after_s=1, clock=lambda: 7.0)
    >>> class Reader:
    ...     def poll(self, timeout_ms): return {}
    ...     def close(self): return "closed"
    >>> r = Beating(Reader(), h)
    >>> h.beat = -5.0
    >>> r.poll(timeout_ms=500), h.beat, r.close()
    ({}, 7.0, 'closed')
    """

    def __init__(self, consumer: Any, health: Health) -> None:
        self._consumer = consumer
        self._health = health

    def poll(self, *args: Any, **kwargs: Any) -> Any:
        self._health.tick()
        return self._consumer.poll(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


#: A WSGI application: ``app(environ, start_response) -> body chunks``.
App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def health_app(metrics: App, health: Health | None) -> App:
    """``metrics`` (prometheus_client's WSGI app) on ``/metrics`` and ``/`` (as before, for
    scrape configs that name no path), ``/healthz`` and ``/readyz`` from ``health`` (when the
    service has them), 404 anywhere else.

    >>> h = Health(stale_after_s=1, clock=lambda: 0.0)
    >>> app = health_app(lambda env, start: [b"metrics"], h)
    >>> got = []
    >>> app({"PATH_INFO": "/healthz", "REQUEST_METHOD": "GET"}, lambda s, hs: got.append(s))
    [b'{"status":"ok","reason":"the main loop made progress 0.0 s ago"}\\n']
    >>> app({"PATH_INFO": "/readyz", "REQUEST_METHOD": "GET"}, lambda s, hs: got.append(s))
    [b'not found: /readyz (served here: /metrics, /healthz)\\n']
    >>> got
    ['200 OK', '404 Not Found']
    """
    checks: dict[str, Callable[[], tuple[int, dict[str, Any]]]] = {}
    if health is not None:
        checks["/healthz"] = health.liveness
        if health.ready is not None:
            checks["/readyz"] = health.readiness
    served = ", ".join(["/metrics", *checks])

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path in ("/", "/metrics"):
            if environ.get("REQUEST_METHOD") == "HEAD":  # (405 from prometheus_client, where
                got: list[Any] = []  # /healthz answered HEAD, then Content-Length 0: QA passes)
                get = {**environ, "REQUEST_METHOD": "GET"}
                page = b"".join(metrics(get, lambda status, hs: got.extend((status, hs))))
                headers = [(k, v) for k, v in got[1] if k.lower() != "content-length"]
                start_response(got[0], [*headers, ("Content-Length", str(len(page)))])
                return []
            return metrics(environ, start_response)
        check = checks.get(path)
        head = environ.get("REQUEST_METHOD") == "HEAD"  # (no body to HEAD on any path: a 404's
        if check is None:  # had one, a review; it said "not found: /metrics", read as /metrics
            said = f"not found: {path[:200]} (served here: {served})\n"  # missing: a QA pass)
            answer = _answer(start_response, "404 Not Found", said.encode("utf-8", "replace"))
        elif environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            answer = _answer(start_response, "405 Method Not Allowed", b"use GET\n")
        else:
            code, body = check()
            status = "200 OK" if code == 200 else "503 Service Unavailable"
            text = orjson.dumps(body) + b"\n"
            answer = _answer(start_response, status, text, "application/json")
        return [] if head else answer

    return app


def _answer(
    start_response: Callable[..., Any], status: str, body: bytes, kind: str = "text/plain"
) -> list[bytes]:
    start_response(
        status,
        [("Content-Type", f"{kind}; charset=utf-8"), ("Cache-Control", "no-store"),
         ("X-Content-Type-Options", "nosniff"), ("Content-Length", str(len(body)))],
    )  # fmt: skip
    return [body]
