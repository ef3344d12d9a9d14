"""What a CSV index holds beyond ``data.classes``: rows with other labels (an error listing them,
or left out with ``data.drop_unknown``), with a "did you mean" for typos and case differences."""

from __future__ import annotations

import csv
import difflib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from core.errors import DataError

from .config import DataConfig


def csv_labels(config: DataConfig) -> Counter[str]:
    """Rows per label in the CSV's label column (empty when the file or column is missing)."""
    try:
        with config.file.open(newline="") as f:
            counts = Counter((row.get(config.label_column) or "").strip() for row in csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return Counter()
    counts.pop("", None)
    return counts


def suggestion(label: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'normal'?)`` when a choice equals ``label`` but for case, or is close to
    it (ignoring case), else ``""``."""
    lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(label.lower(), list(lower), n=1, cutoff=0.6)
    return f" (did you mean {lower[close[0]]!r}?)" if close else ""


def _by_label(rows: Sequence[tuple[int, str]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for line, label in rows:
        out.setdefault(label, []).append(line)
    return out


def unknown_labels_error(index: Path, rows: Sequence[tuple[int, str]], classes: Sequence[str]) -> DataError:
    """Every (CSV line, label) whose label is not in ``data.classes``, in one line."""
    parts = [
        f"{label!r}{suggestion(label, classes)} in row{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines))}"
        for label, lines in sorted(_by_label(rows).items())
    ]
    return DataError(
        f"video index {index}: {len(rows)} row(s) have a label that is not in data.classes {list(classes)}: "
        f"{'; '.join(parts)}; fix the labels, add the class to data.classes, or set data.drop_unknown: true to "
        "leave such rows out"
    )


def left_out_note(config: DataConfig, rows: Sequence[tuple[int, str]]) -> str | None:
    """The ``warning:`` line on rows left out by ``data.drop_unknown`` (None when there are none)."""
    if not rows or config.classes is None:
        return None
    parts = [
        f"{label!r} {len(lines)} row{'s' if len(lines) > 1 else ''}{suggestion(label, config.classes)}"
        for label, lines in sorted(_by_label(rows).items())
    ]
    return (
        f"warning: {len(rows)} of {sum(csv_labels(config).values())} rows of {config.file} left out "
        f"(data.drop_unknown), their label is not in data.classes {list(config.classes)}: {', '.join(parts)}"
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
