"""Engine-state snapshots on a compacted Kafka topic, so that another machine restores in seconds.

``fds run --state-topic state-changelog --group-instance-id i0`` publishes every checkpoint it
writes (the file of :mod:`fds.streams.checkpoint`: the state with the input offsets it covers,
never ahead of the committed ones) to the topic. An instance that starts without a local
checkpoint -- a new machine after a data-centre loss, a wiped disk -- with the same group and
instance id reads the newest snapshot back instead of rebuilding the state from the input
topic's whole feature horizon (30 days for the default rules), then catches up from its offsets
as after any restart.

Layout (one partition per instance, chosen by a stable hash of ``<group>/<instance>``; the
topic is compacted, so it keeps the newest record per key)::

    key "<group>/<instance>#<slot>#<i>"  -> chunk i of the file (CHUNK bytes at most)
    key "<group>/<instance>"             -> manifest {slot, chunks, size, sha256, signature,
                                            written_at}, sent after its chunks

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from kafka.structs import TopicPartition

from fds.errors import ArtifactError
from fds.models.registry import env_key, sign, verify, write_atomic

__all__ = ["CHUNK", "StateTopic"]

log = logging.getLogger(__name__)

#: Chunk slots a snapshot rotates over (see the module docstring).
SLOTS = ("a", "b", "c")
#: Bytes per chunk record: below the broker's default 1 MB message limit with room to spare.
CHUNK = 512 * 1024


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
    """

    def __init__(
        self, topic: str, ident: str, *, key: bytes | None = None, slot_file: Path | None = None
    ) -> None:
        self.topic = topic
        self.ident = ident
        self.key = key if key is not None else env_key()  # (an empty key: an error, as there)
        self.slot_file = slot_file
        # the slots the broker's manifest may name: the last acknowledged (``_acked``) and those
        # sent since (``_maybe``, newest last), with the newest manifest (``_last``)
        self._acked = "c"
        self._maybe: list[str] = []
        self._last: bytes | None = None
        if slot_file is not None and slot_file.exists():
            self._load_slots(slot_file.read_bytes())
        self._sending: tuple[str | None, bytes, int] | None = None  # (slot, data, next chunk)
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

    def publish(self, producer: Any, data: bytes) -> None:
        """Send ``data`` (a checkpoint file) whole: its chunks, then (once the broker has them
        all) its manifest."""
        self.start(data)
        self.step(producer, chunks=1 << 30, flush_s=60.0)

    def start(self, data: bytes) -> None:
        """Begin sending ``data``; :meth:`step` sends it a few chunks at a time (the producer
        holds 32 MB: sending a large state at once would block the caller until the broker has
        most of it)."""
        self._sending = (self._slot, data, 0)

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
        slot, data, done = self._sending
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
        self._sending = (slot, data, done)
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
        self._sending = (slot, data, last)
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
        self._chunks = []
        manifest = {
            "slot": slot,
            "chunks": n,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "signature": sign(data, self.key) if self.key is not None else None,
            "written_at": time.time(),
        }
        self._sending = None
        self._maybe = [*(x for x in self._maybe if x != slot), slot]
        self._last = orjson.dumps(manifest)
        self._save_slots()  # before the manifest: a restart must know the broker may name it
        self._send_manifest(producer, slot, self._last, None)

    def _send_manifest(
        self, producer: Any, slot: str, manifest: bytes, flush_s: float | None
    ) -> None:
        """Send the manifest naming ``slot`` (at a stop, ``flush_s``: wait for it that long)."""
        part = self.partition(len(producer.partitions_for(self.topic) or ()))
        future = producer.send(self.topic, key=self.ident.encode(), value=manifest, partition=part)
        self._manifest = (slot, future)
        if flush_s is not None:
            producer.flush(timeout=flush_s)
        self._confirm()

    def fetch(self, make_reader: Callable[[], Any], *, timeout_s: float = 60.0) -> bytes | None:
        """The newest whole, verified snapshot of this instance, or ``None`` (none, or it does not
        verify: logged). Reads the instance's partition from its start to its end offset."""
        reader = make_reader()
        try:
            parts = reader.partitions_for_topic(self.topic)
            if not parts:
                log.warning('state topic="%s" does not exist: nothing to restore', self.topic)
                return None
            tp = TopicPartition(self.topic, self.partition(len(parts)))
            reader.assign([tp])
            reader.seek_to_beginning(tp)
            end = reader.end_offsets([tp])[tp]
            latest: dict[bytes, bytes] = {}
            mine = self.ident.encode()
            chunk = mine + b"#"  # (not the chunks of "g/fds-10" for "g/fds-1")
            deadline = time.monotonic() + timeout_s
            while reader.position(tp) < end:
                if time.monotonic() > deadline:
                    log.warning('state topic="%s": no progress reading it for %.0f s', self.topic,
                                timeout_s)  # fmt: skip
                    return None
                for records in reader.poll(timeout_ms=500, max_records=64).values():
                    deadline = time.monotonic() + timeout_s  # progress (a large partition)
                    for r in records:
                        if r.key is not None and (r.key == mine or r.key.startswith(chunk)):
                            latest[r.key] = r.value
        finally:
            reader.close()
        return self._assemble(latest)

    def _assemble(self, latest: dict[bytes, bytes]) -> bytes | None:
        raw = latest.get(self.ident.encode())
        if raw is None:
            return None
        try:
            m = orjson.loads(raw)
            chunks = [latest[f"{self.ident}#{m['slot']}#{i}".encode()] for i in range(m["chunks"])]
            data = b"".join(chunks)
            if len(data) != m["size"]:
                raise ArtifactError(f"{len(data)} bytes, the manifest says {m['size']}")
            verify(data, sha256=m["sha256"], signature=m.get("signature"), key=self.key)
        except (orjson.JSONDecodeError, KeyError, TypeError, ArtifactError) as exc:
            log.warning(
                'state snapshot of "%s" on topic="%s" rejected (%s: %s): the state is rebuilt '
                "from the input instead", self.ident, self.topic, type(exc).__name__, exc,
            )  # fmt: skip
            return None
        self._acked, self._maybe, self._last = m["slot"], [], raw  # never overwrite the
        self._save_slots()  # snapshot just read, also after a restart from the checkpoint
        # written from it (without the file, a review found the next publish writing into it)
        return data
