"""The live web view in a real browser: `das-stream run --web` in its own process (a 480x320 video,
synthetic and ZeroMQ sources, the bundled demo model), Debian's chromium headless through
chromedriver and selenium.

One stream (1280x900 window): the live image at the video's own 3:2 aspect ratio and a useful size
(not the model's 112 px square), the window strip marking exactly the picked frames (the seqs the
run wrote to JSON lines) with the sampler's score of each frame (the picks are the top scores),
counters that never lag the strip, a chart axis that fits the data, no console error (favicon).

Eight streams (1920x1080 window): every panel on one screen without overlap, each with a usable
live image, strip and chart, and the marks of a stream that ended and of one that has not started.

Screenshots are saved in the test's tmp dir; set DAS_OBSERVE_SCREENSHOT_DIR=DIR to keep them
(docs/observe/web-view.png and web-view-1.png are made that way, with DAS_OBSERVE_SCREENSHOT_WAIT=S
to let the charts fill first).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from brokers import free_port
from waiting import until_sync

from sources.synthetic import CLASSES, encode_video, make_clip

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)",
)

T, K = 16, 8  # the bundled demo model's window and picks
W, H = 480, 320  # the video's own size: 3:2, not the model's square


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def get_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """Two minutes of synthetic clips at 10 fps, 480x320, no empty frames (so the picks are
    exactly the top scores)."""
    rng = np.random.default_rng(0)
    clips = [make_clip(c, 60, size=160, rng=rng, empty_run_prob=0.0) for c in range(len(CLASSES))] * 5
    frames = (cv2.resize(f, (W, H), interpolation=cv2.INTER_LINEAR) for clip in clips for f in clip)
    return encode_video(tmp_path_factory.mktemp("video") / "exam.mp4", frames, fps=10)


def start_run(tmp_path: Path, sources: list[str]):
    port, metrics_port = free_port(), free_port()
    jsonl = tmp_path / "out.jsonl"
    args = [sys.executable, "-m", "das_stream.cli", "run"]
    for spec in sources:
        args += ["--source", spec]
    args += ["--web", f"127.0.0.1:{port}", "--metrics", f"127.0.0.1:{metrics_port}", "--jsonl", str(jsonl)]
    args += ["--quiet", "--duration", "300", "--log-level", "warning", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    until_sync(
        lambda: proc.poll() is not None or get_json(url + "/api/state"), "the web view to answer", timeout=180, poll=0.2
    )
    assert proc.poll() is None, proc.communicate()[1]
    return proc, url, f"http://127.0.0.1:{metrics_port}", jsonl


def stop_run(proc) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def browser(tmp_path: Path, width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def screenshot(driver, tmp_path: Path, name: str) -> np.ndarray:
    if wait := os.environ.get("DAS_OBSERVE_SCREENSHOT_WAIT"):  # let the chart fill (for the docs' pictures)
        time.sleep(float(wait))
    png = driver.get_screenshot_as_png()
    (tmp_path / name).write_bytes(png)
    if keep := os.environ.get("DAS_OBSERVE_SCREENSHOT_DIR"):
        Path(keep, name).write_bytes(png)
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert image is not None and float(image.std()) > 20, "the screenshot is blank"
    return image


STRIP = """
const p = document.querySelector(`.stream[data-stream="${arguments[0]}"]`);
const strip = p && p.querySelector('.strip');
if (!strip || !strip.dataset.window) return null;
const cells = [...strip.querySelectorAll('.cell:not(.pad)')];
const imgs = cells.map(c => c.querySelector('img.thumb'));
const picked = cells.filter(c => c.classList.contains('picked'));
const other = cells.find(c => !c.classList.contains('picked'));
const body = p.querySelector('.stats tbody');
return {window: Number(strip.dataset.window), cells: cells.length,
        loaded: imgs.filter(t => t.complete && t.naturalWidth > 0).length,
        thumbAspect: imgs[0].naturalWidth / imgs[0].naturalHeight,
        picked: picked.map(c => Number(c.dataset.seq)), seqs: cells.map(c => Number(c.dataset.seq)),
        scores: cells.map(c => Number(c.dataset.score)),
        bars: cells.map(c => c.querySelector('.score i') ? c.querySelector('.score i').getBoundingClientRect().width : 0),
        pickedBorder: picked.length ? getComputedStyle(picked[0].querySelector('img')).borderTopColor : null,
        otherBorder: other ? getComputedStyle(other.querySelector('img')).borderTopColor : null,
        windowsCounted: body && body.dataset.windows ? Number(body.dataset.windows) : -1};
"""
LIVE = """
const p = document.querySelector(`.stream[data-stream="${arguments[0]}"]`);
const img = p && p.querySelector('img.live');
if (!img || !img.dataset.loaded || !img.naturalWidth) return null;
const box = p.querySelector('.livebox').getBoundingClientRect();
return {loaded: Number(img.dataset.loaded), natural: [img.naturalWidth, img.naturalHeight],
        box: [box.width, box.height]};
"""
CHART = """
const c = document.querySelector(`.stream[data-stream="${arguments[0]}"] canvas.chart`);
return c && c.dataset.points ? {points: Number(c.dataset.points), span: Number(c.dataset.span),
                                ticks: c.dataset.ticks.split('|'), png: c.toDataURL()} : null;
"""
PANELS = """
return [...document.querySelectorAll('.stream')].map(p => {
  const r = p.getBoundingClientRect(), part = s => p.querySelector(s).getBoundingClientRect();
  const box = part('.livebox'), strip = part('.strip'), chart = part('canvas.chart');
  return {name: p.dataset.stream, state: p.dataset.state || '', rect: [r.left, r.top, r.right, r.bottom],
          live: [box.width, box.height], stripBottom: strip.bottom, chartBottom: chart.bottom, chartH: chart.height,
          overlay: p.querySelector('.overlay').textContent,
          overlayShown: getComputedStyle(p.querySelector('.overlay')).display !== 'none'};
});
"""


def severe_console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_one_stream_at_its_own_aspect_with_scores_and_counters_in_step(video, tmp_path):
    proc, url, metrics_url, jsonl = start_run(tmp_path, [f"video:{video}"])
    driver = None
    try:
        driver = browser(tmp_path, 1280, 900)
        driver.get(url + "/")
        assert driver.title == "das-stream live"
        name = "exam"
        live = until_sync(lambda: driver.execute_script(LIVE, name), "the live image", timeout=90, poll=0.2)
        # the image as it came (480x320), shown at its own 3:2 ratio and a useful size
        assert live["natural"] == [W, H]
        box_w, box_h = live["box"]
        assert box_w / box_h == pytest.approx(W / H, rel=0.03) and box_w >= 480

        first = until_sync(
            lambda: (s := driver.execute_script(STRIP, name)) and s["cells"] == T and s["loaded"] == T and s,
            "the first window's thumbnails",
            timeout=90,
            poll=0.2,
        )
        assert first["thumbAspect"] == pytest.approx(W / H, rel=0.05)  # model frames stretched back to 3:2
        assert first["pickedBorder"] != first["otherBorder"]  # the picked frames are visibly marked
        # each frame shows the sampler's score, and the picks are the best-scored ones (as many as the
        # prediction used before the demo's exit rule settled it, at most K): why these frames
        assert 1 <= len(first["picked"]) <= K
        top = sorted(range(T), key=lambda i: -first["scores"][i])[: len(first["picked"])]
        assert sorted(first["seqs"][i] for i in top) == first["picked"]
        assert max(first["bars"]) > 2 * min(first["bars"]) > 0  # a bar per frame, by score

        seen = []  # the counters are never behind the strip
        second = until_sync(
            lambda: (
                (s := driver.execute_script(STRIP, name))
                and seen.append(s) is None
                and s["window"] > first["window"]
                and s["loaded"] == T
                and s
            ),
            "the thumbnails to move on to a later window",
            timeout=60,
            poll=0.2,
        )
        assert all(s["windowsCounted"] >= s["window"] + 1 for s in seen)

        chart = until_sync(
            lambda: (c := driver.execute_script(CHART, name)) and c["points"] >= 2 and c,
            "the chart",
            timeout=30,
            poll=0.2,
        )
        assert chart["span"] < 120 and chart["ticks"][0] == "now"  # fits the data, not a fixed 5 minutes
        until_sync(
            lambda: (v := driver.execute_script(LIVE, name)) and v["loaded"] > live["loaded"],
            "the live image to refresh",
            timeout=30,
            poll=0.2,
        )
        assert http_status(url + "/favicon.ico") == 200
        assert severe_console_errors(driver) == []  # no 404 (favicon) nor script error
        screenshot(driver, tmp_path, "web-view-1.png")

        # the same run's --metrics: healthy while it runs, counters consistent with its final stats
        assert http_status(metrics_url + "/healthz") == 200
        assert http_status(metrics_url + f"/healthz/{name}") == 200
        during = scrape(metrics_url)
    finally:
        if driver is not None:
            driver.quit()
        err = stop_run(proc)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    predictions = {m["window"]: m for m in lines if m.get("type") == "prediction"}
    final = [m for m in lines if m.get("type") == "stats" and m["final"]]
    assert len(final) == 1
    label = (("stream", name),)
    counted = {o: during[("das_stream_frames_total", (("outcome", o), *label))] for o in ("forwarded", "skipped")}
    pending = during[("das_stream_frames_pending", label)]
    dropped = during[("das_stream_frames_total", (("outcome", "dropped"), *label))]
    received = during[("das_stream_frames_received_total", label)]
    assert 0 < received <= final[0]["frames_in"]
    assert received == counted["forwarded"] + counted["skipped"] + dropped + pending
    for shown in (first, second):  # the view marked exactly the frames the run published as picked
        assert predictions[shown["window"]]["selected"] == shown["picked"]
        assert predictions[shown["window"]]["first_seq"] == shown["seqs"][0]


def test_eight_streams_fit_one_screen_with_their_states(video, tmp_path):
    zmq_port = free_port()
    sources = [f"video:{video}"] * 6 + [
        "synthetic:?fps=10&frames=40",  # ends after 4 s: its panel says so
        f"zmq+pull://127.0.0.1:{zmq_port}?bind=1",  # nobody sends: waiting for the first frame
    ]
    proc, url, metrics_url, _ = start_run(tmp_path, sources)
    driver = None
    try:
        driver = browser(tmp_path, 1920, 1080)
        driver.get(url + "/")
        videos = ["exam"] + [f"exam-{i}" for i in range(1, 6)]
        for name in videos:
            until_sync(
                lambda n=name: driver.execute_script(LIVE, n), f"the live image of {name}", timeout=120, poll=0.2
            )
        until_sync(
            lambda: all((s := driver.execute_script(STRIP, n)) and s["loaded"] == T for n in videos[:2]),
            "the window strips",
            timeout=120,
            poll=0.2,
        )
        panels = until_sync(
            lambda: (
                (p := driver.execute_script(PANELS))
                and {x["name"]: x["state"] for x in p}.get("synthetic") == "ended"
                and p
            ),
            "the synthetic stream to end",
            timeout=60,
            poll=0.2,
        )
        screenshot(driver, tmp_path, "web-view.png")
        inner_w, inner_h = driver.execute_script("return [window.innerWidth, window.innerHeight]")
        assert len(panels) == 8
        for p in panels:  # on one screen, each with a usable image, its strip and chart inside the panel
            left, top, right, bottom = p["rect"]
            assert left >= 0 and top >= 0 and right <= inner_w + 1 and bottom <= inner_h + 1, p
            assert p["live"][0] >= 160 and p["live"][1] >= 110, p
            assert p["stripBottom"] <= bottom and p["chartBottom"] <= bottom and p["chartH"] >= 40, p
        rects = [p["rect"] for p in panels]
        for i, a in enumerate(rects):  # no two panels overlap
            for b in rects[i + 1 :]:
                assert a[2] <= b[0] + 1 or b[2] <= a[0] + 1 or a[3] <= b[1] + 1 or b[3] <= a[1] + 1
        by_name = {p["name"]: p for p in panels}
        assert {by_name[n]["state"] for n in videos} == {"running"}
        assert not by_name["exam"]["overlayShown"]
        ended, waiting = by_name["synthetic"], by_name[f"zmq-{zmq_port}"]
        assert ended["overlayShown"] and ended["overlay"].startswith("ended")
        assert waiting["state"] == "starting" and waiting["overlayShown"]
        assert http_status(metrics_url + "/healthz/synthetic") == 410
        assert severe_console_errors(driver) == []
    finally:
        if driver is not None:
            driver.quit()
        stop_run(proc)
