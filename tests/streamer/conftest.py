"""Fixtures of the streamer tests: inference engines that are closed after use."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from streamer_help import make_model_file

from sampler.model import SampledClassifier
from streamer.inference import InferenceEngine


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferenceEngine]:
    """One engine per test module: an untrained DAS model (T = 8, k = 4, 32 px) on the CPU."""
    model = SampledClassifier.load(make_model_file(tmp_path_factory.mktemp("m") / "engine.pt", num_frames=8, k=4))
    eng = InferenceEngine(model, device="cpu")
    yield eng
    eng.close()


@pytest.fixture
def make_engine() -> Iterator[Callable[..., InferenceEngine]]:
    """``make_engine(model, **options)``: an :class:`InferenceEngine`, closed when the test ends."""
    engines: list[InferenceEngine] = []

    def make(model: SampledClassifier, **options: Any) -> InferenceEngine:
        eng = InferenceEngine(model, **options)
        engines.append(eng)
        return eng

    yield make
    for eng in engines:
        eng.close()
