"""Export a whole window model (sampler, backbone, head) to ONNX (``das-stream export``).

The graph takes one window (B = 1; the sampler's adaptive pooling needs static shapes in the
TorchScript exporter): ``frames``: float32 (1, T, 1, S, S) in [0, 1] at the size training stored
(``preprocessing.size``, else the backbone's input size) and ``valid``: bool (1, T) (False for
padding), and returns ``probs`` (1, C) and ``indices`` (1, k), the picked positions. The sampler
runs in eval mode (deterministic picks). The model's config, class names and preprocessing are
stored as JSON in the ONNX file's metadata (``das_stream.config``, ``das_stream.preprocessing``,
``das_stream.class_names``), so a consumer resamples and resizes its stream as training did.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from core.errors import ModelFileError

from .model import SampledClassifier


class WindowModel(nn.Module):
    """(frames, valid) -> (class probabilities, picked positions), for export."""

    def __init__(self, model: SampledClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, picks = self.model(frames, valid)
        return logits.softmax(dim=1), picks.indices


def frame_size(model: SampledClassifier) -> int:
    return int(model.preprocessing.get("size") or model.config.input_size)


def export_onnx(model: SampledClassifier, path: str | os.PathLike, *, opset: int = 17) -> Path:
    """Write ``model`` as one ONNX graph (see the module docstring); returns the path."""
    import onnx

    path = Path(path)
    model = model.cpu().eval()
    c = model.config
    size = frame_size(model)
    frames = torch.rand(1, c.num_frames, 1, size, size)
    valid = torch.ones(1, c.num_frames, dtype=torch.bool)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), _sort_without_stable():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            WindowModel(model),
            (frames, valid),
            str(path),
            dynamo=False,
            input_names=["frames", "valid"],
            output_names=["probs", "indices"],
            opset_version=opset,
        )
    proto = onnx.load(str(path))
    meta = {
        "das_stream.config": json.dumps(c.to_dict()),
        "das_stream.class_names": json.dumps(list(c.class_names)),
        "das_stream.preprocessing": json.dumps(model.preprocessing or {"size": size, "gray": True, "fps": None}),
        "das_stream.inputs": "frames float32 (1,T,1,S,S) in [0,1]; valid bool (1,T)",
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


@contextlib.contextmanager
def _sort_without_stable() -> Iterator[None]:
    """The TorchScript exporter cannot export ``sort(stable=True)``. ONNX's TopK (what sort becomes)
    already puts equal values in index order, which is what ``stable`` asks for, so the flag is
    dropped while tracing."""
    sort, argsort = torch.Tensor.sort, torch.Tensor.argsort

    def plain_sort(self, *args, stable=None, **kwargs):
        return sort(self, *args, **kwargs)

    def plain_argsort(self, *args, stable=None, **kwargs):
        return argsort(self, *args, **kwargs)

    torch.Tensor.sort, torch.Tensor.argsort = plain_sort, plain_argsort
    try:
        yield
    finally:
        torch.Tensor.sort, torch.Tensor.argsort = sort, argsort


def check_export(model: SampledClassifier, path: str | os.PathLike, frames: torch.Tensor, valid: torch.Tensor) -> float:
    """Run the exported graph on a window and compare with torch; returns the largest probability
    difference. Raises ModelFileError when the top class or the picks differ."""
    import onnxruntime as ort

    model = model.cpu().eval()
    with torch.no_grad():
        probs, indices = WindowModel(model)(frames, valid)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_probs, onnx_indices = session.run(None, {"frames": frames.numpy(), "valid": valid.numpy()})
    diff = float(abs(torch.from_numpy(onnx_probs) - probs).max())
    if (onnx_probs.argmax(1) != probs.numpy().argmax(1)).any() or (onnx_indices != indices.numpy()).any():
        raise ModelFileError(
            f"the ONNX export {path} disagrees with the torch model on a window (top class or picks); report it"
        )
    return diff
