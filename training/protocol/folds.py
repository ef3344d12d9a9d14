"""The fold rule of ``das-stream compare --folds K`` lives in :mod:`training.split` (the fixed
split of ``train`` uses it too); imported here under its old name."""

from ..split import fold_splits, groups_from_regex

__all__ = ["fold_splits", "groups_from_regex"]
