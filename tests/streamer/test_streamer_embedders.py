"""Static batch buckets, warm-up, the frame cache's ownership and failure rule, backend names."""

import logging
import threading

import numpy as np
import pytest
import torch
from streamer_help import make_model_file

from core.errors import EngineError
from sampler.model import SampledClassifier
from sources.frame import Frame
from streamer.inference import EMBEDDERS, InferenceEngine, Onnx, TorchEager, batch_buckets, resolve_backend
from streamer.window import Windower

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return SampledClassifier.load(make_model_file(tmp_path_factory.mktemp("m") / "das.pt", num_frames=8, k=4))


def clip(n, size, seed=0, stream="s"):
    from sources.synthetic import make_clip

    rng = np.random.default_rng(seed)
    images = np.concatenate([make_clip(i % 3, 8, size=size, rng=rng, empty_run_prob=0.0) for i in range(-(-n // 8))])
    return [Frame(stream=stream, seq=i, t_capture=float(i), image=img) for i, img in enumerate(images[:n])]


def windows(frames, T, S):
    w = Windower(stream=frames[0].stream, num_frames=T, stride=S)
    out = [x for f in frames if (x := w.push(f)) is not None]
    if (last := w.flush()) is not None:
        out.append(last)
    return out


def test_buckets_are_powers_of_two_up_to_the_largest_batch():
    assert batch_buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert batch_buckets(12) == (1, 2, 4, 8, 12)
    assert batch_buckets(1) == (1,)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_every_bucket_is_warmed_and_no_new_shape_appears_later(model, backend, caplog):
    pytest.importorskip("onnxruntime") if backend == "onnx" else None
    with caplog.at_level(logging.INFO, logger="streamer.inference.engine"):
        eng = InferenceEngine(model, device="cpu", backend=backend, max_embed_batch=16)
    warm = [r for r in caplog.records if "warmed up" in r.getMessage()]
    assert len(warm) == 1 and backend in warm[0].getMessage()  # one line, saying how long
    S = eng.input_size
    warmed = {(b, 1, S, S) for b in (1, 2, 4, 8, 16)}
    assert eng.embedder.shapes_seen == warmed
    seen_by_backbone = set()  # what the torch backbone module itself is called with
    if backend == "torch":
        eng.embedder.classifier.backbone.register_forward_pre_hook(lambda m, a: seen_by_backbone.add(a[0].shape[0]))
    # A varied run: several streams, strides 1-8, batches of 1-5 windows, partial last windows,
    # so the new picks per call take many different counts (1 .. 5 windows x 4 picks, and more).
    total = 0
    for n, stride, per_call, seed in ((29, 8, 1, 0), (40, 1, 5, 1), (37, 3, 2, 2), (21, 5, 4, 3), (90, 2, 5, 4)):
        ws = windows(clip(n, S, seed=seed, stream=f"s{seed}"), eng.num_frames, stride)
        for i in range(0, len(ws), per_call):
            total += sum(r.frames_embedded for r in eng.process(ws[i : i + per_call]))
    assert total > 50
    assert eng.embedder.shapes_seen == warmed  # nothing new after warm-up
    if backend == "torch":
        assert seen_by_backbone and seen_by_backbone <= {1, 2, 4, 8, 16}
    assert eng.cached == eng.held_copies == 0  # every window retired its frames


@pytest.mark.parametrize("cls", [TorchEager, Onnx])
def test_padded_outputs_equal_unpadded(model, cls):
    if cls is Onnx:
        pytest.importorskip("onnxruntime")
    emb = cls(model, torch.device("cpu"), max_batch=16)
    frames = np.stack([f.image for f in clip(13, model.config.input_size)])
    exact = torch.from_numpy(emb._forward(frames[:, None]))  # the backend on exactly 13 frames, no bucket
    assert exact.abs().max() > 1e-2
    emb.cost = {b: 1.0 for b in emb.buckets}  # a GPU-like cost: one padded call is cheapest
    emb._plans.clear()
    assert emb.plan(13) == (16,)
    padded = torch.from_numpy(emb.embed(frames))
    # float32 convolutions may sum in another order for another batch size (oneDNN picks kernels
    # per shape): equal within 1e-5 absolute plus 1e-4 relative, far below any decision's scale
    torch.testing.assert_close(padded, exact, rtol=1e-4, atol=1e-5)
    emb.cost = {b: b + 0.5 for b in emb.buckets}  # a CPU-like cost: the binary split, no padding
    emb._plans.clear()
    assert emb.plan(13) == (8, 4, 1) and emb.plan(40) == (16, 16, 8)
    torch.testing.assert_close(torch.from_numpy(emb.embed(frames)), exact, rtol=1e-4, atol=1e-5)


def test_a_cost_proportional_to_frames_plans_the_fewest_calls(model):
    # What warm-up fits on a CPU whose per-call overhead is lost in the noise (a fitted per-call
    # cost of 0): every split of n then costs the same, and the plan must not be n calls of 1-2
    # frames (that plan made a 16-frame ONNX embed 58 ms instead of 37 ms).
    emb = TorchEager(model, torch.device("cpu"), max_batch=16)
    for slope in (0.004, 0.0371, 1.3e-3):
        emb.measured = {b: slope * b for b in emb.buckets}
        emb.fit_costs()
        assert emb.plan(16) == (16,) and emb.plan(13) == (8, 4, 1) and emb.plan(7) == (4, 2, 1)
        assert emb.plan(40) == (16, 16, 8)


def test_a_failed_call_leaves_no_cache_entries(model):
    eng = InferenceEngine(model, device="cpu", backend="torch")
    frames = clip(24, eng.input_size)
    for f in frames:
        eng.accept("s", f)
    good = windows(frames[:16], 8, 2)  # stride 2: a window's later frames stay open after it
    eng.process(good[:2])  # embeddings and copies of open frames are now held
    assert eng.held_copies > 0 and eng.cached > 0
    broken = Frame(stream="s", seq=99, t_capture=99.0, image=np.zeros((3, 4, 5, 6), np.uint8))  # not an image
    bad = windows([*frames[16:23], broken], 8, 8)
    with pytest.raises(Exception):
        eng.process([good[2], *bad])
    assert eng.held_copies == 0 and eng.cached == 0
    (res,) = eng.process(windows(frames[8:16], 8, 8)[:1])  # and the engine still works
    assert len(res.selected) == eng.k and abs(sum(res.probs) - 1) < 1e-5


def test_frames_accepted_from_another_thread_are_copied_on_the_worker(model):
    eng = InferenceEngine(model, device="cpu", backend="torch")
    frames = clip(16, eng.input_size)
    owners = set()
    small_copy = eng.cache.small_copy

    def spy(stream, frame):
        owners.add(threading.get_ident())
        return small_copy(stream, frame)

    eng.cache.small_copy = spy
    t = threading.Thread(target=lambda: [eng.accept("s", f) for f in frames])
    t.start()
    t.join()
    eng.on_worker(lambda: None)  # the queued copies are made by now
    assert eng.held_copies == 16
    results = eng.process(windows(frames, 8, 8))
    assert owners == {eng._worker_id}  # only the worker thread touched the cache
    assert all(len(r.selected) == eng.k for r in results) and eng.held_copies == 0


def test_backend_names(model):
    cpu = torch.device("cpu")
    expected = "onnx" if Onnx is EMBEDDERS["onnx"] and _has_ort() else "torch"
    assert EMBEDDERS["torch"] is TorchEager  # the torch backends load on first use
    assert resolve_backend("auto", cpu) == expected
    assert resolve_backend("torch-cudagraph", cpu) == "torch-cudagraph"
    with pytest.raises(EngineError, match="unknown engine 'tensorrt'.*auto, torch, torch-cudagraph, onnx"):
        resolve_backend("tensorrt", cpu)
    with pytest.raises(EngineError, match="needs a CUDA device"):
        InferenceEngine(model, device="cpu", backend="torch-cudagraph")


def _has_ort():
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


@needs_cuda
def test_cuda_graph_embedder_matches_eager(model):
    from streamer.inference import TorchCudaGraph

    dev = torch.device("cuda")
    graph, eager = TorchCudaGraph(model, dev, max_batch=16), TorchEager(model, torch.device("cpu"), max_batch=16)
    graph.warm_up()
    frames = np.stack([f.image for f in clip(21, model.config.input_size)])
    a, b = torch.from_numpy(graph.embed(frames)), torch.from_numpy(eager.embed(frames))
    assert graph.shapes_seen == {(s, 1, *frames.shape[1:]) for s in graph.buckets}
    torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2 * b.abs().max().item())  # float16 on the GPU


@needs_cuda
def test_cuda_engine_agrees_with_cpu_and_sees_no_new_shape(model):
    gpu = InferenceEngine(model, device="cuda", backend="auto", max_embed_batch=16)
    cpu = InferenceEngine(model, device="cpu", backend="torch", max_embed_batch=16)
    assert gpu.backend == "torch-cudagraph"
    warmed = set(gpu.embedder.shapes_seen)
    ws = windows(clip(60, model.config.input_size), 8, 3)
    for i in range(0, len(ws), 3):
        for a, b in zip(gpu.process(ws[i : i + 3]), cpu.process(ws[i : i + 3])):
            assert a.selected == b.selected
            if a.probs:
                assert np.argmax(a.probs) == np.argmax(b.probs)
                np.testing.assert_allclose(a.probs, b.probs, atol=2e-2)
    assert gpu.embedder.shapes_seen == warmed


@needs_cuda
def test_onnx_runtime_on_cuda_uses_the_given_gpu(model):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider (onnxruntime-gpu)")
    index = torch.cuda.device_count() - 1
    emb = Onnx(model, torch.device(f"cuda:{index}"), max_batch=8)
    assert emb.providers[0] == "CUDAExecutionProvider"
    assert emb.session.get_provider_options()["CUDAExecutionProvider"]["device_id"] == str(index)
    frames = np.stack([f.image for f in clip(5, model.config.input_size)])
    ref = torch.from_numpy(TorchEager(model, torch.device("cpu"), max_batch=8).embed(frames))
    torch.testing.assert_close(torch.from_numpy(emb.embed(frames)), ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item())


@pytest.mark.parametrize("method", ["das", "adps"])
def test_features_made_on_arrival_give_the_same_picks_and_probs(tmp_path, method):
    """Per-frame sampler features computed as frames arrive (only motion, attention and top-k at
    the close) select exactly what the sampler selects from the whole window at the close."""
    m = SampledClassifier.load(make_model_file(tmp_path / f"{method}.pt", method=method, num_frames=8, k=4))
    early = InferenceEngine(m, device="cpu", backend="torch", max_embed_batch=8)
    late = InferenceEngine(m, device="cpu", backend="torch", max_embed_batch=8)
    assert early.features_on_arrival
    late.features_on_arrival = False  # the sampler's own select() on the window's copies
    frames = [*clip(30, m.config.input_size, seed=7)]
    frames[5] = Frame("s", 5, 5.0, np.zeros_like(frames[5].image))  # lost contact: an empty frame
    ws = windows(frames, 8, 3)  # overlapping, with a partial last window
    for f in frames:
        early.accept("s", f)
    early.on_worker(lambda: None)
    assert len(early.cache.stats) == 30  # made on arrival, before any window closed
    for i in range(0, len(ws), 2):
        for a, b in zip(early.process(ws[i : i + 2]), late.process(ws[i : i + 2])):
            assert a.selected == b.selected
            np.testing.assert_allclose(a.probs, b.probs, rtol=0, atol=1e-6)
    assert len(early.cache) == 0
