"""Export a torch model to a model package (``das-stream export MODEL --out NAME.dasp``).

The package (:mod:`sampler.package`) holds the window model as ONNX graphs and a JSON card:
the sampler's per-frame features (``frame_stats``) and scores (``scores``, DAS), the backbone
(``backbone``, dynamic batch) and the masked pooling head (``head``, dynamic batch and number
of embeddings), with the order rule, preprocessing, provenance and the self-check's figures in
the card. The runtime runs it with ONNX Runtime and numpy, without torch.

The self-check runs the exported package and the torch model on real windows (the synthetic
generator's, or video files with the model's preprocessing) the way ``das-stream run`` does
(feature-size copies, order, embed the usable picks, head) and fails the export unless every
window's picks are identical and every probability is within :data:`TOLERANCE`.
"""

from __future__ import annotations

import copy
import datetime
import io
import os
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.errors import ConfigError, ModelFileError

from .classifier import FrameClassifier
from .das import DASSampler
from .features import frame_stats, with_motion
from .model import SampledClassifier
from .package import PackageModel, classify_windows
from .package_file import sha256, write_package
from .torch_model import TorchWindowModel, sampler_card, window_card

TOLERANCE = 1e-4  # the largest probability difference the self-check accepts
OPSET = 17


def onnx_bytes(module: nn.Module, args: tuple, inputs: list[str], outputs: list[str], dynamic: dict) -> bytes:
    """``module`` traced to an ONNX graph (the TorchScript exporter, opset 17), as bytes."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            module.eval(),
            args,
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter takes a file object; the stub says path
            dynamo=False,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=OPSET,
        )
    return buffer.getvalue()


class _Embed(nn.Module):
    def __init__(self, classifier: FrameClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.classifier.embed(frames)


class _Head(nn.Module):
    def __init__(self, classifier: FrameClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.classifier.classify(emb, mask).softmax(dim=1)


class _FrameStats(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frame_stats(frames, self.size)


class _Scores(nn.Module):
    """DAS's per-frame scores a_base (B, T) from the window's feature-size copies (for the motion)
    and its frames' features made on arrival, which its order ranks (:meth:`DASSampler.order`)."""

    def __init__(self, sampler: DASSampler) -> None:
        super().__init__()
        self.sampler = sampler

    def forward(self, small: torch.Tensor, stats: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
        return self.sampler.attention_from_features(with_motion(stats, small), usable).base


def backbone_graph(model: SampledClassifier) -> bytes:
    """The backbone (and projection) of a CPU copy: uint8 (N, 1, S, S) -> float32 (N, E), dynamic N."""
    S = model.config.input_size
    classifier = copy.deepcopy(model.classifier).cpu().eval()  # export never touches the GPU
    return onnx_bytes(
        _Embed(classifier),
        (torch.zeros(2, 1, S, S, dtype=torch.uint8),),
        ["frames"],
        ["embedding"],
        {"frames": {0: "n"}, "embedding": {0: "n"}},
    )


def package_graphs(model: SampledClassifier) -> dict[str, bytes]:
    """Every graph a package of ``model`` holds (see :mod:`sampler.package`)."""
    c, card = model.config, sampler_card(model)
    if card.get("exportable") is False:
        raise ConfigError(f"{c.method} models are not exportable to a package: {card['why']}; run the torch model file")
    B, T, fs, E = 2, c.num_frames, c.feature_size, model.classifier.embed_dim
    graphs = {"backbone": backbone_graph(model)}
    graphs["head"] = onnx_bytes(
        _Head(model.classifier),
        (torch.zeros(B, c.k, E), torch.ones(B, c.k, dtype=torch.bool)),
        ["emb", "mask"],
        ["probs"],
        {"emb": {0: "b", 1: "k"}, "mask": {0: "b", 1: "k"}, "probs": {0: "b"}},
    )
    if card.get("stats"):
        graphs["frame_stats"] = onnx_bytes(
            _FrameStats(fs),
            (torch.zeros(B, 1, fs, fs, dtype=torch.uint8),),
            ["frames"],
            ["stats"],
            {"frames": {0: "n"}, "stats": {0: "n"}},
        )
    if card["order"] in ("scores", "segments"):
        assert isinstance(model.sampler, DASSampler)  # the orders by DAS's frame scores
        graphs["scores"] = onnx_bytes(
            _Scores(model.sampler),
            (
                torch.zeros(B, T, fs, fs, dtype=torch.uint8),
                torch.zeros(B, T, card["stats_dim"]),
                torch.ones(B, T, dtype=torch.bool),
            ),
            ["small", "stats", "usable"],
            ["scores"],
            {"small": {0: "b"}, "stats": {0: "b"}, "usable": {0: "b"}, "scores": {0: "b"}},
        )
    return graphs


def frame_size(model: SampledClassifier) -> int:
    return int(model.preprocessing.get("size") or model.config.input_size)


def compare(reference: Any, candidate: Any, frames: np.ndarray, valid: np.ndarray, batch: int = 8) -> dict[str, Any]:
    """Run both window models on the same windows, as the runtime does; the agreement figures."""
    runs = [
        [classify_windows(m, frames[i : i + batch], valid[i : i + batch]) for i in range(0, len(frames), batch)]
        for m in (reference, candidate)
    ]
    (a_picks, a), (b_picks, b) = ((np.concatenate(p), np.concatenate(q)) for p, q in (zip(*r) for r in runs))
    same = (a_picks == b_picks).all(axis=1)
    return {
        "windows": int(len(frames)),
        "picks_identical": int(same.sum()),
        "top_class_agree": int((a.argmax(1) == b.argmax(1)).sum()),
        "max_abs_prob_diff": float(np.abs(a - b).max()),
        # how much the windows' answers differ: agreement on saturated outputs would prove nothing
        "prob_spread": float(np.ptp(a, axis=0).max()),
        "tolerance": TOLERANCE,
    }


def export_package(
    model: SampledClassifier,
    out: str | os.PathLike,
    windows: tuple[np.ndarray, np.ndarray],
    check_source: str,
    *,
    source: str | os.PathLike | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Write ``model`` as a package at ``out`` after the self-check passes on ``windows`` (gray
    uint8 frames (N, T, S, S) at the model's frame size and their (N, T) mask of real frames;
    ``check_source`` says what they are, e.g. :func:`training.export_check.synthetic_windows`);
    returns the path and the check's figures. Raises ModelFileError (nothing written) when the
    package disagrees."""
    out = Path(out)
    model = model.cpu().eval()
    graphs = package_graphs(model)
    card = window_card(model, Path(source).name if source else None)
    card["provenance"].update(
        {
            "source_sha256": sha256(Path(source).read_bytes()) if source else None,
            "exported": datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
            "exporter": {"torch": torch.__version__, "das_stream": _version("das-stream"), "opset": OPSET},
        }
    )
    tmp = out.with_name(out.name + ".check")
    write_package(tmp, card, graphs)
    try:
        frames, valid = windows
        reference, candidate = TorchWindowModel(model, "cpu"), PackageModel(tmp, device="cpu")
        if card["sampler"]["order"] == "random":  # torch's and numpy's noise differ: both take one draw per batch
            draws: dict[bytes, np.ndarray] = {}
            draw = candidate.order

            def one_draw(small: np.ndarray, stats: Any, usable: np.ndarray) -> np.ndarray:
                return draws.setdefault(small.tobytes() + usable.tobytes(), draw(small, stats, usable))

            reference.order = candidate.order = one_draw  # type: ignore[method-assign]
        figures = compare(reference, candidate, frames, valid)
        figures["source"] = check_source
        bad = figures["picks_identical"] < figures["windows"] or figures["max_abs_prob_diff"] > TOLERANCE
        if bad:
            raise ModelFileError(
                f"the package disagrees with the torch model on {figures['windows'] - figures['picks_identical']} of "
                f"{figures['windows']} check windows' picks, max |dp| = {figures['max_abs_prob_diff']:.2e} "
                f"(limit {TOLERANCE:g}); nothing written to {out}; report it with the model file"
            )
        write_package(out, {**card, "check": figures}, graphs)
    finally:
        tmp.unlink(missing_ok=True)
    return out, figures


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"
