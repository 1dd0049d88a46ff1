"""The engine of ``fds run``: :func:`build_run_engine` builds it (the same builder as
``fds replay``'s, with the rules reloaded on change and the model served from the registry,
optionally fed from the models topic) and :func:`close_engine` stops its background threads.
:class:`fds.streams.kafka.Runner` decides with it; both names are imported from
:mod:`fds.streams.kafka` as before.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fds.errors import ConfigError
from fds.features.kernel import Compiler
from fds.pipeline import build_engine
from fds.streams.settings import KafkaSettings
from fds.timeutil import wait as wakeful_wait

if TYPE_CHECKING:  # (River: imported when an engine is built, not to build the command line)
    from fds.engine import Engine

# (the logger of fds run: its lines and their tests name it, wherever the code sits)
log = logging.getLogger("fds.streams.kafka")

# Registry polling period of the scorer: a version published by `fds train` serves within ~1 s.
MODEL_POLL_S = 1.0
# How long `fds run` waits at start for the models topic's history (its newest versions).
FEED_WAIT_S = 30.0
# The models-topic feed of each engine build_run_engine made (close_engine stops it).
_FEEDS: weakref.WeakKeyDictionary[Engine, Any] = weakref.WeakKeyDictionary()


def build_run_engine(
    rules: str | Path | None,
    model: str | Path | None,
    *,
    metrics: Any = None,
    registry: str | Path | None = None,
    poll_seconds: float = MODEL_POLL_S,
    models_topic: str | None = None,
    settings: KafkaSettings | None = None,
    keep_rules: Path | None = None,
) -> Engine:
    """The engine of ``fds run``: rules reloaded on change, and a model that serves the
    registry's champion and polls the registry for versions published by ``fds train``.
    ``keep_rules``: a copy of the last good rules is kept there (the state dir's
    :data:`KEPT_RULES`), which decides when the rules file does not load at a restart.

    ``models_topic``: also import the versions announced there into that registry
    (:class:`fds.streams.model_feed.ModelFeed`, connecting with ``settings``), for a scorer
    that does not share the trainer's registry directory. :func:`close_engine` stops it.
    With ``settings.state_topic`` the feature state records each event's input partition, so
    that another instance can take partitions over from its snapshot (Runner._take_over)."""
    # (named where it was given: --models-topic, FDS_MODELS_TOPIC, models_topic in the file)
    named = (settings or KafkaSettings()).named("models_topic")
    if models_topic and settings is not None:
        roles = ("input_topic", "output_topic", "dlq_topic", "labels_topic", "state_topic")
        role = next((r for r in roles if getattr(settings, r) == models_topic), None)
        if role is not None:  # (announcements read as input, or written over: a QA pass)
            raise ConfigError(
                f"{named} and {role} are both {models_topic!r}: give each its own topic "
                f"({settings.fix(role)} or {settings.fix('models_topic')})"
            )
    engine = build_engine(
        rules,
        model,
        metrics=metrics,
        watch=True,
        model_watch=True,
        model_fed=bool(models_topic),  # (said empty before the feed read the topic: a QA)
        registry=registry,
        poll_seconds=poll_seconds,
        # with a state topic, its snapshots can hand partitions over (Runner._take_over)
        provenance=settings is not None and bool(settings.state_topic),
        keep_rules=keep_rules,
        compiler=Compiler.from_env(),
    )
    server: Any = engine.model  # a ModelServer in watch mode
    if models_topic and server is None and named != "--models-topic":
        # (a deployment's shared file, read by every scorer: one with --model none refused
        # to start for a models topic it has no use of, a review; the flag is still refused)
        log.info("%s %s not read: no model (--model none)", named, models_topic)
        models_topic = None
    if models_topic:
        if server is None:
            close_engine(engine)
            raise ConfigError(
                f"a models topic ({named}: {models_topic}) needs a model: pass --model SPEC, "
                f"or drop {named} (--models-topic none turns a setting off)"
            )
        from fds.streams.model_feed import ModelFeed  # imports this module

        s = settings or KafkaSettings()
        feed = ModelFeed(
            s, server.registry, name=server.spec.name, topic=models_topic, metrics=metrics,
            decisions_topic=settings.output_topic if settings is not None else None,
            by=f"{s.group}/{s.group_instance_id or socket.gethostname()}",
        )  # fmt: skip
        # its contests' verdicts go to the trainer, whose registry's lifecycle every scorer
        # follows: one champion for the fleet (each judged alone: a QA pass)
        own = server.on_event

        def on_event(kind: str, info: dict[str, Any]) -> None:
            if own is not None:
                own(kind, info)
            feed.on_event(kind, info)

        server.on_event = on_event
        feed.start()
        _FEEDS[engine] = feed
        # Serve the newest version announced so far from the first decision: without the
        # wait, a new scorer decided its first batches with rules alone while it imported it.
        wait = min(FEED_WAIT_S, (settings or KafkaSettings()).broker_timeout_s)
        if not wakeful_wait(feed.caught_up, wait):
            log.warning("models topic %s not read to its end within %.0f s: decisions start "
                        "without its versions", models_topic, wait)  # fmt: skip
        else:  # (none yet, or the lifecycle followed in the catch-up replaced it)
            try:
                server.load_champion_if_changed()
            except Exception as exc:  # the registry watch retries it, as for any version
                log.warning("serving the imported version failed: %s: %s",
                            type(exc).__name__, exc)  # fmt: skip
        server.say_if_empty()  # (only now: the feed may have filled the registry)
    return engine


def close_engine(engine: Engine) -> None:
    """Stop the engine's background threads (models feed, rules watcher, registry poller)."""
    feed = _FEEDS.pop(engine, None)
    if feed is not None:
        feed.close()
    with contextlib.suppress(Exception):
        engine.close()
