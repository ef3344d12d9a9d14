"""The `das-stream` command line: the only place that parses arguments.

Subcommands: run, subscribe, train, evaluate, compare, bench. Errors a user can cause are printed
as one line (``das-stream: error: ...``) with a non-zero exit status; programming errors stay
tracebacks.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sampler.errors import SamplerError
from sinks.errors import SinkError
from sources.errors import SourceError

# The user-caused errors (see docs/design.md); ConfigError, ModelFileError and DataError are SamplerErrors.
USER_ERRORS: tuple[type[BaseException], ...] = (SamplerError, SourceError, SinkError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="das-stream",
        description="Real-time adaptive frame selection for ultrasound streams (DAS).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run_commands(sub)
    _add_training_commands(sub)
    return parser


# --- streaming commands (run, subscribe, bench) ---
def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    pass
# --- end streaming commands ---


# --- training commands (train, evaluate, compare) ---
def _add_training_commands(sub: argparse._SubParsersAction) -> None:
    pass
# --- end training commands ---


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["run"]
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except USER_ERRORS as exc:
        print(f"das-stream: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
