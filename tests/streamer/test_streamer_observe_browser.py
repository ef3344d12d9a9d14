"""The live web view in a real browser: `das-stream run --web` in its own process (synthetic source,
bundled demo model), Debian's chromium headless through chromedriver and selenium.

Checks that the thumbnails of the last closed window update and mark exactly the picked frames
(the same seqs as the prediction the run wrote to JSON lines), that the chart and the live image
update, and that a screenshot is not blank. Set DAS_OBSERVE_SCREENSHOT=PATH to keep the
screenshot (docs/observe.md's picture is made that way; DAS_OBSERVE_SCREENSHOT_WAIT=SECONDS lets
the chart fill first).
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

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)",
)

T, K = 16, 8  # the bundled demo model's window and picks


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def healthz(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def get_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


@pytest.fixture
def run_with_web(tmp_path):
    port, metrics_port = free_port(), free_port()
    jsonl = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "das_stream.cli",
            "run",
            "--source",
            "synthetic:?fps=30",
            "--source",
            "synthetic:?fps=30&seed=1&label=b_lines",
            "--web",
            f"127.0.0.1:{port}",
            "--metrics",
            f"127.0.0.1:{metrics_port}",
            "--jsonl",
            str(jsonl),
            "--quiet",
            "--duration",
            "240",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is not None or get_json(url + "/api/state"), 120, "the web view to answer")
        assert proc.poll() is None, proc.communicate()[1]
        yield url, f"http://127.0.0.1:{metrics_port}", proc, jsonl
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


@pytest.fixture
def browser(tmp_path):
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
        "--window-size=1280,1400",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


STRIP = """
const strip = document.querySelector('.stream[data-stream="synthetic"] .strip');
if (!strip || !strip.dataset.window) return null;
const thumbs = [...strip.querySelectorAll('img.thumb')];
const picked = thumbs.filter(t => t.classList.contains('picked'));
const other = thumbs.find(t => !t.classList.contains('picked'));
return {window: Number(strip.dataset.window), thumbs: thumbs.length,
        loaded: thumbs.filter(t => t.complete && t.naturalWidth > 0).length,
        picked: picked.map(t => Number(t.dataset.seq)), seqs: thumbs.map(t => Number(t.dataset.seq)),
        pickedBorder: picked.length ? getComputedStyle(picked[0]).borderTopColor : null,
        otherBorder: other ? getComputedStyle(other).borderTopColor : null};
"""
PANELS = """
const ps = [...document.querySelectorAll('.stream')].filter(p => p.querySelector('img.live').dataset.loaded);
return ps.map(p => p.dataset.stream).sort();
"""
CHART = """
const c = document.querySelector('.stream[data-stream="synthetic"] canvas.chart');
return c && c.dataset.points ? {points: Number(c.dataset.points), lastT: c.dataset.lastT, png: c.toDataURL()} : null;
"""
LIVE = """
const img = document.querySelector('.stream[data-stream="synthetic"] img.live');
return img && img.dataset.loaded ? {loaded: Number(img.dataset.loaded), width: img.naturalWidth} : null;
"""
FRAMES_IN = """
const b = document.querySelector('.stream[data-stream="synthetic"] .stats tbody');
return b && b.dataset.framesIn ? Number(b.dataset.framesIn) : 0;
"""


def test_live_view_in_chromium(run_with_web, browser, tmp_path):
    url, metrics_url, proc, jsonl = run_with_web
    browser.get(url + "/")
    assert browser.title == "das-stream live"
    panels = wait_for(lambda: (p := browser.execute_script(PANELS)) and len(p) == 2 and p, 60, "two stream panels")
    assert panels == ["synthetic", "synthetic-1"]  # one panel per stream

    first = wait_for(
        lambda: (s := browser.execute_script(STRIP)) and s["thumbs"] == T and s["loaded"] == T and s,
        60,
        "the first window's thumbnails",
    )
    assert len(first["picked"]) == K and set(first["picked"]) <= set(first["seqs"])
    assert first["pickedBorder"] != first["otherBorder"]  # the picked frames are visibly marked
    chart1 = wait_for(lambda: browser.execute_script(CHART), 30, "the chart")
    # (naturalWidth is 0 again while the next frame's src loads: wait for a drawn one)
    live1 = wait_for(lambda: (v := browser.execute_script(LIVE)) and v["width"] > 0 and v, 30, "the live image")

    second = wait_for(
        lambda: (s := browser.execute_script(STRIP)) and s["window"] > first["window"] and s["loaded"] == T and s,
        30,
        "the thumbnails to move on to a later window",
    )
    assert len(second["picked"]) == K and min(second["seqs"]) > min(first["seqs"])
    chart2 = wait_for(
        lambda: (c := browser.execute_script(CHART)) and c["points"] > chart1["points"] and c,
        30,
        "the chart to gain points",
    )
    assert chart2["png"] != chart1["png"]  # redrawn with the new points
    wait_for(
        lambda: (v := browser.execute_script(LIVE)) and v["loaded"] > live1["loaded"], 30, "the live image to refresh"
    )
    wait_for(lambda: browser.execute_script(FRAMES_IN) > 0, 30, "the stats counters")

    if os.environ.get("DAS_OBSERVE_SCREENSHOT_WAIT"):
        time.sleep(float(os.environ["DAS_OBSERVE_SCREENSHOT_WAIT"]))
    png = browser.get_screenshot_as_png()
    (tmp_path / "observe.png").write_bytes(png)
    if os.environ.get("DAS_OBSERVE_SCREENSHOT"):
        Path(os.environ["DAS_OBSERVE_SCREENSHOT"]).write_bytes(png)
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert image is not None and image.shape[0] > 1000 and image.shape[1] > 1000
    assert float(image.std()) > 20, "the screenshot is blank"
    strip = browser.find_element("css selector", '.stream[data-stream="synthetic"] .strip').rect
    crop = image[
        int(strip["y"]) : int(strip["y"] + strip["height"]), int(strip["x"]) : int(strip["x"] + strip["width"])
    ]
    assert crop.size and float(crop.std()) > 10, "the thumbnails are not in the screenshot"

    # the same run's --metrics: healthy while it runs, counters consistent with its final stats
    assert healthz(metrics_url) == 200
    during = scrape(metrics_url)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    predictions = {
        m["window"]: m
        for m in map(json.loads, jsonl.read_text().splitlines())
        if m.get("type") == "prediction" and m["stream"] == "synthetic"
    }
    final = [m for m in map(json.loads, jsonl.read_text().splitlines()) if m.get("type") == "stats" and m["final"]]
    assert sorted(m["stream"] for m in final) == ["synthetic", "synthetic-1"]
    final = [m for m in final if m["stream"] == "synthetic"]
    final = final[0]
    label = (("stream", "synthetic"),)
    counted = {
        o: during[("das_stream_frames_total", (("outcome", o), *label))]
        for o in ("forwarded", "skipped", "dropped", "resampled_out")
    }
    counted["in"] = during[("das_stream_frames_received_total", label)]
    assert 0 < counted["in"] <= final["frames_in"]
    assert counted["forwarded"] <= final["frames_forwarded"] and counted["skipped"] <= final["frames_skipped"]
    assert counted["in"] == (
        counted["forwarded"]
        + counted["skipped"]
        + counted["dropped"]
        + counted["resampled_out"]
        + during[("das_stream_frames_pending", label)]
    )
    assert 0 < during[("das_stream_windows_total", (("closed", "full"), *label))] <= final["windows"]
    assert 0 < during[("das_stream_capture_to_publish_seconds_count", label)] <= len(predictions)
    assert during[("das_stream_engine_stage_seconds_count", (("stage", "embed"),))] > 0
    for shown in (first, second):  # the view marked exactly the frames the run published as picked
        assert predictions[shown["window"]]["selected"] == shown["picked"]
        assert predictions[shown["window"]]["first_seq"] == shown["seqs"][0]
