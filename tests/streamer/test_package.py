"""The model package: the runtime without torch.

- the demo package and its torch model agree through the engine on real windows (POCUS clips
  and the synthetic stream): identical picks, probabilities within 1e-4;
- every exportable sampler's package orders frames as its torch sampler does;
- ``das-stream run`` on the demo package in a process where ``import torch`` fails;
- the CLI answers without importing torch, OpenCV or PyAV for --help, subscribe, info, cluster status.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from streamer_help import make_model_file

from core.errors import ConfigError, EngineError, ModelFileError
from sampler.export import export_package
from sampler.model import SampledClassifier
from sampler.package import PackageModel
from sampler.package_file import is_package, read_package
from sources.frame import Frame
from sources.synthetic import SyntheticSource
from streamer.app import demo_model_path
from streamer.bench import windows_of as windows
from streamer.inference import InferenceEngine
from training.export_check import check_windows

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-4


def shared_pocus() -> Path | None:
    """The POCUS videos of shared/data (beside the repository, or above a worktree of it)."""
    for parent in ROOT.parents:
        if (parent / "shared" / "data" / "pocus" / "videos_index.csv").is_file():
            return parent / "shared" / "data" / "pocus"
    return None


@pytest.fixture(scope="module")
def demo_engines():
    """The demo torch model on the ONNX engine (today's CPU default) and the demo package."""
    torch_model = SampledClassifier.load(demo_model_path())
    return (
        InferenceEngine(torch_model, device="cpu", backend="onnx", max_embed_batch=16),
        InferenceEngine(PackageModel(demo_model_path(package=True), device="cpu"), max_embed_batch=16),
    )


def assert_agree(engines, ws, batch=3, *, early_exit=True):
    """Both engines pick the same frames, exit alike and agree on the probabilities, on windows
    whose answers differ (by far more than the tolerance: agreement means something)."""
    a_eng, b_eng = engines
    probs = []
    for i in range(0, len(ws), batch):
        part = ws[i : i + batch]
        for a, b in zip(a_eng.process(part, early_exit=early_exit), b_eng.process(part, early_exit=early_exit)):
            assert (a.selected, a.exit) == (b.selected, b.exit)
            if not a.window.frames:  # a flush that only retires frames
                continue
            assert 1 <= len(a.selected) <= a_eng.k
            np.testing.assert_allclose(a.probs, b.probs, rtol=0, atol=TOLERANCE)
            probs.append(a.probs)
    assert np.ptp(np.array(probs), axis=0).max() > 20 * TOLERANCE
    assert a_eng.cached == b_eng.cached == 0


def test_demo_package_agrees_with_the_torch_model_on_the_synthetic_stream(demo_engines):
    async def collect():
        source = SyntheticSource(name="synthetic", pacing=False, size=demo_engines[0].input_size, frames=160)
        async with source:
            return [frame async for frame in source]

    frames = asyncio.run(collect())
    for eng in demo_engines:  # frames handed over on arrival, as the pipeline does
        for f in frames:
            eng.accept(f.stream, f)
    assert_agree(demo_engines, windows(frames, 16, 16))


def test_demo_package_agrees_with_the_torch_model_on_pocus_clips(demo_engines):
    from sources.video import read_video

    root = shared_pocus()
    if root is None:
        pytest.skip("shared/data/pocus is not beside the repository")
    with open(root / "videos_index.csv") as f:
        rows = list(csv.DictReader(f))
    picked = {}
    for row in rows:  # one convex clip per class
        if row["probe"] == "convex" and row["class_from_prefix"] not in picked:
            picked[row["class_from_prefix"]] = root / row["path"]
    size = demo_engines[0].input_size
    for n, path in enumerate(sorted(picked.values())[:3]):
        images, _ = read_video(path, size=size, max_frames=56)
        frames = [Frame(f"pocus{n}", i, float(i), image) for i, image in enumerate(images)]
        # overlapping: the cache serves later windows; every window uses k frames (the demo's exit
        # rule would settle them on one, where a synthetic-trained model says b_lines for all)
        assert_agree(demo_engines, windows(frames, 16, 8), early_exit=False)


@pytest.mark.parametrize(
    "method, options",
    [
        ("das", {}),
        ("das", {"selection": "segments"}),
        ("uniform", {}),
        ("uniform", {"nested": True}),
        ("full", {}),
        ("dps", {}),
    ],
)
def test_every_exportable_sampler_orders_as_its_torch_sampler(tmp_path, method, options):
    from sampler.torch_model import TorchWindowModel

    path = make_model_file(tmp_path / f"{method}.pt", method=method, num_frames=8, k=4)
    model = SampledClassifier.load(path)
    if options:  # a variant: rebuild with the sampler's options, same weights where they fit
        from dataclasses import replace

        from sampler.model import build_model

        torch.manual_seed(1)
        variant = build_model(replace(model.config, sampler=options))
        variant.classifier.load_state_dict(model.classifier.state_dict())  # the calibrated backbone
        model = variant
    out, check = export_package(model, tmp_path / f"{method}.dasp", *check_windows(model))
    assert check["picks_identical"] == check["windows"] == 24 and check["max_abs_prob_diff"] <= TOLERANCE
    package, reference = PackageModel(out, device="cpu"), TorchWindowModel(model, "cpu")
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (5, 8, 16, 16), dtype=np.uint8)
    small[1, 3] = 0  # an empty frame (lost contact)
    usable = np.ones((5, 8), bool)
    usable[2, 5:] = False  # a padded window
    usable &= small.reshape(5, 8, -1).max(axis=2) > 0
    stats = None
    if package.uses_stats:
        stats = package.frame_stats(small.reshape(40, 16, 16)).reshape(5, 8, -1)
    np.testing.assert_array_equal(package.order(small, stats, usable), reference.order(small, stats, usable))


def test_random_package_orders_usable_frames_first_and_adps_and_learned_das_are_not_exportable(tmp_path):
    model = SampledClassifier.load(make_model_file(tmp_path / "random.pt", method="random", num_frames=8, k=4))
    package = PackageModel(export_package(model, tmp_path / "random.dasp", *check_windows(model))[0], device="cpu")
    usable = np.ones((3, 8), bool)
    usable[0, ::2] = False
    order = package.order(np.zeros((3, 8, 16, 16), np.uint8), None, usable)
    assert sorted(order[0, :4]) == [1, 3, 5, 7] and all(sorted(row) == list(range(8)) for row in order)
    adps = SampledClassifier.load(make_model_file(tmp_path / "adps.pt", method="adps", num_frames=8, k=4))
    with pytest.raises(ConfigError, match="adps models are not exportable to a package: .*LSTM"):
        export_package(adps, tmp_path / "adps.dasp", *check_windows(adps))
    assert not (tmp_path / "adps.dasp").exists()
    from dataclasses import replace

    from sampler.model import build_model

    learned = build_model(replace(model.config, method="das", sampler={"features": "both"}))
    with pytest.raises(ConfigError, match="das models are not exportable to a package: DAS with both features"):
        export_package(learned, tmp_path / "learned.dasp", *check_windows(learned))


def test_a_package_that_disagrees_is_not_written(tmp_path, monkeypatch):
    """The self-check fails the export when the package's picks differ from the torch model's."""
    import sampler.package as package_module

    model = SampledClassifier.load(make_model_file(tmp_path / "das.pt"))
    monkeypatch.setattr(package_module, "by_priority", lambda p, u, first=None: np.argsort(p, axis=1, kind="stable"))
    with pytest.raises(ModelFileError, match=r"disagrees with the torch model on \d+ of 24 check windows"):
        export_package(model, tmp_path / "das.dasp", *check_windows(model))
    assert not list(tmp_path.glob("das.dasp*"))


def test_damaged_and_foreign_files_are_one_line_errors(tmp_path):
    good = demo_model_path(package=True)
    card, graphs = read_package(good)
    assert is_package(good) and not is_package(demo_model_path())  # torch.save files are zips too
    truncated = tmp_path / "cut.dasp"
    truncated.write_bytes(good.read_bytes()[:100_000])
    with pytest.raises(ModelFileError, match="damaged or not a package"):
        PackageModel(truncated)
    with pytest.raises(EngineError, match="engine torch runs torch model files"):
        InferenceEngine(PackageModel(good, device="cpu"), backend="torch")


BLOCK_TORCH = """
import importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: this process has no torch)")
sys.meta_path.insert(0, _NoTorch())
"""


def run_cli(args, *, env_extra=None, blocker=None, timeout=120):
    env = {**os.environ, **(env_extra or {})}
    if blocker is not None:  # a sitecustomize that runs before anything else
        env["PYTHONPATH"] = os.pathsep.join([str(blocker), env.get("PYTHONPATH", str(ROOT))])
    return subprocess.run(
        [sys.executable, "-m", "das_stream.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def test_run_on_the_demo_package_where_torch_cannot_be_imported(tmp_path, demo_engines):
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_TORCH)
    check = run_cli(["info", str(demo_model_path())], blocker=blocker)  # the blocker works: a torch file needs torch
    assert check.returncode == 2 and "pip install 'das-stream[torch]'" in check.stderr
    out = tmp_path / "out.jsonl"
    spec = "synthetic:?frames=96&seed=5"
    proc = run_cli(["run", "--source", spec, "--no-pacing", "--jsonl", str(out), "--quiet"], blocker=blocker)
    assert proc.returncode == 0, proc.stderr
    assert "model package" in proc.stderr and "demo.dasp" in proc.stderr  # it says what it loaded
    predictions = [m for m in map(json.loads, out.read_text().splitlines()) if "probs" in m]
    assert len(predictions) == 6
    # the same stream through the torch model in this process: the same picks and probabilities
    from sources.spec import parse_source

    async def collect():
        source = parse_source(spec, pacing=False, gray=True, size=112)
        async with source:
            return [frame async for frame in source]

    frames = asyncio.run(collect())
    reference = demo_engines[0].process(windows(frames, 16, 16))
    for message, ref in zip(predictions, reference):
        assert list(message["probs"]) == list(demo_engines[0].class_names)
        np.testing.assert_allclose(list(message["probs"].values()), ref.probs, rtol=0, atol=TOLERANCE)


HEAVY = ("torch", "cv2", "av", "onnxruntime", "sklearn", "matplotlib")
PROBE = """
import json, sys
from das_stream.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps([m for m in {heavy!r} if m in sys.modules]))
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["subscribe", "--help"],
        ["info", str(demo_model_path(package=True))],
        ["cluster", "status", "--address", "127.0.0.1:9", "--connect-timeout", "0.5"],
    ],
)
def test_the_cli_answers_without_importing_heavy_packages(args):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"{args} imported {loaded}"


def test_the_cluster_ships_and_serves_a_package(tmp_path):
    """A cluster node gets the package's bytes: it loads them without torch's model code and its
    replica embeds with the package's own backbone graph (the cluster's engine names a torch backend)."""
    pytest.importorskip("ray")
    from streamer.cluster.config import ClusterConfig
    from streamer.cluster.driver import read_model
    from streamer.cluster.serve import load_model_bytes, make_embedder

    path = demo_model_path(package=True)
    data, model = read_model(ClusterConfig(model=str(path), sources=("synthetic:",)))
    assert data == path.read_bytes() and model.kind == "package" and model.k == 8
    node_model = load_model_bytes(data)
    assert isinstance(node_model, PackageModel) and node_model.card == model.card
    embedder = make_embedder(node_model, "torch", "cpu", max_batch=16)
    assert embedder.name == "onnx"
    frames = np.random.default_rng(0).integers(0, 256, (5, 112, 112), dtype=np.uint8)
    np.testing.assert_allclose(embedder.embed(frames), node_model.embed(frames), rtol=1e-4, atol=1e-5)
