"""``fds produce``: load a JSONL/CSV/Parquet file (a historical file or ``fds simulate``'s
output) into a Kafka topic, keyed as ``fds run`` reads it, at a given rate.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import time
from datetime import UTC
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError

from fds.cli import file_path, positive_float, positive_int
from fds.errors import ConfigError, FdsError, describe
from fds.logs import say
from fds.schema import REFUSED, UNREADABLE, dumps, id_text
from fds.streams.align import SEQ_HEADER
from fds.streams.files import (
    ColumnMapping,
    DamagedFile,
    FileCut,
    LabelColumn,
    check_transaction_columns,
    file_error,
    load_mapping,
    read_records,
)
from fds.streams.kafka_kit import ClientErrors, Consumer, close_producer, flush_within
from fds.streams.service import (
    DLQ_KEY_KEPT,
    DLQ_RAW_KEPT,
    PROGRESS_EVERY_S,
    BrokerUnavailable,
    no_topic,
    say_if_slow,
    topics_of,
    unreachable,
)
from fds.streams.settings import (
    CONNECTION_SETTINGS,
    KafkaSettings,
    add_settings_flags,
    settings_from,
    topic_arg,
)
from fds.timeutil import FileClock, get_zone, parse_ts
from fds.timeutil import sleep as wakeful_sleep

__all__ = [
    "produce_file",
    "register_produce",
]

# (the lines of fds run and fds train keep the logger name operators filter on, whichever
# module says them)
log = logging.getLogger("fds.streams.kafka")


NO_RECORDS = "holds no records (empty, or a header only): nothing was sent"


class NoRecords(FdsError):
    """A file without records: exit 1, as ``fds replay`` of it (said before connecting)."""


def _first(path: Path | str, mapping: ColumnMapping | None) -> tuple[Any, ...] | None:
    """The file's first row as read (position, record, error), ``None`` when it has none."""
    records = read_records(path, mapping=mapping)
    try:
        return next(iter(records), None)
    finally:
        close = getattr(records, "close", None)
        if close is not None:
            close()


def _labels_file(path: Path | str, mapping: ColumnMapping | None, *, card: bool = True) -> bool:
    """Does the file's first record look like a label (``is_fraud``, no ``amount``; with
    ``card`` false, no ``card_id`` either)?"""
    first = (_first(path, mapping) or (None, None, None))[1]
    return (
        isinstance(first, dict) and "is_fraud" in first and "amount" not in first
        and (card or "card_id" not in first)
    )  # fmt: skip


def _labels_topic_name(name: str, settings: KafkaSettings) -> bool:
    """Is ``name`` the labels topic: the settings', or the kit's (``labels``, after a
    ``--prefix`` that ends in ``.``, ``-`` or ``_``)?"""
    return name == settings.labels_topic or (
        name != settings.input_topic
        and (name == "labels" or name.endswith((".labels", "-labels", "_labels")))
    )


def _topics(settings: KafkaSettings) -> set[str]:
    """The broker's topics, for the hint of a missing one (a consumer of a moment)."""
    with contextlib.suppress(KafkaError, OSError, ValueError):
        consumer = Consumer(**settings.client_config(), request_timeout_ms=5_000)
        try:
            return topics_of(consumer)
        finally:
            consumer.close()
    return set()


def produce_file(
    path: Path | str,
    settings: KafkaSettings,
    *,
    topic: str | None = None,
    rate: float | None = None,
    mapping: ColumnMapping | None = None,
    limit: int | None = None,
    labels_topic: str | None = None,
) -> int:
    """Send each record of a JSONL/CSV file to ``topic``, keyed by ``card_id`` (``tx_id`` for a
    record without one: a label); return the count.

    ``rate`` paces to that many records per second (file order is kept); ``mapping`` renames
    foreign columns (``--mapping``) and reads timestamps in its zone, as ``fds replay`` does;
    its label column is no transaction field: with ``labels_topic`` each fraud it marks goes
    there as a label (``{tx_id, ts: ts + delay, is_fraud, source}``, keyed by ``tx_id``). A
    record that cannot be read (bad JSON, a short CSV row) is sent as its raw text, so ``fds
    run`` dead-letters it: nothing is silently dropped.
    """
    if (problem := file_error(path, "input file")) is not None:
        raise ConfigError(problem)
    if labels_topic and labels_topic == (topic or settings.input_topic):
        raise ConfigError(  # (fds run dead-lettered the labels as transactions: a QA pass)
            f"--labels-topic {labels_topic!r} is the topic the records go to: give each its own"
        )
    target = topic or settings.input_topic
    empty = False
    with contextlib.suppress(ConfigError):  # (columns amiss: said below, as for a replay)
        empty = _first(path, mapping) is None
    if empty:  # (an empty labels file was "its first record is none", and an empty file of
        # transactions waited for the broker to send nothing)
        raise NoRecords(f"{path} {NO_RECORDS}")
    holds_labels, own = False, None
    if target != settings.input_topic:
        # a labels file of its own columns and notation (a chargeback export) is read with the
        # mapping's labels_file:, labels_options: and label_values:, as `fds replay --labels`
        # reads it (it was read as transactions, and refused: a QA pass)
        # (to a labels topic only: a transactions file of an is_fraud column was sent to a
        # prefixed transactions topic as labels, a review)
        if not (mapping and mapping.label) and _labels_topic_name(target, settings):
            own = (mapping or ColumnMapping()).for_labels()
        for reading in (mapping, own) if own is not None else (mapping,):
            with contextlib.suppress(ConfigError):  # (not columns of that mapping)
                if _labels_file(path, reading):
                    mapping, holds_labels = reading, True
                    break
    elif not (mapping and mapping.label):  # the input topic: a labels file there was told
        with contextlib.suppress(ConfigError):  # to map amount and card_id (a README walk);
            # one with a card is a file of labelled transactions, its amount column of another
            # name: told to map it (a review)
            holds_labels = _labels_file(path, mapping, card=False)
    if holds_labels and (
        target == settings.input_topic
        or target.endswith((".transactions", "-transactions", "_transactions"))
    ):
        home = (  # (a prefixed transactions topic took a labels file, all dead-lettered by
            settings.labels_topic  # fds run: a QA pass; the labels topic configured first)
            if target == settings.input_topic and settings.labels_topic
            else target.removesuffix("transactions") + "labels"
            if target.endswith("transactions")
            else "labels"
        )
        named = (  # (no --topic given: not named as given, a review)
            f"--topic {target!r} is a transactions topic"
            if topic
            else f"without --topic the records go to the transactions topic {target!r}"
        )
        raise ConfigError(
            f"{named}, but {path} holds labels (tx_id, ts, "
            f"is_fraud and no amount): labels go to the labels topic (--topic {home})"
        )
    if not holds_labels and _labels_topic_name(target, settings):
        why = "its first record is none: tx_id, ts, is_fraud and no amount"
        try:  # (a labels file's columns or delimiter amiss: said as for fds replay --labels)
            if own is not None:
                check_transaction_columns(path, own)
        except ConfigError as exc:
            why = f"read as labels, {str(exc).removeprefix(f'{exc.where}: ')}"
        # the kit's transactions topic beside it (a prefixed one: the prefix's, a README walk)
        txs = settings.input_topic
        if target.endswith((".labels", "-labels", "_labels")):  # (_labels_topic_name's)
            txs = target.removesuffix("labels") + "transactions"
        where = f"--topic {txs}" + (", or no --topic" if txs == settings.input_topic else "")
        raise ConfigError(  # (fds run and fds train dead-lettered each one: a QA pass)
            f"--topic {target!r} is a labels topic, but {path} holds no labels ({why}); "
            "transactions go to the "
            f"transactions topic ({where}), and a --mapping's fraud column goes there as labels "
            f"with --labels-topic {target}"
        )
    if not holds_labels:
        # transactions with other column names: every one was sent, for fds run to dead-letter
        # (without a key: a review), as fds replay refuses; with a mapping, checked before
        # connecting (a QA pass); to a topic of another name too (a prefixed one), unless the
        # file holds labels (it was not checked there: a QA pass)
        check_transaction_columns(path, mapping)
    records = read_records(path, mapping=mapping)
    zone = get_zone(mapping.timezone) if mapping is not None else None
    label = mapping.label if mapping is not None else None
    if labels_topic and label is None:
        raise ConfigError("--labels-topic needs a --mapping with a label: section (its column)")
    labels = disordered = unreadable_rows = 0
    cut: FileCut | None = None  # what ended the file early, if anything
    timeout_ms = settings.timeout_ms
    waiting = say_if_slow(lambda: log.warning(  # (a wrong port: a minute without a word, a
        "no answer from Kafka yet: waiting up to %.0f s (--broker-timeout) "  # README walk)
        'bootstrap="%s"', settings.broker_timeout_s, settings.bootstrap,
    ))  # fmt: skip
    try:
        with waiting, ClientErrors() as errors:
            producer = errors.connect(lambda: KafkaProducer(
                **settings.client_config(), acks="all", linger_ms=5,
                bootstrap_timeout_ms=timeout_ms, max_block_ms=timeout_ms,
                # a record waits for a broker that went away as long as --broker-timeout says
                # (the default 2 minutes dropped records of an outage longer than that)
                delivery_timeout_ms=max(timeout_ms, 120_000),
                compression_type=settings.compression_type,
            ), settings.n_servers)  # fmt: skip
    except (KafkaError, OSError) as exc:
        raise unreachable(settings, exc, errors) from exc
    fix_topic = "fix --topic" if topic else settings.fix("input_topic")  # (its input topic)
    topic = topic or settings.input_topic
    t0 = time.monotonic()
    n = 0
    # fds-seq: this run's start (us) then the record's place, so that files produced one after
    # the other keep that order too (each counted from 1, two files' ties were interleaved by
    # line: a QA pass); records of other producers, without it, come first
    seq0 = time.time_ns() // 1000 * 10**12 + 1
    failed: list[BaseException] = []  # sends the broker refused or that timed out
    acked = [0]  # sends it acknowledged (counted on the producer's thread)
    line = 0
    sent_to = 0  # the line of the last record handed to the producer
    unreadable_labels = 0
    close_s = 5.0  # how long closing waits for what is not acknowledged yet
    heard = (0, t0)  # the records acknowledged, and when that count last grew

    too_large: list[int] = []  # the lines of records larger than a request takes

    def send(value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]) -> Any:
        """Send a record; one larger than a Kafka request takes is sent cut, with why, for fds
        run to dead-letter (it stopped the whole file, which could only be sent again from its
        start: a QA pass)."""
        try:
            return producer.send(topic, value=value, key=key, headers=headers)
        except MessageSizeTooLargeError:
            too_large.append(line)
            reason = (
                f"line {line} of {path}: a record of {len(value):,} bytes, more than a Kafka "
                f"request takes (max_request_size: {producer.config['max_request_size']:,}); "
                f"its first {DLQ_RAW_KEPT:,} bytes were sent"
            ).encode("utf-8", "backslashreplace")
            # (a row refused or unreadable already keeps its header and reason first: a review)
            said = [(h, v) for h, v in headers if h in (REFUSED, UNREADABLE)]
            cut = [(said[0][0], said[0][1] + b"; and " + reason)] if said else [(REFUSED, reason)]
            key = key[:DLQ_KEY_KEPT] if key else key  # (a huge key too)
            return producer.send(topic, value=value[:DLQ_RAW_KEPT], key=key, headers=cut)

    def gone() -> BrokerUnavailable:
        return BrokerUnavailable(
            f"Kafka at {settings.bootstrap} did not acknowledge the records for "
            f"{settings.broker_timeout_s:.0f} s (--broker-timeout): {acked[0]} of {n} records "
            f"were written, {len(failed)} refused, the rest unknown; produce the file again "
            "once it is up (fds run decides a record twice as at-least-once)"
        )

    try:
        try:
            # A topic's metadata comes in well under a second; a missing one was waited for
            # the whole max_block_ms (the broker timeout: a minute without a word, a review).
            block, producer.config["max_block_ms"] = producer.config["max_block_ms"], 10_000
            for name, fix in ((topic, fix_topic), (labels_topic, "fix --labels-topic")):
                if not name:
                    continue
                try:
                    producer.partitions_for(name)
                except KafkaTimeoutError:
                    raise no_topic(name, settings.bootstrap, fix, _topics(settings)) from None
            producer.config["max_block_ms"] = block
            clock = FileClock(zone) if zone is not None else None
            said_at = time.monotonic() + PROGRESS_EVERY_S
            newest = -math.inf  # the latest event time sent
            for line, rec, raw in records:
                if isinstance(rec, FileCut):  # the file ends here: nothing of it to send (an
                    cut = rec  # empty record was sent, and exit 0 for a damaged .gz)
                    break
                if rate:  # pacing to the requested rate (a low one: long), before a record:
                    ahead = n / rate - (time.monotonic() - t0)  # none after the last (it
                    if ahead > 0:  # waited one interval more at the end: a QA pass)
                        wakeful_sleep(ahead)
                if isinstance(rec, dict):
                    truth = rec.pop(label.column, None) if label is not None else None
                    if rec.get("ts") is not None:
                        # the mapping's zone, as fds replay reads the file (epoch seconds
                        # carry it: sent as they are; a text or a Parquet column's datetime,
                        # naive in that zone, as epoch seconds: it was sent as UTC, a QA
                        # pass); unreadable: fds run says so
                        with contextlib.suppress(ValueError, TypeError, OverflowError):
                            t = parse_ts(rec["ts"], zone or UTC)
                            t = clock(rec["ts"], t) if clock is not None else t
                            if clock is not None and not isinstance(rec["ts"], int | float):
                                rec["ts"] = t
                            disordered += t < newest
                            newest = max(newest, t)
                    if labels_topic and label is not None and truth is not None:
                        sent = _label_of(
                            rec, truth, label.delay, zone, labels_topic, producer, failed
                        )
                        labels += sent > 0
                        unreadable_labels += sent < 0
                    # a transaction by its card (the state's partitioning), anything else (a
                    # label file) by its tx_id, as streams/topics.yaml keys the labels topic
                    card = rec.get("card_id", rec.get("tx_id"))
                    key = None if card is None else id_text(card).encode()
                    # its place in the file: fds run takes records of one event time in that
                    # order, as fds replay does (see align.SEQ_HEADER)
                    fut = send(dumps(rec), key, [(SEQ_HEADER, b"%d" % (seq0 + n))])
                elif isinstance(rec, Exception):  # unreadable: the file's own bytes (a row
                    # read but refused by the mapping as JSON: it was Python's repr), and
                    mapped = isinstance(raw, dict)  # (read, and refused by the mapping)
                    value = (
                        dumps(raw) if mapped
                        else raw if isinstance(raw, bytes)
                        else str(raw or "").encode()
                    )  # fmt: skip
                    reason = str(rec)[:1000].encode("utf-8", "backslashreplace")  # why
                    header = REFUSED if mapped else UNREADABLE
                    unreadable_rows += 1
                    fut = send(value, None, [(header, reason)])
                else:  # JSON that is no object ([1, 2], 42, null): fds run says so, as replay
                    unreadable_rows += 1  # (sent empty: lost; then not counted: a QA pass)
                    fut = send(dumps(rec), None, [])
                fut.add_errback(failed.append)
                fut.add_callback(lambda _meta: acked.__setitem__(0, acked[0] + 1))
                n += 1
                sent_to = line
                if rate or not n & 1023:
                    now = time.monotonic()
                    if acked[0] != heard[0]:
                        heard = (acked[0], now)
                    elif n > acked[0] and now - heard[1] > settings.broker_timeout_s:
                        close_s = 0.0  # (at a --rate it sent on for good: a QA pass)
                        raise gone()
                    if now >= said_at:  # (silent for minutes at a --rate)
                        said_at = now + PROGRESS_EVERY_S
                        log.info(
                            'producing records="%d" acknowledged="%d" line="%d" rate="%.0f/s"',
                            n, acked[0], line, n / max(now - t0, 1e-9),
                        )  # fmt: skip
                if limit is not None and n >= limit:
                    break
            if rate and (took := time.monotonic() - t0) > 1.1 * n / rate + RATE_SLACK_S:
                log.warning(  # (not a word when a --rate was not reached: a QA pass)
                    "--rate %g was not reached: %.0f records/s (reading the file, the broker or "
                    "the machine is slower)", rate, n / took,
                )  # fmt: skip
            try:  # (a SIGTERM while waiting here says what was sent too: a QA pass; a wait
                with say_if_slow(lambda: log.info(  # said: silent for up to the broker timeout,
                    "waiting for Kafka to acknowledge the records sent, up to %.0f s "  # a QA)
                    '(--broker-timeout) records="%d" acknowledged="%d"',
                    settings.broker_timeout_s, n, acked[0],
                )):  # fmt: skip
                    flush_within(producer, settings.broker_timeout_s)
            except KafkaTimeoutError:
                close_s = 0.0
                raise gone() from None
        except (KafkaError, KeyboardInterrupt) as exc:  # how far it got: a rerun sends again
            try:
                flush_within(producer, 5.0)
            except Exception:
                close_s = 0.0  # (the broker is not answering: waiting again is no use)
            sent_so_far = (  # (it said "sent (to line 2)" of a line 2 too large to send)
                f"{n:,} record{'s' if n != 1 else ''} of {path} {'were' if n != 1 else 'was'} "
                f"sent (to line {sent_to}), {acked[0]:,} acknowledged by Kafka; producing the "
                "file again sends them again (fds run decides a record twice)"
            )
            if isinstance(exc, KeyboardInterrupt):  # (SIGTERM too)
                log.warning("interrupted: %s", sent_so_far)
                raise
            raise FdsError(
                f"producing stopped{f' at line {line}' if line else ''} ({describe(exc)}): "
                f"{sent_so_far}"
            ) from exc
    finally:
        close_producer(producer, close_s)
    if unreadable_labels:  # (skipped without a word before; fds replay dead-letters them)
        log.warning(
            "%d values of the label column %r said neither fraud nor legitimate: those labels "
            "were not sent (their transactions were)",
            unreadable_labels,
            label.column,  # type: ignore[union-attr]
        )
    if labels_topic:
        log.info("produced %d fraud labels to %s", labels, labels_topic)
    elif label is not None:  # (dropped without a word: a QA pass)
        log.warning(
            "the mapping's label column %r was not sent (it is no transaction field): "
            "--labels-topic sends its frauds as labels",
            label.column,
        )
    if unreadable_rows:  # (exit 0 and "produced 7 records" alone: a QA pass)
        log.warning(
            "%d records could not be read, were refused by the mapping or were no JSON object: "
            "sent (with the reason in a header), for fds run (and fds train) to dead-letter "
            "them with it",
            unreadable_rows,
        )
    if too_large:
        log.warning(
            "%d records were larger than a Kafka request takes (line %s%s): each was sent cut, "
            "with the reason, for fds run to dead-letter; the file holds them whole",
            len(too_large), ", ".join(map(str, too_large[:5])),
            ", ..." if len(too_large) > 5 else "",
        )  # fmt: skip
    if disordered:  # (fds run then decided them late, or with other windows than fds replay,
        log.warning(  # which sorts them: a QA pass)
            "%d records were out of time order (each after one with a later ts) and were sent "
            "in file order: fds run decides them as they come (late, or windows without what "
            "came after them), fds replay sorts them; sort the file by ts to match a replay",
            disordered,
        )
    if isinstance(cut, DamagedFile):  # (exit 0 and garbage sent: a QA pass)
        refused = f" ({len(failed)} of them refused by Kafka)" if failed else ""
        raise FdsError(
            f"{path} is damaged: {cut}; {n} records before it were sent{refused} and may be "
            "garbage too: delete them from the topic (or use a new one) and produce a good copy"
        )
    # (a file cut short, a truncated download, was a warning and exit 0: a script took the
    # records after the cut for sent, a QA pass)
    unread = f"; {path} could not be read to its end ({cut}): produce the rest from a good copy"
    if failed:
        raise FdsError(
            f"{len(failed)} of {n} records were not produced to {topic!r} (first error: "
            f"{type(failed[0]).__name__}: {failed[0]}); the others were"
            + (unread if cut is not None else "")
        )
    if cut is not None:
        raise FdsError(f"the {n} records before the cut were sent{unread}")
    return n


#: A --rate is said not reached when the records took 10% and this many seconds more than it
#: gives them (a few ms of a first send's metadata are no shortfall).
RATE_SLACK_S = 0.5


def _label_of(
    tx: dict[str, Any], truth: Any, delay: float, zone: Any, topic: str, producer: Any,
    failed: list[Any],
) -> int:  # fmt: skip
    """Send the label a file's fraud column gives ``tx`` (1), or nothing (0: legitimate, or a
    transaction without a readable id and time; -1: a value that says neither). Its time is the
    transaction's, read as fds run reads it (epoch milliseconds too), plus ``delay``."""
    try:
        fraud = LabelColumn.is_fraud(truth)
    except ValueError:
        return -1  # (counted and said)
    try:
        ts = parse_ts(tx["ts"], zone)
        tx_id = str(tx["tx_id"])
    except (KeyError, TypeError, ValueError):
        return 0
    if not fraud:
        return 0
    body = {"tx_id": tx_id, "ts": ts + delay, "is_fraud": True, "source": "file"}
    producer.send(topic, value=dumps(body), key=tx_id.encode()).add_errback(failed.append)
    return 1


def register_produce(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fds produce``."""
    p = subparsers.add_parser(
        "produce", help="load a JSONL/CSV file into a Kafka topic",
        description="Send the records of a JSONL, CSV or Parquet file (gzip too) to a Kafka "
        "topic, keyed by card_id (a label's by tx_id), in file order, at --rate if given: a "
        "historical file or fds simulate's output, for fds run to decide.",
    )  # fmt: skip
    p.add_argument(
        "file", type=file_path("file to send"),
        help="transactions (or labels): .jsonl (.json, .ndjson), .csv, .parquet, optionally .gz",
    )  # fmt: skip
    p.add_argument(
        "--topic", type=topic_arg, default=None, help="default: the input topic (transactions)"
    )
    p.add_argument(
        "--rate", type=positive_float, default=None, help="records per second (default: max)"
    )
    p.add_argument(
        "--mapping", type=file_path("column mapping file"), default=None,
        help="column mapping YAML (fields:)",
    )  # fmt: skip
    p.add_argument("--limit", type=positive_int, default=None, help="send at most this many")
    p.add_argument(
        "--labels-topic", type=topic_arg, default=None,
        help="with a --mapping that has a label: column, send each fraud it marks here as a "
        "label, delay after its transaction",
    )  # fmt: skip
    add_settings_flags(p, (*CONNECTION_SETTINGS, "input_topic", "compression_type"))
    p.set_defaults(func=_cmd_produce)


def _cmd_produce(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
        mapping = load_mapping(args.mapping) if args.mapping is not None else None
        t0 = time.monotonic()
        n = produce_file(
            args.file, settings, topic=args.topic, rate=args.rate, mapping=mapping,
            limit=args.limit, labels_topic=args.labels_topic,
        )  # fmt: skip
    except (ConfigError, NoRecords) as exc:
        say(f"fds produce: error: {exc}")
        return 1 if isinstance(exc, NoRecords) else 2
    except FdsError as exc:  # (it says what failed and how far it got)
        say(f"fds produce: failed: {exc}")
        return 1
    except Exception as exc:
        say(f"fds produce: failed: {describe(exc)}")
        return 1
    if n == 0 and args.limit != 0:  # (exit 0, where fds replay of it exits 1: a QA pass)
        say(f"fds produce: error: {args.file} {NO_RECORDS}")
        return 1
    took = max(time.monotonic() - t0, 1e-3)  # (no time nor rate was said: a QA pass)
    topic = args.topic or settings.input_topic
    say(f"produced {n} records to {topic} in {took:.1f} s ({n / took:,.0f}/s)", logging.INFO)
    return 0
