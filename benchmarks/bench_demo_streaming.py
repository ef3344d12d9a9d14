"""Streaming accuracy of demo models: what `das-stream run` with its default `synthetic:` source gets.

Held-out synthetic streams (the `synthetic:` source itself, unpaced, at the model's input size,
seeds --seed .. --seed+streams-1; training never draws from these generators: it seeds its
generators with [split_seed, split]) are cut into windows as the runtime cuts them (window T, stride S,
`training.video_eval.cut_windows`, checked here against `streamer.window.Windower` on the
first stream). A "video" is one class segment of the stream (`clip_frames` frames, one class);
its prediction is the mean of its windows' probabilities (`evaluate_videos`). Reports window-level
and video-level balanced accuracy per model, and the window-level accuracy on windows that hold
at least one frame with the class pattern visible vs. none (the generator's evidence mask; windows
without any evidence cannot be told apart, 1/3 is the best a model can do on them). Prints JSON.

    nice -n 15 .venv/bin/python benchmarks/bench_demo_streaming.py [--model PATH ...] [--streams 8]
        [--segments 12] [--seed 1000] [--stride T] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score

from core.exit import ExitRule, exit_round
from sampler.model import SampledClassifier
from sources.synthetic import CLASSES, SyntheticSource, render_clip
from streamer.app import demo_model_path
from streamer.window import Windower
from training.clips import cut_windows, windows_of_videos
from training.exits import Windows, operating_point, prefix_probs
from training.loop import evaluate
from training.video_eval import evaluate_videos


async def _collect(source: SyntheticSource) -> list:
    out = []
    async with source:
        async for frame in source:
            out.append(frame)
    return out


def stream_segments(seed: int, segments: int, *, size: int, clip_frames: int) -> tuple[list, list, list, list]:
    """One default-shaped `synthetic:` stream: its class segments' frames, labels and evidence masks.

    The frames come from the source; the evidence masks from re-rendering the same generator
    sequence (asserted equal to the source's frames)."""
    source = SyntheticSource(seed=seed, frames=segments * clip_frames, pacing=False, size=size, clip_frames=clip_frames)
    frames = asyncio.run(_collect(source))
    images = np.stack([f.image for f in frames])
    rng = np.random.default_rng(seed)
    videos, labels, evidence = [], [], []
    for s in range(segments):
        label = source.label_of(s * clip_frames)
        clip = render_clip(label, clip_frames, size=size, rng=rng)
        seg = images[s * clip_frames : (s + 1) * clip_frames]
        assert np.array_equal(seg, clip.frames), "the source's frames differ from the generator's"
        videos.append(seg)
        labels.append(CLASSES.index(label))
        evidence.append(clip.evidence)
    return videos, labels, evidence, frames


def check_cut_matches_windower(frames: list, window: int, stride: int) -> int:
    """cut_windows over the whole stream == the runtime Windower's windows (incl. the flushed one)."""
    w = Windower(stream="check", num_frames=window, stride=stride)
    runtime = [win for f in frames if (win := w.push(f)) is not None]
    if (last := w.flush()) is not None and last.frames:
        runtime.append(last)
    x, valid = cut_windows(np.stack([f.image for f in frames]), window, stride)
    assert len(runtime) == len(x), (len(runtime), len(x))
    for win, xi, vi in zip(runtime, x, valid):
        n = len(win.frames)
        assert vi.sum() == n and np.array_equal(xi[:n], np.stack([f.image for f in win.frames]))
    return len(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", help="model file (repeatable; default: the bundled demo.pt)")
    p.add_argument("--streams", type=int, default=8, help="held-out streams (seeds)")
    p.add_argument(
        "--segments", type=int, default=12, help="class segments per stream (they cycle through the classes)"
    )
    p.add_argument("--seed", type=int, default=1000, help="seed of the first stream")
    p.add_argument("--clip-frames", type=int, default=64, help="frames per class segment (the source's default 64)")
    p.add_argument("--stride", type=int, default=0, help="window stride (0: T, the runtime's default)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    models = a.model or [str(demo_model_path())]
    loaded = {path: SampledClassifier.load(path).eval() for path in models}
    sizes = {int(m.preprocessing.get("size") or m.config.input_size) for m in loaded.values()}
    windows = {m.config.num_frames for m in loaded.values()}
    if len(sizes) != 1 or len(windows) != 1:
        raise SystemExit(f"models differ in frame size {sizes} or window {windows}; compare like with like")
    size, window = sizes.pop(), windows.pop()
    stride = a.stride or window

    t0 = time.perf_counter()
    videos, labels, evidence = [], [], []
    for i in range(a.streams):
        v, lab, ev, frames = stream_segments(a.seed + i, a.segments, size=size, clip_frames=a.clip_frames)
        if i == 0:
            check_cut_matches_windower(frames, window, stride)
        videos += v
        labels += lab
        evidence += ev
    labels_arr = np.array(labels)
    # Which windows hold at least one evidence frame (the same cut as the frames).
    has_evidence = np.concatenate(
        [cut_windows(e[:, None, None], window, stride)[0].reshape(-1, window).any(1) for e in evidence]
    )
    window_labels = np.concatenate(
        [[lab] * len(cut_windows(e[:, None, None], window, stride)[0]) for lab, e in zip(labels, evidence)]
    )
    gen_s = time.perf_counter() - t0

    results = {}
    for path, model in loaded.items():
        t = time.perf_counter()
        with torch.no_grad():
            ev = evaluate_videos(model, videos, labels_arr, window=window, stride=stride, batch_size=32)
        # evaluate_videos does not hand back per-window probabilities; recompute them for the split.
        clips, _ = windows_of_videos(videos, labels_arr, [str(i) for i in range(len(videos))], window, stride)
        with torch.no_grad():
            wev = evaluate(model, clips, device=torch.device("cpu"), batch_size=32)
        pred = wev.probs.argmax(1)
        assert np.array_equal(clips.labels, window_labels)
        results[path] = {
            "video_balanced_acc": round(ev.scores.acc, 2),
            "video_auc": round(ev.scores.auc, 4),
            "window_balanced_acc": round(ev.window_scores.acc, 2),
            "window_auc": round(ev.window_scores.auc, 4),
            "window_acc_with_evidence": round(
                100 * balanced_accuracy_score(window_labels[has_evidence], pred[has_evidence]), 2
            ),
            "window_acc_without_evidence": round(
                100 * balanced_accuracy_score(window_labels[~has_evidence], pred[~has_evidence]), 2
            ),
            # what the model says where it cannot know: its share of each class, its mean top probability
            "without_evidence_pred_share": np.round(
                np.bincount(pred[~has_evidence], minlength=len(CLASSES)) / max(1, (~has_evidence).sum()), 3
            ).tolist(),
            "without_evidence_mean_top_prob": round(float(wev.probs[~has_evidence].max(1).mean()), 3),
            "with_evidence_mean_top_prob": round(float(wev.probs[has_evidence].max(1).mean()), 3),
            "eval_s": round(time.perf_counter() - t, 1),
        }
        rule = ExitRule.from_dict(model.meta.get("exit"))
        if rule.early:  # the same windows as the runtime runs them: best first, stopping when settled
            pp = prefix_probs(model, clips, batch_size=32)
            owner = np.concatenate([[i] * n for i, n in enumerate(ev.windows_per_video)])
            point = operating_point(pp, Windows(owner, labels_arr), rule)
            at = exit_round(pp.probs, rule)
            exit_pred = pp.probs[np.arange(len(at)), at].argmax(1)
            results[path]["early_exit"] = {
                "rule": rule.describe(),
                "mean_frames_per_window": round(point["mean_frames"], 3),
                "video_balanced_acc": round(point["acc"], 2),
                "video_auc": round(point["auc"], 4),
                "window_auc": round(point["window_auc"], 4),
                "window_balanced_acc": round(100 * balanced_accuracy_score(window_labels, exit_pred), 2),
            }
    print(
        json.dumps(
            {
                "streams": a.streams,
                "seeds": [a.seed, a.seed + a.streams - 1],
                "segments_per_stream": a.segments,
                "clip_frames": a.clip_frames,
                "videos": len(videos),
                "windows": int(len(window_labels)),
                "windows_with_evidence": int(has_evidence.sum()),
                "window": window,
                "stride": stride,
                "size": size,
                "generate_s": round(gen_s, 1),
                "models": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
