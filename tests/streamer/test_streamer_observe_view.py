"""What the web view is fed: the sampler's per-frame scores (why these frames were picked), the
frame at its own aspect ratio, and a chart axis that fits the data."""

from __future__ import annotations

import base64
import time

import aiohttp
import cv2
import numpy as np
import pytest
from streamer_help import make_model_file

from sampler.model import SampledClassifier
from sampler.package import PackageModel
from sinks.messages import Prediction
from sources.frame import Frame
from sources.synthetic import encode_video
from sources.video import VideoSource
from streamer.app import demo_model_path
from streamer.inference import InferenceEngine
from streamer.observe import Observer
from streamer.window import Window

T, K = 8, 4


def window(stream: str, n: int, *, seed: int = 0, empty: tuple[int, ...] = (), size: int = 32) -> Window:
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        image = rng.integers(0, 255, (size, size), dtype=np.uint8)
        if i in empty:
            image[:] = 0  # lost contact: an empty frame, never picked before a real one
        frames.append(Frame(stream, i, time.time(), image))
    return Window(stream=stream, index=0, num_frames=16, frames=tuple(frames), retire=(), t_close=time.time())


def _engine(kind: str, tmp_path) -> InferenceEngine:
    if kind == "das package":  # the bundled demo package: ONNX graphs, no torch in the order
        return InferenceEngine(PackageModel(demo_model_path(package=True), device="cpu"), max_windows=2)
    if kind == "das torch":
        return InferenceEngine(SampledClassifier.load(demo_model_path()), device="cpu", max_windows=2)
    model = make_model_file(tmp_path / "uniform.pt", method="uniform", num_frames=16, k=8, input_size=112)
    return InferenceEngine(SampledClassifier.load(model), device="cpu", max_windows=2)


def test_window_results_carry_the_samplers_score_of_each_frame(tmp_path):
    n, k = 16, 8  # the demo model's window and picks
    full, short = window("a", n, seed=1, empty=(2,), size=112), window("b", n - 5, seed=2, size=112)
    scored = {}
    for kind in ("das package", "das torch", "uniform"):
        engine = _engine(kind, tmp_path)
        try:
            results = engine.process([full, short])
        finally:
            engine.close()
        for w, res in zip((full, short), results):
            if kind == "uniform":  # picks by position: no score to show
                assert res.scores == ()
                continue
            assert len(res.scores) == len(w.frames)  # one per real frame, none for the padding
            # the picks are the frames the sampler scored highest (the empty one last), as many as the
            # prediction used before the model's exit rule settled it: the score says why
            usable = [i for i, f in enumerate(w.frames) if f.image.any()]
            assert 1 <= len(res.selected) <= k
            best = sorted(usable, key=lambda i: -res.scores[i])[: len(res.selected)]
            assert sorted(w.frames[i].seq for i in best) == list(res.selected)
            assert len(set(res.scores)) > 1  # not a constant
            scored[kind, w.stream] = res.scores
    for stream in ("a", "b"):  # the package's exported scores are the torch sampler's (up to a constant)
        package, torch_scores = (np.array(scored[kind, stream]) for kind in ("das package", "das torch"))
        np.testing.assert_allclose(package - package.mean(), torch_scores - torch_scores.mean(), atol=2e-3)


class _Result:
    """The attributes the observer reads from a WindowResult."""

    def __init__(self, window: Window, selected: tuple[int, ...], scores: tuple[float, ...] = ()) -> None:
        self.window, self.selected, self.scores = window, selected, scores


def _decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert image is not None
    return image


async def test_the_live_image_is_the_source_image_at_its_own_aspect_and_thumbnails_follow_it(tmp_path):
    # a 200x120 (5:3) video that the source resizes to the model's 32x32 square
    images = [np.tile(np.linspace(0, 255, 200, dtype=np.uint8), (120, 1)) // (1 + i % 3) for i in range(12)]
    source = VideoSource(encode_video(tmp_path / "wide.mp4", images, fps=30), size=32, pacing=False)
    observer = Observer(sources=[source], web="127.0.0.1:0")
    async with observer, source, aiohttp.ClientSession() as session:
        frames = []
        async for frame in source:
            observer.on_frame(source.name, frame)
            frames.append(frame)
        assert {f.image.shape for f in frames} == {(32, 32)}  # what the model sees
        assert source.preview.image.shape == (120, 200)  # what a person sees: the image as it came
        url = observer.urls["web"]
        async with session.get(f"{url}/live/{source.name}.jpg") as r:
            assert r.status == 200
            assert _decode(await r.read()).shape == (120, 200)
        # a small panel asks for what it shows (rounded up to 160 px steps); never more than the image
        for asked, shape in ((100, (96, 160)), (5000, (120, 200))):
            async with session.get(f"{url}/live/{source.name}.jpg?size={asked}") as r:
                assert _decode(await r.read()).shape == shape
        async with session.get(f"{url}/live/{source.name}.jpg?size=big") as r:
            assert r.status == 400
        async with session.get(f"{url}/api/state") as r:
            state = (await r.json())["streams"][source.name]
        assert state["aspect"] == pytest.approx(200 / 120)

        w = Window(stream=source.name, index=0, num_frames=T, frames=tuple(frames[:T]), retire=(), t_close=time.time())
        scores = tuple(float(i % 5) for i in range(T))
        observer.on_window(_Result(w, (0, 2, 4, 6), scores), _prediction(source.name, w))
        async with session.get(f"{url}/api/window/{source.name}") as r:
            shown = await r.json()
        assert shown["scores"] == list(scores) and shown["selected"] == [0, 2, 4, 6]
        thumbs = [_decode(base64.b64decode(t.split(",", 1)[1])) for t in shown["thumbs"]]
        assert len(thumbs) == T
        assert [t.shape[1] / t.shape[0] for t in thumbs] == [pytest.approx(200 / 120, rel=0.02)] * T


def _prediction(stream: str, w: Window) -> Prediction:
    return Prediction(
        stream=stream,
        window=w.index,
        first_seq=w.frames[0].seq,
        last_seq=w.frames[-1].seq,
        t_first=w.frames[0].t_capture,
        t_last=w.frames[-1].t_capture,
        selected=(0, 2, 4, 6),
        probs={"a": 0.25, "b": 0.75},
        label="b",
        model="m",
        latency_ms=1.0,
    )


async def test_favicon_is_served():
    observer = Observer(web="127.0.0.1:0")
    async with observer, aiohttp.ClientSession() as session:
        async with session.get(observer.urls["web"] + "/favicon.ico") as r:
            assert r.status == 200 and r.headers["Content-Type"] == "image/svg+xml"
            assert (await r.text()).startswith("<svg")
