"""Engine-state snapshots on a compacted Kafka topic, so that another machine restores in seconds.

``fds run --state-topic state-changelog --group-instance-id i0`` publishes every checkpoint it
writes (the file of :mod:`fds.streams.checkpoint`: the state with the input offsets it covers,
never ahead of the committed ones) to the topic. An instance that starts without a local
checkpoint -- a new machine after a data-centre loss, a wiped disk -- with the same group and
instance id reads the newest snapshot back instead of rebuilding the state from the input
topic's whole feature horizon (30 days for the default rules), then catches up from its offsets
as after any restart.

Layout (one partition per instance, chosen by a stable hash of ``<group>/<instance>``, each id
percent-encoded (:func:`ident_of`); the topic is compacted, so it keeps the newest record per
key)::

    key "<group>/<instance>#<slot>#<i>"  -> chunk i of the file (CHUNK bytes at most)
    key "<group>/<instance>"             -> manifest {slot, chunks, size, sha256, signature,
                                            written_at[, topic, offsets, left]}, after its chunks

``topic`` and ``offsets`` (partition, as a string, -> next offset not folded) say which input
offsets the snapshot covers, when the publisher gave them (manifests of earlier releases have
neither); ``left`` (the same form) the partitions the publisher followed no more, whose events
up to that offset its snapshot still holds (a rebalance moved them away: another instance may
take them over from this snapshot even when it is newer than the move); ``span`` the offsets
of the snapshot's first and last chunk in its partition. None of these is signed (the snapshot
itself carries its offsets, and is; a wrong span makes a snapshot that does not verify). Each
manifest is also sent to the topic's index (:func:`index_of`: ``<topic>.index``, compacted,
keyed ``<group>/<instance>``) when it exists.
An instance that takes over another's partitions finds that instance's newest manifest with
:meth:`StateTopic.scan` -- in the index, so that it reads no chunk; in the whole topic without
one -- and reads its snapshot with :meth:`StateTopic.fetch_foreign` (only the span's offsets),
which changes none of the publisher's slot bookkeeping.

Snapshots rotate over three slots, ``a``, ``b`` and ``c``: a publish writes a slot that no
manifest the broker may hold names -- the last one it acknowledged, and every one sent since
(a manifest that failed may still have landed) -- so a crash mid-publish leaves the snapshot
the broker's manifest names whole, whatever the broker got. When manifests failed until every
slot may be named, the newest manifest is sent again before the next snapshot's chunks: once
the broker acknowledges it, it names that slot for sure and the other two are free (a review
found the next snapshot written over a slot that two failed manifests in a row left maybe
named). The
slots and the newest manifest are kept in a small file beside the checkpoint (``slot_file``),
written *before* a manifest is sent, so that a restarted instance knows them too (with two
slots and the file written once the manifest was acknowledged, an instance killed in between
wrote its next snapshot over the one the broker named). A snapshot is
restored only when its chunks join to the manifest's sha256 -- and its HMAC-SHA256 signature
when ``FDS_MODEL_KEY`` is set, as for model artifacts (whoever can write to the topic could
otherwise make ``fds run`` unpickle what they like) -- else a warning, and the state is rebuilt
from the input as without the topic.
"""

from __future__ import annotations

import hashlib
import logging
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from fds.errors import ArtifactError, describe
from fds.models.registry import env_key, sign, verify, write_atomic
from fds.streams.checkpoint import escape_id
from fds.streams.kafka_kit import UnreadableRecords

__all__ = [
    "CHUNK", "FETCH_BYTES", "StateTopic", "ident_of", "index_of", "manifest_newer",
    "manifest_offsets", "manifest_span",
]  # fmt: skip

log = logging.getLogger(__name__)

#: Chunk slots a snapshot rotates over (see the module docstring).
SLOTS = ("a", "b", "c")
#: Bytes per chunk record: below the broker's default 1 MB message limit with room to spare.
CHUNK = 512 * 1024
#: Records per poll while reading the topic: 64 chunks of CHUNK bytes, 32 MB at most in hand.
POLL_RECORDS = 64
#: ``max_partition_fetch_bytes`` of a reader of the topic: kafka-python's 1 MB default fetches
#: one or two chunks per round trip; 2-8 MB read snapshots 1.6-1.9x faster, 16 MB less so
#: (benchmarks/exp_state_fetch.py, results/state_fetch.md).
FETCH_BYTES = 4 << 20


def manifest_offsets(manifest: Mapping[str, Any], key: str = "offsets") -> dict[int, int]:
    """The input offsets a manifest says its snapshot covers (``key="left"``: of the
    partitions it was left holding; ``{}``: it does not say, or not as partition numbers
    mapped to offsets: manifests are not signed).

    >>> manifest_offsets({"slot": "a", "topic": "tx", "offsets": {"0": 12, "3": 7}})
    {0: 12, 3: 7}
    >>> manifest_offsets({"offsets": {"0": "5.0"}}), manifest_offsets({"offsets": [1]})
    ({}, {})
    >>> manifest_offsets({"offsets": {"0": 12}, "left": {"2": 40}}, "left")
    {2: 40}
    """
    got = manifest.get(key)
    if not isinstance(got, dict):
        return {}
    try:
        out = {int(p): o for p, o in got.items()}
    except ValueError:
        return {}
    return out if all(o.__class__ is int for o in out.values()) else {}


def ident_of(group: str, instance: str) -> str:
    """The key of an instance's snapshots: ``<group>/<instance>``, each id percent-encoded as
    its state dir is (:func:`~fds.streams.checkpoint.escape_id`), so that the key has one
    ``/`` and names one group and instance: group ``a/b``'s instance ``c`` and group ``a``'s
    instance ``b/c`` were both ``a/b/c`` (a QA pass). Ids without ``/`` and ``%`` keep the key
    of earlier releases. ``instance=""``: the prefix of the group's keys (:meth:`StateTopic.scan`).

    >>> ident_of("fds", "i0"), ident_of("a/b", "c"), ident_of("a", "b/c"), ident_of("a/b", "")
    ('fds/i0', 'a%2Fb/c', 'a/b%2Fc', 'a%2Fb/')
    """
    return f"{escape_id(group)}/{escape_id(instance)}"


def index_of(topic: str) -> str:
    """The name of ``topic``'s index: a small compacted topic of each instance's newest
    manifest, so that a takeover finds snapshots without reading every chunk.

    >>> index_of("state-changelog")
    'state-changelog.index'
    """
    return f"{topic}.index"


def manifest_span(manifest: Mapping[str, Any]) -> tuple[int, int] | None:
    """The offsets of the first and the last chunk of a manifest's snapshot in its partition
    (``None``: it does not say, as manifests of earlier releases, or not as two offsets in
    order: manifests are not signed).

    >>> manifest_span({"span": [120, 131]}), manifest_span({}), manifest_span({"span": [5, 1]})
    ((120, 131), None, None)
    """
    got = manifest.get("span")
    if (
        isinstance(got, list) and len(got) == 2
        and all(o.__class__ is int and o >= 0 for o in got) and got[0] <= got[1]
    ):  # fmt: skip
        return got[0], got[1]
    return None


def manifest_newer(a: Mapping[str, Any], b: Mapping[str, Any] | None) -> bool:
    """Is manifest ``a`` of a snapshot newer than ``b`` (``None``: none) of the same instance?
    By where their chunks are when both say (offsets only grow in a partition), else by the
    time they say they were written (another machine's clock may be behind).

    >>> manifest_newer({"span": [9, 10], "written_at": 1.0}, {"span": [5, 6], "written_at": 2.0})
    True
    >>> manifest_newer({"written_at": 1.0}, {"written_at": 2.0}), manifest_newer({}, None)
    (False, True)
    """
    if b is None:
        return True
    sa, sb = manifest_span(a), manifest_span(b)
    if sa is not None and sb is not None:
        return sa[0] > sb[0]
    return _written_at(a) > _written_at(b)


def _written_at(manifest: Mapping[str, Any]) -> float:
    at = manifest.get("written_at")
    return float(at) if at.__class__ in (int, float) else 0.0


def _offset(future: Any) -> int | None:
    """The offset a send's future says its record was written at (``None``: unknown)."""
    offset = getattr(getattr(future, "value", None), "offset", None)
    return offset if offset.__class__ is int else None


def _newer_raw(a: bytes, b: bytes) -> bool:
    """:func:`manifest_newer` of two manifests as sent (one that is no JSON object: older)."""
    try:
        ma, mb = orjson.loads(a), orjson.loads(b)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(ma, dict):
        return False
    return not isinstance(mb, dict) or manifest_newer(ma, mb)


def _is_chunk(key: bytes) -> bool:
    """A chunk's key, ``<group>/<instance>#<slot>#<i>``, not a manifest's: an instance id
    holds no ``#`` (Kafka allows ``[a-zA-Z0-9._-]`` in it), a group may."""
    return b"#" in key.rpartition(b"/")[2]


def _note(latest: dict[bytes, bytes], key: bytes, value: bytes | None) -> None:
    """Keep ``value`` as the newest of ``key`` (a tombstone, ``None``, deletes it)."""
    if value is None:
        latest.pop(key, None)
    else:
        latest[key] = value


def _read(
    topic: str,
    make_reader: Callable[[], Any],
    keep: Callable[[bytes, bytes | None], None],
    *,
    timeout_s: float,
    pick: Callable[[int], int] | None = None,
    span: tuple[int, int | None] | None = None,
) -> bool | None:
    """Read ``topic`` from the start to the end offsets it has now -- only partition
    ``pick(number of partitions)`` when given, else every one; with ``span`` (and ``pick``)
    only the offsets ``span[0]`` to ``span[1]`` of it (``None``: its end) -- handing each
    keyed record to ``keep(key, value)`` (value ``None``: a tombstone). False when it read
    nothing for ``timeout_s`` (logged); ``None`` when the topic does not exist (read at
    once)."""
    reader = make_reader()
    try:
        parts = reader.partitions_for_topic(topic)
        if not parts:
            return None
        chosen = sorted(parts) if pick is None else [pick(len(parts))]
        tps = [TopicPartition(topic, p) for p in chosen]
        reader.assign(tps)
        ends = reader.end_offsets(tps)
        last = None if span is None else span[1]
        if span is None:
            reader.seek_to_beginning(*tps)
        else:  # (a compacted record of it: the next one is read, and the join fails)
            reader.seek(tps[0], span[0])
            if last is not None:
                ends[tps[0]] = min(ends[tps[0]], last + 1)
        deadline = time.monotonic() + timeout_s
        while any(reader.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                log.warning('state topic="%s": no progress reading it for %.0f s', topic,
                            timeout_s)  # fmt: skip
                return False
            for records in reader.poll(timeout_ms=500, max_records=POLL_RECORDS).values():
                deadline = time.monotonic() + timeout_s  # progress (a large partition)
                for r in records:
                    if r.key is not None and (last is None or r.offset <= last):
                        keep(r.key, r.value)
    finally:
        reader.close()
    return True


class StateTopic:
    """Publish and fetch one instance's checkpoint files on ``topic``.

    Parameters
    ----------
    topic
        The compacted topic (``state-changelog`` in streams/topics.yaml).
    ident
        ``<group>/<instance>``: whose snapshots these are.
    key
        HMAC key; ``None`` reads ``FDS_MODEL_KEY`` (unset: sha256 only).
    slot_file
        Where the slot last published is kept across restarts (``None``: not kept).
    index
        The topic's index (:func:`index_of`), where each manifest is also sent (``None``: it
        is not; a takeover then reads the whole state topic to find the manifests). A copy
        that fails turns it off (``None``) until it is set again (the Runner looks for it).
    """

    def __init__(
        self,
        topic: str,
        ident: str,
        *,
        key: bytes | None = None,
        slot_file: Path | None = None,
        index: str | None = None,
    ) -> None:
        self.topic = topic
        self.ident = ident
        self.index = index
        self._index_gen = 0  # use_index calls: a failure of a copy sent before one is old news
        # what sends the copies to the index (None: the producer given): one of its own, so
        # that a copy stuck in it (the index gone) never holds the flush of a snapshot
        self.index_producer: Any = None
        self.key = key if key is not None else env_key()  # (an empty key: an error, as there)
        self.slot_file = slot_file
        # the slots the broker's manifest may name: the last acknowledged (``_acked``) and those
        # sent since (``_maybe``, newest last), with the newest manifest (``_last``)
        self._acked = "c"
        self._maybe: list[str] = []
        self._last: bytes | None = None
        if slot_file is not None and slot_file.exists():
            self._load_slots(slot_file.read_bytes())
        # (slot, data, next chunk, the manifest's topic and offsets), while one is sent
        self._sending: tuple[str | None, bytes, int, dict[str, Any]] | None = None
        self._chunks: list[Any] = []  # send futures of the snapshot's chunks
        self._manifest: tuple[str, Any] | None = None  # (slot, send future) until acknowledged
        self.published = 0

    def partition(self, n_partitions: int) -> int:
        return zlib.crc32(self.ident.encode()) % max(n_partitions, 1)

    @property
    def publishing(self) -> bool:
        """Is a snapshot partly sent, or its manifest not acknowledged yet?"""
        self._confirm()
        return self._sending is not None or self._manifest is not None

    @property
    def _slot(self) -> str | None:
        """The slot the next publish writes: after the newest one sent, named by no manifest
        the broker may hold (``None``: every slot may be named)."""
        named = {self._acked, *self._maybe}
        i = SLOTS.index(self._maybe[-1] if self._maybe else self._acked)
        return next((x for x in SLOTS[i + 1 :] + SLOTS[: i + 1] if x not in named), None)

    def _load_slots(self, text: bytes) -> None:
        """Read ``slot_file``: ``<acked> <sent since>...``, then the newest manifest on a line
        of its own (a file of an earlier release: ``<acked> <last sent>``)."""
        first, _, manifest = text.partition(b"\n")
        known = [k for k in first.decode(errors="replace").split() if k in SLOTS]
        if known:
            self._acked = known[0]
            self._maybe = [k for k in dict.fromkeys(known[1:]) if k != known[0]]
        self._last = manifest.strip() or None

    def _save_slots(self) -> None:
        if self.slot_file is not None:
            text = " ".join([self._acked, *self._maybe]).encode()
            write_atomic(self.slot_file, text + b"\n" + (self._last or b""))

    def _confirm(self) -> None:
        """Once the broker has acknowledged the manifest, its slot is the one named. A manifest
        that failed may still have landed: its slot stays avoided."""
        m = self._manifest
        if m is None or not getattr(m[1], "is_done", True):
            return
        self._manifest = None
        if getattr(m[1], "failed", lambda: False)():
            return
        self._acked, self._maybe = m[0], []  # sent after every earlier one had an answer
        self.published += 1
        self._save_slots()

    def abort(self) -> None:
        """Give up the snapshot being sent (the next checkpoint is sent instead)."""
        self._sending = None
        self._manifest = None
        self._chunks = []

    def publish(
        self,
        producer: Any,
        data: bytes,
        *,
        topic: str | None = None,
        offsets: Mapping[int, int] | None = None,
        left: Mapping[int, int] | None = None,
    ) -> None:
        """Send ``data`` (a checkpoint file) whole: its chunks, then (once the broker has them
        all) its manifest (``topic``, ``offsets``, ``left``: as for :meth:`start`)."""
        self.start(data, topic=topic, offsets=offsets, left=left)
        self.step(producer, chunks=1 << 30, flush_s=60.0)

    def start(
        self,
        data: bytes,
        *,
        topic: str | None = None,
        offsets: Mapping[int, int] | None = None,
        left: Mapping[int, int] | None = None,
    ) -> None:
        """Begin sending ``data``; :meth:`step` sends it a few chunks at a time (the producer
        holds 32 MB: sending a large state at once would block the caller until the broker has
        most of it). ``topic``, ``offsets`` and ``left``, the input topic and offsets ``data``
        covers (:attr:`Checkpointer.on_disk <fds.streams.checkpoint.Checkpointer.on_disk>`),
        go into its manifest when given (``left`` when not empty)."""
        covers: dict[str, Any] = {}
        if topic is not None:
            covers["topic"] = topic
        for key, got in (("offsets", offsets), ("left", left)):
            if got is not None and (got or key == "offsets"):
                covers[key] = {str(p): int(o) for p, o in sorted(got.items())}
        self._sending = (self._slot, data, 0, covers)

    def step(self, producer: Any, chunks: int = 8, *, flush_s: float | None = None) -> None:
        """Send up to ``chunks`` more chunks of the snapshot being sent; once the broker has
        acknowledged every chunk, its manifest (a manifest sent before had named a torn slot
        when a chunk was lost, and the next snapshot then overwrote the only whole one). Not
        awaited (``flush_s``: wait for the chunks that long, at a stop): a lost snapshot is
        replaced by the next one, and the previous one stays whole meanwhile. When every slot
        may be named, the newest manifest is sent first, and the chunks once it is
        acknowledged."""
        if self._sending is None:
            return
        slot, data, done, covers = self._sending
        if slot is None:  # every slot may be named: the newest manifest first
            newest = self._last
            if newest is None:  # (a slot file of an earlier release)
                slot = self._maybe[0]
            else:
                self._confirm()
                slot = self._slot
                if slot is None and self._manifest is None:  # (sent again if it failed)
                    log.warning(
                        'state topic="%s": the manifests of the last snapshots may not have '
                        "landed; the newest is sent again first",
                        self.topic,
                    )
                    self._send_manifest(producer, self._maybe[-1], newest, flush_s)
                    slot = self._slot  # (acknowledged at once when flushed, at a stop)
                if slot is None:
                    return
        self._sending = (slot, data, done, covers)
        part = self.partition(len(producer.partitions_for(self.topic) or ()))
        n = max(1, -(-len(data) // CHUNK))
        last = min(n, done + chunks)
        for i in range(done, last):
            self._chunks.append(
                producer.send(
                    self.topic, key=f"{self.ident}#{slot}#{i}".encode(),
                    value=data[i * CHUNK : (i + 1) * CHUNK], partition=part,
                )
            )  # fmt: skip
        self._sending = (slot, data, last, covers)
        if last < n:
            return
        if flush_s is not None:
            producer.flush(timeout=flush_s)
        if not all(getattr(f, "is_done", True) for f in self._chunks):
            return  # the manifest goes with a later step
        if any(getattr(f, "failed", lambda: False)() for f in self._chunks):
            log.warning('state topic="%s": a chunk of the snapshot was not written; the next '
                        "checkpoint is sent instead", self.topic)  # fmt: skip
            self.abort()  # (the slot stays: the broker's manifest still names the other one)
            return
        offsets = [o for f in self._chunks if (o := _offset(f)) is not None]
        self._chunks = []
        manifest = {
            "slot": slot,
            "chunks": n,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "signature": sign(data, self.key) if self.key is not None else None,
            "written_at": time.time(),
            **covers,
        }
        if len(offsets) == n:  # where a taker reads it (manifest_span)
            manifest["span"] = [min(offsets), max(offsets)]
        self._sending = None
        self._maybe = [*(x for x in self._maybe if x != slot), slot]
        self._last = orjson.dumps(manifest)
        self._save_slots()  # before the manifest: a restart must know the broker may name it
        self._send_manifest(producer, slot, self._last, None)

    def _send_manifest(
        self, producer: Any, slot: str, manifest: bytes, flush_s: float | None
    ) -> None:
        """Send the manifest naming ``slot`` (at a stop, ``flush_s``: wait for it that long),
        and a copy to the index (not awaited; a lost copy is logged: the index then names an
        older snapshot, and a takeover that finds it gone reads the state topic's manifest)."""
        part = self.partition(len(producer.partitions_for(self.topic) or ()))
        future = producer.send(self.topic, key=self.ident.encode(), value=manifest, partition=part)
        self._manifest = (slot, future)
        self.copy_to_index(producer, manifest)
        if flush_s is not None:
            producer.flush(timeout=flush_s)
        self._confirm()

    def use_index(self, index: str) -> None:
        """Send copies to ``index`` (again: a copy that failed turned it off)."""
        self._index_gen += 1
        self.index = index

    def copy_to_index(self, producer: Any, manifest: bytes | None = None) -> None:
        """Send a copy of ``manifest`` (``None``: the newest sent, if any) to the index, through
        :attr:`index_producer` (``None``: ``producer``); not awaited. A copy that fails turns
        the index off (the Runner looks for it again now and then)."""
        manifest = manifest if manifest is not None else self._last
        if self.index is None or manifest is None:
            return
        gen = self._index_gen
        try:
            sent = (self.index_producer or producer).send(
                self.index, key=self.ident.encode(), value=manifest
            )
        except KafkaError as exc:
            self._index_failed(exc, gen)
        else:
            if hasattr(sent, "add_errback"):  # (called from the producer's network thread)
                sent.add_errback(lambda exc: self._index_failed(exc, gen))

    def _index_failed(self, exc: Exception, gen: int) -> None:
        """A copy failed (the index deleted, its leader gone for longer than the producer's
        retries): no more copies are sent (each would hold the caller up to the producer's
        ``max_block_ms`` waiting for the index's metadata), said once. A copy sent before the
        index was used again (``gen``) says nothing of it now."""
        if gen != self._index_gen:
            return
        index, self.index = self.index, None
        if index is None:
            return
        log.warning(
            'state topic index="%s": a manifest was not sent to it (%s); no more are sent '
            "until it is found again (looked for after a minute, longer after each new failure; "
            "meanwhile a takeover reads an older copy there, or the state topic's manifest "
            "when that snapshot is gone); check that it exists (`fds kafka topics` creates "
            "it)", index, describe(exc),
        )  # fmt: skip

    def fetch(self, make_reader: Callable[[], Any], *, timeout_s: float = 60.0) -> bytes | None:
        """The newest whole, verified snapshot of this instance, or ``None`` (none, or it does not
        verify: logged). Reads the instance's partition from its start to its end offset; with
        an index that names a snapshot of it, from that snapshot's first chunk (every newer
        manifest and chunk comes after it; the whole partition when that finds none: the
        index's copy can be newer than any manifest that landed). The snapshot read is noted
        as this instance's newest (slots and ``slot_file``): the next publish never writes over
        it."""
        got = None
        if self.index is not None:
            try:
                found = StateTopic.scan(
                    self.topic, make_reader, self.ident, timeout_s=timeout_s, index=self.index
                )
            except (KafkaError, UnreadableRecords) as exc:  # (a shortcut: read it whole)
                log.warning('state topic index="%s" cannot be read (%s: %s): the state '
                            "topic's partition is read whole", self.index,
                            type(exc).__name__, exc)  # fmt: skip
                found = None
            span = manifest_span((found or {}).get(self.ident, {}))
            if span is not None:  # (quiet: what it rejects is rejected again below, logged)
                got = self._fetch(make_reader, None, timeout_s, since=span[0], quiet=True)
        if got is None:
            got = self._fetch(make_reader, None, timeout_s)
        if got is None:
            return None
        data, m = got
        self._acked, self._maybe, self._last = m["slot"], [], orjson.dumps(m)  # never overwrite
        # The snapshot just read, also after a restart from the checkpoint written from it
        # (without the file, a review found the next publish writing into it).
        try:
            self._save_slots()
        except OSError as exc:  # a full state disk stopped fds run at its start (a QA pass):
            # this process knows the slots all the same, and writes the file again before its
            # next manifest
            log.warning(
                'state topic="%s": slot file="%s" not written (%s); the snapshot is restored '
                "all the same", self.topic, self.slot_file, describe(exc),
            )  # fmt: skip
        return data

    def fetch_foreign(
        self,
        make_reader: Callable[[], Any],
        *,
        manifest: Mapping[str, Any] | None = None,
        timeout_s: float = 60.0,
    ) -> bytes | None:
        """Another instance's snapshot (this object's ``ident``: create it without a
        ``slot_file``), verified as by :meth:`fetch`, or ``None`` (logged). The newest one on
        the topic, or the one ``manifest`` names (from :meth:`scan`: only its slot's chunks
        are kept while reading, and a newer publish since may have overwritten them: then
        ``None``). Changes no slot bookkeeping and writes no file."""
        got = self._fetch(make_reader, manifest, timeout_s)
        return None if got is None else got[0]

    @staticmethod
    def scan(
        topic: str,
        make_reader: Callable[[], Any],
        prefix: str,
        *,
        timeout_s: float = 60.0,
        index: str | None = None,
    ) -> dict[str, dict[str, Any]] | None:
        """The newest manifest (parsed) of each instance whose key (:func:`ident_of`) starts
        with ``prefix`` (``ident_of(group, "")``: the group's instances), read from every
        partition of ``topic``, start to end; with ``index`` (:func:`index_of` ``topic``), from
        the index alone: the manifests, not every chunk of every snapshot. Chunks are skipped
        as they come (the topic may hold GBs); a tombstone drops its instance, a manifest that
        is not a JSON object is skipped (logged). ``{}`` when the topic does not exist (logged);
        ``None`` when it read nothing for ``timeout_s``, or the index does not exist (logged):
        a partial answer could name an older snapshot as the newest.
        """
        want = prefix.encode()
        raw: dict[bytes, bytes] = {}

        def keep(key: bytes, value: bytes | None) -> None:
            if key.startswith(want) and not _is_chunk(key):
                if index and value is not None and key in raw and not _newer_raw(value, raw[key]):
                    return  # (an index of several partitions: an older copy read after)
                _note(raw, key, value)

        read = _read(index or topic, make_reader, keep, timeout_s=timeout_s)
        if read is None:
            if index:
                log.warning('state topic index="%s" does not exist: the state topic is read '
                            "instead", index)  # fmt: skip
            else:
                log.warning('state topic="%s" does not exist: nothing to restore from it', topic)
            return None if index else {}
        if not read:
            return None
        found: dict[str, dict[str, Any]] = {}
        for key, value in raw.items():
            ident = key.decode(errors="replace")
            try:
                m = orjson.loads(value)
            except orjson.JSONDecodeError:
                m = None
            if isinstance(m, dict):
                found[ident] = m
            else:
                log.warning('state topic="%s": the manifest of "%s" is not a JSON object: '
                            "skipped", index or topic, ident)  # fmt: skip
        return found

    def _fetch(
        self,
        make_reader: Callable[[], Any],
        manifest: Mapping[str, Any] | None,
        timeout_s: float,
        *,
        since: int | None = None,
        quiet: bool = False,
    ) -> tuple[bytes, Mapping[str, Any]] | None:
        """Read this instance's partition and verify the snapshot of ``manifest`` (``None``:
        of the newest manifest read, from offset ``since`` on when given): its bytes and
        manifest, or ``None``. A manifest that says where its chunks are (``span``) has only
        those offsets read."""
        mine = self.ident.encode()
        # (only this instance's: not the chunks of "g/fds-10" for "g/fds-1"; with a manifest,
        # only its slot's)
        chunk = mine + (b"#" if manifest is None else f"#{manifest.get('slot')}#".encode())
        latest: dict[bytes, bytes] = {}

        def keep(key: bytes, value: bytes | None) -> None:
            if (key == mine and manifest is None) or key.startswith(chunk):
                _note(latest, key, value)

        span = manifest_span(manifest) if manifest else None if since is None else (since, None)
        read = _read(
            self.topic, make_reader, keep, timeout_s=timeout_s, pick=self.partition, span=span
        )
        if read is None:
            log.warning('state topic="%s" does not exist: nothing to restore', self.topic)
        if not read:
            return None
        return self._assemble(latest, manifest, quiet=quiet)

    def _assemble(
        self,
        latest: dict[bytes, bytes],
        manifest: Mapping[str, Any] | None = None,
        *,
        quiet: bool = False,
    ) -> tuple[bytes, Mapping[str, Any]] | None:
        """The snapshot ``manifest`` (``None``: the manifest in ``latest``) names, joined from
        the chunks in ``latest`` and verified, with its manifest; ``None`` (logged unless no
        manifest was published)."""
        raw = latest.get(self.ident.encode()) if manifest is None else b"(given)"
        if raw is None:  # never published (or deleted)
            return None
        try:
            m = manifest if manifest is not None else orjson.loads(raw)
            chunks = [latest[f"{self.ident}#{m['slot']}#{i}".encode()] for i in range(m["chunks"])]
            data = b"".join(chunks)
            if len(data) != m["size"]:
                raise ArtifactError(f"{len(data)} bytes, the manifest says {m['size']}")
            verify(data, sha256=m["sha256"], signature=m.get("signature"), key=self.key)
        except (orjson.JSONDecodeError, KeyError, TypeError, ArtifactError) as exc:
            if quiet:
                return None
            log.warning(
                'state snapshot of "%s" on topic="%s" rejected (%s: %s): the state is rebuilt '
                "from the input instead", self.ident, self.topic, type(exc).__name__, exc,
            )  # fmt: skip
            return None
        return data, m
