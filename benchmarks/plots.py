"""Plots for the benchmark reports: measured bars against the targets (matplotlib, no display).

Each report embeds its figure next to its tables (``![...](name.png)``); the figure shows the
same numbers as the tables, from the same run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: (value, label) of a target line; red dashes, a second one orange dots.
Target = tuple[float, str]
_STYLES = (("tab:red", "--"), ("tab:orange", ":"), ("tab:green", "-."))


def figure(panels: int, height: float = 4.2) -> tuple[Any, list[Any]]:
    """A figure of ``panels`` side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(6.4 * panels, height), squeeze=False)
    return fig, list(axes[0])


def bars(
    ax: Any,
    rows: dict[str, float],
    *,
    xlabel: str,
    title: str,
    targets: Sequence[Target] = (),
    log: bool = False,
    fmt: str = ",.0f",
) -> None:
    """Horizontal bars, the first row on top, each with its value, and the target lines."""
    ax.barh(list(rows), list(rows.values()), color="tab:blue")
    for i, v in enumerate(rows.values()):
        ax.text(v, i, f" {v:{fmt}}", va="center", fontsize=7)
    for (value, label), (color, ls) in zip(targets, _STYLES, strict=False):
        ax.axvline(value, color=color, ls=ls, label=label)
    if targets:
        ax.legend(fontsize=8, loc="lower right")
    if log:
        ax.set_xscale("log")
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel(xlabel)
    ax.set_title(title)


def save(fig: Any, path: Path, alt: str) -> str:
    """Write the figure as ``path`` (PNG); the markdown line that shows it beside the report."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"![{alt}]({path.name})"
