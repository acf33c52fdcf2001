"""What every part's share of the report is made of: a markdown section head and PNG figures.

The parts (callrate, dialogs, callops, events, overload, soak) each write their own section
and plots; the framing is the same for all of them and lives here. matplotlib is imported
only when a figure is drawn (an `ImportError` then means "no plots", see `report.write`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def section(title: str, paragraphs: Sequence[str], error: str | None,
            *table_head: str) -> list[str]:
    """A section's first lines: its title, what the part measured, the error that cut the
    part short (when one did), then the head of its table (header row, alignment row)."""
    lines = [title, ""]
    for paragraph in paragraphs:
        lines += [paragraph, ""]
    if error:
        lines += [f"**Error:** `{error}`", ""]
    return lines + list(table_head)


def axes(width: float = 7.0) -> tuple[Any, Any]:
    """A new figure with one set of axes, drawn off-screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, 4.5))


def save(fig: Any, ax: Any, stem: Path, name: str, *, xlabel: str, ylabel: str, title: str,
         legend_size: float | None = None) -> Path:
    """Label, grid and save the figure as `<stem>-<name>.png`; the figure is closed."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if legend_size is None:
        ax.legend()
    else:
        ax.legend(fontsize=legend_size)
    path = stem.with_name(f"{stem.name}-{name}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
