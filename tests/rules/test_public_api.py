"""The public surface of fds.rules is exactly its ``__all__``."""

from __future__ import annotations

import fds.rules


def test_all_names_exist_and_are_public() -> None:
    for name in fds.rules.__all__:
        assert hasattr(fds.rules, name), name
        assert not name.startswith("_")
    assert sorted(fds.rules.__all__) == fds.rules.__all__
