"""Does `run` keep the frames training keeps? Replays real videos through VideoSource (no pacing)
and the stream resampler, and compares with training's decoder (sources.video.resample).

    python benchmarks/check_resample_real.py --index ../shared/data/pocus/videos_index.csv --fps 8 --videos 12

Prints one JSON object: per video its rate, frames, frames kept by training and by the stream,
and whether the two sets are identical.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
from pathlib import Path

from sources.video import VideoFile, VideoSource, resample
from streamer.resample import FrameResampler


async def stream_keeps(path: Path, fps: float) -> set[int]:
    src = VideoSource(path, pacing=False, size=16)
    keep = FrameResampler(fps, src)
    kept = set()
    async with src:
        async for frame in src:
            if keep.keep(frame):
                kept.add(frame.seq)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default="../shared/data/pocus/videos_index.csv", help="CSV with a path column")
    parser.add_argument("--path-column", default="path")
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--videos", type=int, default=12, help="evenly spaced rows of the CSV")
    args = parser.parse_args()
    index = Path(args.index)
    rows = list(csv.DictReader(index.open()))
    rows = rows[:: max(1, len(rows) // args.videos)][: args.videos]
    out = []
    for row in rows:
        path = index.parent / row[args.path_column]
        with VideoFile(path) as video:
            times = [t for t, _ in video.frames()]
            rate = video.rate
        trained = {i for _, i in resample(iter(zip(times, range(len(times)))), fps=args.fps, source_rate=rate)}
        kept = asyncio.run(stream_keeps(path, args.fps))
        out.append({"video": row[args.path_column], "rate": round(rate, 2), "frames": len(times),
                    "training_keeps": len(trained), "stream_keeps": len(kept), "identical": kept == trained,
                    "differ": sorted(kept ^ trained)})
    print(json.dumps({"fps": args.fps, "identical": sum(v["identical"] for v in out), "videos": out}, indent=1))


if __name__ == "__main__":
    main()
