"""Watching a run: the live web view (``--web``), Prometheus metrics and ``/healthz`` (``--metrics``)."""

from .address import Address, parse_address
from .metrics import Metrics
from .observer import Observer

__all__ = ["Address", "Metrics", "Observer", "parse_address"]
