"""A group's entity states in shards: ``key -> state`` spread over 251 dicts by the key's hash.

A dict grows by copying every entry into a table twice the size, all in one call. At a
million entities the decision that added the next one waited 40-210 ms for that copy
(``benchmarks/results/state_resize.md``), and with idle entities evicted and new ones
added, the copy comes back whenever deleted slots fill the table. With the states spread
over 251 dicts, each copy moves 1/251 of them. The shard is a hash modulo a prime: an int
hashes to itself, and ids in steps of a power of two (or of ten) would fill a few shards of
a power-of-two count (a review: ids in steps of 256 all went to one of 256).

The hash is the same in every process (:func:`shard_of`: CRC-32 of a string's UTF-8, a
number's own hash), not Python's string hash, which is seeded per process: the plan sweeps
and samples states shard by shard (``max_entities``), so under a cap the shards' order
decided which entities were evicted, and two replays of one file, or a run and its restart,
differed (a QA pass). Within a shard, the dict still hashes keys with the seeded hash. The
hot path picks the shard itself (``shard_of``, or the typed kernel's ``_shard_of``:
:func:`fds.features.codegen.build_fused`); the rest of the plan uses the mapping below.

>>> shard_of("c1"), shard_of(7), shard_of(7.0), shard_of(-1)
(177, 7, 7, 249)
>>> s = Shards({"c1": [1], "c2": [2]})
>>> s["c1"], s.get("c3"), len(s), sorted(s)
([1], None, 2, ['c1', 'c2'])
>>> del s["c1"]; "c1" in s
False
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, Mapping, MutableMapping, ValuesView
from itertools import chain
from typing import Any
from zlib import crc32

__all__ = ["SHARDS", "Shards", "shard_of"]

SHARDS = 251


def shard_of(key: Any) -> int:
    """The shard of ``key``: a string (of ``str`` or a subclass) by the CRC-32 of its UTF-8,
    lone surrogates passed through; anything else by its hash. So strings and numbers (a
    number's hash is its value's: 7 and 7.0 share one), every entity value files and Kafka
    give, are in the same shard in every process; other values only the Python API can pass
    (bytes, tuples, dates) follow Python's hash, seeded per process. The typed kernel's
    ``_shard_of`` computes the same."""
    if isinstance(key, str):
        return crc32(key.encode("utf-8", "surrogatepass")) % SHARDS
    return hash(key) % SHARDS


class Shards(MutableMapping[Any, Any]):
    """``key -> state`` in ``SHARDS`` dicts (``parts``), :func:`shard_of` choosing one.

    Iteration goes shard by shard (not in insertion order). Pickled item by item, each put
    in its shard again as it is loaded (shards of an older release followed the string hash
    of the process that saved them), in the order it was saved."""

    __slots__ = ("parts",)

    def __init__(self, items: Mapping[Any, Any] | None = None) -> None:
        self.parts: list[dict[Any, Any]] = [{} for _ in range(SHARDS)]
        parts = self.parts
        for k, v in (items or {}).items():
            parts[shard_of(k)][k] = v

    def __getitem__(self, key: Any) -> Any:
        return self.parts[shard_of(key)][key]

    def get(self, key: Any, default: Any = None) -> Any:
        return self.parts[shard_of(key)].get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.parts[shard_of(key)]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.parts[shard_of(key)][key] = value

    def __delitem__(self, key: Any) -> None:
        del self.parts[shard_of(key)][key]

    def __len__(self) -> int:
        return sum(map(len, self.parts))

    def __iter__(self) -> Iterator[Any]:
        return chain.from_iterable(self.parts)

    def items(self) -> ItemsView[Any, Any]:
        return _Items(self)

    def values(self) -> ValuesView[Any]:
        return _Values(self)

    def __repr__(self) -> str:
        return f"Shards({len(self)} entities)"

    def __reduce__(self) -> tuple[Any, ...]:
        # (no shard pickled as it is: its keys belong elsewhere under another hash; a copy
        # shares no dict with the original)
        return Shards, (), None, None, iter(self.items())


class _Items(ItemsView[Any, Any]):
    _mapping: Shards

    def __iter__(self) -> Iterator[tuple[Any, Any]]:  # (a shard's own, not a lookup per key)
        return chain.from_iterable(p.items() for p in self._mapping.parts)


class _Values(ValuesView[Any]):
    _mapping: Shards

    def __iter__(self) -> Iterator[Any]:
        return chain.from_iterable(p.values() for p in self._mapping.parts)
