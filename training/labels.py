"""What a CSV index holds beyond ``data.classes``: rows left out, with a "did you mean" for typos."""

from __future__ import annotations

import csv
import difflib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .config import DataConfig


def csv_labels(config: DataConfig) -> Counter[str]:
    """Rows per label in the CSV's label column (empty when the file or column is missing)."""
    try:
        with Path(config.path).expanduser().open(newline="") as f:
            counts = Counter((row.get(config.label_column) or "").strip() for row in csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return Counter()
    counts.pop("", None)
    return counts


def suggestion(label: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'normal'?)`` when a choice is close to ``label``, else ``""``."""
    close = difflib.get_close_matches(label, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def left_out_note(config: DataConfig) -> str | None:
    """One line on rows whose label is not in ``data.classes`` (None when there are none)."""
    if config.classes is None:
        return None
    counts = csv_labels(config)
    other = {label: n for label, n in counts.items() if label not in config.classes}
    if not other:
        return None
    parts = [
        f"{label!r} {n} row{'s' if n > 1 else ''}{suggestion(label, config.classes)}"
        for label, n in sorted(other.items())
    ]
    return (
        f"data: {sum(other.values())} of {sum(counts.values())} rows of {config.path} left out, their class is not in "
        f"data.classes {list(config.classes)}: {', '.join(parts)}"
    )


def csv_labels_hint(config: DataConfig, missing: Sequence[str] = ()) -> str:
    """``; the CSV's labels are: a (12), b (3)`` plus a suggestion for each class in ``missing``."""
    counts = csv_labels(config)
    if not counts:
        return ""
    hint = f"; the CSV's {config.label_column} column holds: " + ", ".join(
        f"{k} ({v})" for k, v in sorted(counts.items())
    )
    for c in missing:
        hint += f"; for {c!r}{suggestion(c, list(counts)) or ' no close label'}"
    return hint
