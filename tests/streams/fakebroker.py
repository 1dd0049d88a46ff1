"""An in-memory broker and the parts of kafka-python's clients that ``fds run`` (Runner) uses:
a group consumer that rebalances on cue (keeping the position of a partition that stays
assigned, as kafka-python 3 does), the group-less reader of a restore, and a producer with
transactions. For tests of the loop's offsets and state across rebalances and restores."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from typing import Any

import orjson
from kafka.errors import IllegalStateError
from kafka.structs import OffsetAndMetadata, OffsetAndTimestamp, TopicPartition

Record = namedtuple("Record", "topic partition offset timestamp key value headers")
TOPIC = "transactions"


class Broker:
    """Partitions of ``TOPIC`` (lists of transactions), the group's committed offsets, the
    decisions produced, and ``script``: ``(poll number, fn(group))`` run at that poll."""

    def __init__(self, logs: dict[int, list[dict[str, Any]]], committed: dict[int, int]) -> None:
        self.logs = {
            TopicPartition(TOPIC, p): [
                Record(TOPIC, p, i, int(tx["ts"] * 1000), tx["card_id"].encode(),
                       orjson.dumps(tx), [])
                for i, tx in enumerate(txs)
            ]
            for p, txs in logs.items()
        }  # fmt: skip
        self.committed = {TopicPartition(TOPIC, p): o for p, o in committed.items()}
        self.metadata: dict[Any, str] = {}  # the metadata of each partition's last commit
        self.commit_log: list[tuple[int, int]] = []  # (partition, offset), in commit order
        self.out: list[dict[str, Any]] = []  # decisions
        self.script: list[tuple[int, Callable[[Group], None]]] = []
        self.polls = 0
        self.elsewhere: dict[Any, int] = {}  # the group's committed offsets of other topics

    def commit(self, offsets: dict[Any, Any]) -> None:
        for tp, om in offsets.items():
            self.committed[tp] = om.offset
            self.metadata[tp] = om.metadata
            self.commit_log.append((tp.partition, om.offset))


class Future:
    is_done = True
    exception = None
    value: Any = None  # RecordMetadata: its offset, for decisions sent outside a transaction

    def failed(self) -> bool:
        return False

    def succeeded(self) -> bool:
        return True


class Producer:
    def __init__(self, broker: Broker, **_: Any) -> None:
        self.b = broker
        self.txn: list[dict[str, Any]] | None = None
        self.txn_offsets: dict[Any, Any] = {}

    def send(
        self, topic: str, value: bytes = b"", key: bytes | None = None,
        partition: int | None = None, headers: list[Any] | None = None, **_: Any,
    ) -> Future:  # fmt: skip
        fut = Future()
        if topic == "decisions":
            (self.txn if self.txn is not None else self.b.out).append(orjson.loads(value))
            if self.txn is None and partition is not None:  # readable back, at an offset
                log = self.b.logs.setdefault(TopicPartition(topic, partition), [])
                log.append(Record(topic, partition, len(log), 0, key, value, list(headers or ())))
                fut.value = log[-1]
        return fut

    def flush(self, timeout: float | None = None) -> None:
        pass

    def partitions_for(self, topic: str) -> set[int]:
        return {0, 1}

    def close(self, timeout: float | None = None) -> None:
        pass

    def init_transactions(self) -> None:
        pass

    def begin_transaction(self) -> None:
        self.txn, self.txn_offsets = [], {}

    def send_offsets_to_transaction(self, offsets: dict[Any, Any], meta: Any) -> None:
        self.txn_offsets.update(offsets)

    def commit_transaction(self) -> None:
        self.b.out.extend(self.txn or [])
        self.b.commit(self.txn_offsets)
        self.txn = None

    def abort_transaction(self) -> None:
        self.txn = None


class Reader:
    """The group-less consumer of a restore: ``per_poll`` records per partition and poll."""

    def __init__(self, broker: Broker, per_poll: int = 4) -> None:
        self.b, self.per_poll = broker, per_poll
        self.pos: dict[Any, int] = {}
        self.paused: set[Any] = set()

    def assign(self, tps: list[Any]) -> None:
        self.pos = dict.fromkeys(tps, 0)

    def assignment(self) -> set[Any]:
        return set(self.pos)

    def seek(self, tp: Any, offset: int) -> None:
        self.pos[tp] = offset

    def position(self, tp: Any, timeout_ms: int | None = None) -> int:
        return self.pos[tp]

    def pause(self, *tps: Any) -> None:
        self.paused.update(tps)

    def resume(self, *tps: Any) -> None:
        self.paused.difference_update(tps)

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Any]]:
        out = {}
        for tp, at in self.pos.items():
            got = [] if tp in self.paused else self.b.logs[tp][at : at + self.per_poll]
            if got:
                out[tp] = got
                self.pos[tp] = at + len(got)
        return out

    def beginning_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return dict.fromkeys(tps, 0)

    def end_offsets(self, tps: list[Any], timeout_ms: int | None = None) -> dict[Any, int]:
        return {tp: len(self.b.logs.get(tp, ())) for tp in tps}

    def highwater(self, tp: Any) -> int | None:
        """As of the last fetch; a partition not assigned here raises, as kafka-python's."""
        if tp not in self.pos:
            raise IllegalStateError(f"Partition is not assigned: {tp}")
        return len(self.b.logs[tp])

    def offsets_for_times(self, query: dict[Any, int]) -> dict[Any, Any]:
        return {tp: OffsetAndTimestamp(0, 0, -1) for tp in query}  # all within the horizon

    def close(self, *_: Any, **__: Any) -> None:
        pass


class Group(Reader):
    """The group consumer: it runs the broker's script at each poll."""

    def __init__(self, broker: Broker, per_poll: int = 3) -> None:
        super().__init__(broker, per_poll)
        self.listener: Any = None
        self.assigned: set[Any] = set()
        self.hw: dict[Any, int] = {}

    def bootstrap(self, timeout_ms: int | None = None) -> None:
        pass

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1}

    def assignment(self) -> set[Any]:
        return set(self.assigned)

    def rebalance(self, new: set[Any]) -> None:
        """Eager: revoke everything, assign ``new``; a partition in both keeps its position,
        a new one starts at the committed offset."""
        old = set(self.assigned)
        if old:
            self.listener.on_partitions_revoked(old)
        self.pos = {
            tp: self.pos[tp] if tp in old and tp in self.pos else self.b.committed.get(tp, 0)
            for tp in new
        }
        self.assigned = set(new)
        self.listener.on_partitions_assigned(new)

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Any]]:
        self.b.polls += 1
        if self.b.script and self.b.script[0][0] <= self.b.polls:
            self.b.script.pop(0)[1](self)
        out = {}
        for tp in sorted(self.assigned):
            at = self.pos[tp]
            got = self.b.logs[tp][at : at + self.per_poll]
            self.hw[tp] = len(self.b.logs[tp])
            if got:
                out[tp] = got
                self.pos[tp] = at + len(got)
        return out

    def highwater(self, tp: Any) -> int | None:
        return self.hw.get(tp)

    def committed(self, tp: Any, metadata: bool = False, timeout_ms: int | None = None) -> Any:
        o = self.b.committed.get(tp)
        meta = self.b.metadata.get(tp, "")
        return OffsetAndMetadata(o, meta, -1) if metadata and o is not None else o

    def commit(self, offsets: dict[Any, Any], timeout_ms: int | None = None) -> None:
        self.b.commit(offsets)

    def commit_async(self, offsets: dict[Any, Any]) -> None:
        self.b.commit(offsets)

    def group_metadata(self) -> str:
        return "meta"

    def close(self, autocommit: bool = False, timeout_ms: int | None = None) -> None:
        if self.assigned:
            self.listener.on_partitions_revoked(set(self.assigned))


class Admin:
    """The admin client's listing of the group's committed offsets (``committed`` and
    ``elsewhere``: every topic's)."""

    def __init__(self, broker: Broker, **_: Any) -> None:
        self.b = broker

    def list_group_offsets(self, specs: dict[str, Any]) -> dict[str, dict[Any, Any]]:
        offsets = {**self.b.committed, **self.b.elsewhere}
        return {g: {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()} for g in specs}

    def close(self) -> None:
        pass
