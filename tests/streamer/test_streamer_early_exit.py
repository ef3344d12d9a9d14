"""Best-first embedding with an early exit, through the engine and the pipeline: windows stop
adding frames when the model's exit rule says the prediction is settled; decisions do not depend
on batching or on the engine (torch or the ONNX package); under load ``shrink`` lowers k_max
before any frame is dropped; every frame is still accounted for."""

from __future__ import annotations

import time

import numpy as np
import pytest
from streamer_help import ListSink, make_model_file

from core.exit import ExitRule
from sampler.export import export_package
from sampler.model import SampledClassifier
from sampler.package import PackageModel
from sources.frame import Frame
from sources.synthetic import SyntheticSource
from streamer.inference import InferenceEngine
from streamer.pipeline import Pipeline, PipelineSettings
from streamer.window import Windower

T, K = 8, 4


def frames(n: int, size: int, seed: int = 0, stream: str = "s") -> list[Frame]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = rng.integers(0, 256, (size, size), dtype=np.uint8)
        img[: size // 2] = rng.integers(0, 256) // (1 + i % 3)  # brightness varies: frames rank differently
        out.append(Frame(stream=stream, seq=i, t_capture=float(i), image=img))
    return out


def windows(fs: list[Frame], stride: int = T) -> list:
    w = Windower(stream=fs[0].stream, num_frames=T, stride=stride)
    out = [x for f in fs if (x := w.push(f)) is not None]
    if (last := w.flush()) is not None:
        out.append(last)
    return out


@pytest.fixture(scope="module")
def model_with_exit(tmp_path_factory):
    """A tiny DAS model whose exit threshold is the median top probability after one frame on
    these windows: about half of them exit early."""
    path = make_model_file(tmp_path_factory.mktemp("m") / "das.pt", num_frames=T, k=K)
    model = SampledClassifier.load(path)
    eng = InferenceEngine(model, device="cpu", backend="torch")
    ws = windows(frames(96, eng.input_size))
    first = [max(r.probs) for r in eng.process(ws, k_max=1)]
    model.meta["exit"] = ExitRule(threshold=float(np.median(first))).to_dict()
    model.save(path)
    return path


def engine(path, **kw) -> InferenceEngine:
    return InferenceEngine(SampledClassifier.load(path), device="cpu", backend="torch", **kw)


def test_settled_windows_stop_early_and_the_rest_use_k_max(model_with_exit):
    eng = engine(model_with_exit)
    assert eng.exit_rule.early
    results = eng.process(windows(frames(96, eng.input_size)))
    exits = [r.exit for r in results]
    assert "confident" in exits and "k_max" in exits
    for r in results:
        assert r.k_max == K
        if r.exit == "confident":
            assert len(r.selected) in (1, 2) and max(r.probs) >= eng.exit_rule.threshold
        else:
            assert len(r.selected) == K
    fixed = engine(model_with_exit).process(windows(frames(96, eng.input_size)), early_exit=False)
    assert all(r.exit == "k_max" and len(r.selected) == K for r in fixed)
    assert sum(r.frames_embedded for r in results) < sum(r.frames_embedded for r in fixed)
    for early, full in zip(results, fixed):  # the early picks are the first ones of the same order
        assert set(early.selected) <= set(full.selected)


def test_decisions_are_the_same_one_window_at_a_time_or_batched_across_streams(model_with_exit):
    eng_a, eng_b = engine(model_with_exit), engine(model_with_exit)
    size = eng_a.input_size
    streams = [windows(frames(48, size, seed=s, stream=f"s{s}")) for s in range(3)]
    alone = {(r.window.stream, r.window.index): r for ws in streams for w in ws for r in eng_a.process([w])}
    batched = {}
    for i in range(max(map(len, streams))):
        batch = [ws[i] for ws in streams if i < len(ws)]
        batched.update({(r.window.stream, r.window.index): r for r in eng_b.process(batch)})
    assert alone.keys() == batched.keys()
    for key, a in alone.items():
        b = batched[key]
        assert (a.exit, a.selected) == (b.exit, b.selected), key
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)


def test_the_torch_model_and_its_package_make_the_same_exits(model_with_exit, tmp_path):
    model = SampledClassifier.load(model_with_exit)
    eng = engine(model_with_exit)
    ws = windows(frames(64, eng.input_size, seed=5))
    check = (np.stack([np.stack([f.image for f in w.frames]) for w in ws[:4]]), np.ones((4, T), bool))
    package, _ = export_package(model, tmp_path / "das.dasp", check, "test windows", source=model_with_exit)
    pkg = InferenceEngine(PackageModel(package, device="cpu"), max_embed_batch=16)
    assert pkg.exit_rule == eng.exit_rule
    for a, b in zip(eng.process(ws), pkg.process(ws)):
        assert (a.exit, a.selected) == (b.exit, b.selected)
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-4)


def test_a_budget_of_no_frames_still_answers_every_window_with_its_first_frame(model_with_exit):
    eng = engine(model_with_exit)
    results = eng.process(windows(frames(64, eng.input_size)), allowance=0)
    assert all(len(r.selected) == 1 for r in results)
    assert {r.exit for r in results} <= {"confident", "budget"} and "budget" in [r.exit for r in results]


class SlowEmbedder:
    """The real embedder, ``delay`` seconds slower per frame: a classifier that cannot keep up."""

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.name, self.buckets = f"slow-{inner.name}", inner.buckets

    def embed(self, frames):
        time.sleep(self.delay * len(frames))
        return self.inner.embed(frames)

    def warm_up(self) -> None:
        self.inner.warm_up()

    @property
    def shapes_seen(self):
        return self.inner.shapes_seen


def accounted(s) -> bool:
    return s.frames_pending == 0 and s.frames_in == s.frames_forwarded + s.frames_skipped + s.frames_dropped


@pytest.fixture(scope="module")
def model_k8(tmp_path_factory):
    """T = 16, k = 8: eight times the backbone work at k_max than at k = 1."""
    return make_model_file(tmp_path_factory.mktemp("m8") / "das8.pt", num_frames=16, k=8)


async def run_live(path, policy: str, delay: float, seconds: float = 4.5):
    """A live 30 fps stream through an engine that needs ``delay`` s (a sleep: the margins below
    hold however loaded the CPU is) per embedded frame; one window per call, two may wait."""
    base = engine(path)
    eng = InferenceEngine(SampledClassifier.load(path), device="cpu", embedder=SlowEmbedder(base.embedder, delay))
    src = SyntheticSource(name="live", fps=30, size=eng.input_size, frames=int(30 * seconds), clip_frames=16)
    sink = ListSink()
    settings = PipelineSettings(stride=16, frame_queue=16, window_queue=2, max_batch_windows=1, early_exit=False)
    summary = await Pipeline(sources=[(src, policy)], engine=eng, sinks=[sink], settings=settings).run()
    return summary.final["live"], sink.predictions


async def test_shrink_lowers_k_max_instead_of_dropping_frames(model_k8):
    # 30 fps, a window of 16 frames every 0.53 s. At k = 8 and 0.12 s per frame the classifier
    # needs 0.96 s a window (1.8x too slow: the 48 frames the queues hold fill in 2 s); at k = 1
    # it needs 0.12 s (4.4x headroom).
    dropped, dropped_preds = await run_live(model_k8, "drop_oldest", 0.12)
    shrunk, shrunk_preds = await run_live(model_k8, "shrink", 0.12)
    assert dropped.frames_dropped > 0 and accounted(dropped)
    assert all(p.k_max == 8 for p in dropped_preds)
    assert shrunk.frames_dropped == 0 and accounted(shrunk)
    assert min(p.k_max for p in shrunk_preds) == 1 and shrunk.extra["k_max_shrinks"] >= 3
    assert all(len(p.selected) <= p.k_max for p in shrunk_preds)


@pytest.mark.parametrize("budget", [None, 2.0])
async def test_early_exit_keeps_the_accounting_identity_and_reports_exits(model_with_exit, budget):
    eng = engine(model_with_exit)
    src = SyntheticSource(name="s", pacing=False, size=eng.input_size, frames=200, clip_frames=16)
    sink = ListSink()
    settings = PipelineSettings(stride=4, budget=budget)  # 2 frames/s: almost every window stops at its first
    summary = await Pipeline(sources=[(src, "block")], engine=eng, sinks=[sink], settings=settings).run()
    final = summary.final["s"]
    assert accounted(final)
    exits = final.extra["exits"]
    if budget:
        assert exits["budget"] > 0 and final.extra["budget_fps"] == budget
    assert sum(exits.values()) == final.windows == len(sink.predictions)
    assert exits == {e: sum(p.exit == e for p in sink.predictions) for e in exits}
    per_window = final.extra["frames_per_window"]
    assert 1.0 <= per_window["mean"] <= K and per_window["p95"] <= K
    assert all(p.frames_used == len(p.selected) for p in sink.predictions)
