import types

import pytest

import fds


def test_all_is_exactly_the_public_names():
    public = {
        n
        for n, v in vars(fds).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    } | set(fds._LAZY)  # imported when first used
    assert set(fds.__all__) == public
    assert fds.__all__ == sorted(fds.__all__)
    for name in fds.__all__:
        assert getattr(fds, name).__doc__, f"{name} has no docstring"


def test_the_lazy_package_still_reaches_its_submodules():
    """`import fds; fds.engine` worked while the package imported its names at once."""
    assert fds.engine.Engine is fds.Engine
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fds.nope  # noqa: B018
    assert not hasattr(fds, "__main__") and not hasattr(fds, "a.b")  # (the first ran the CLI)
