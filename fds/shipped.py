"""Where the files fds ships beside its code are: ``rules/``, ``models/`` and ``streams/`` of
the checkout the package sits in (a clone, an editable install), else the copy a built wheel
carries in ``fds/_shipped`` (``setup.py`` puts it there), so that an installed fds finds its
default rules, model specs, topic specs and broker kit too.

>>> (ROOT / "rules" / "default.yaml").is_file(), DEFAULT_RULES.name, DEFAULT_MODEL.parent.name
(True, 'default.yaml', 'models')
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_MODEL", "DEFAULT_RULES", "ROOT"]

_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parent if (_HERE.parent / "rules" / "default.yaml").is_file() else _HERE / "_shipped"
DEFAULT_RULES = ROOT / "rules" / "default.yaml"
DEFAULT_MODEL = ROOT / "models" / "default.yaml"
