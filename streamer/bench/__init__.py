"""`das-stream bench` and the pieces the scripts in benchmarks/ and the tests build on.

- :mod:`.suite`: the suite (:func:`run_bench`, its items and :class:`BenchSettings`);
- :mod:`.inputs`: its models, frames, windows, video file and replayed live stream;
- :mod:`.broker`: a throwaway Mosquitto on 127.0.0.1 (the tests' brokers too).
"""

from .broker import MosquittoBroker, MosquittoOptions, find_mosquitto, free_port, local_broker
from .inputs import FrameMaker, ReplaySource, bench_models, headline, make_video, windows_of
from .suite import ITEMS, BenchSettings, capacity_point, machine, replay, run_bench, to_json

__all__ = [
    "ITEMS",
    "BenchSettings",
    "FrameMaker",
    "MosquittoBroker",
    "MosquittoOptions",
    "ReplaySource",
    "bench_models",
    "capacity_point",
    "find_mosquitto",
    "free_port",
    "headline",
    "local_broker",
    "machine",
    "make_video",
    "replay",
    "run_bench",
    "to_json",
    "windows_of",
]
