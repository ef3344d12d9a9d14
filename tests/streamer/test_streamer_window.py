import itertools

import numpy as np
import pytest

from sources.frame import Frame
from streamer.stats import StreamStats, percentiles
from streamer.window import Windower

IMG = np.zeros((4, 4), np.uint8)


def frames(n, start_seq=0):
    return [Frame(stream="s", seq=start_seq + i, t_capture=float(i), image=IMG) for i in range(n)]


def run(n, T, S):
    w = Windower(stream="s", num_frames=T, stride=S)
    out = [x for f in frames(n) if (x := w.push(f)) is not None]
    last = w.flush()
    return out, last


@pytest.mark.parametrize("n,T,S", list(itertools.product([0, 1, 5, 16, 17, 33, 64], [1, 4, 8, 16], [1, 3, 8, 16, 20])))
def test_every_frame_retired_once_and_windows_match_positions(n, T, S):
    out, last = run(n, T, S)
    windows = out + ([last] if last is not None else [])
    retired = [seq for w in windows for seq in w.retire]
    assert sorted(retired) == list(range(n))  # exactly once each
    for i, w in enumerate(out):  # full windows: positions [iS, iS+T)
        assert w.seqs == tuple(range(i * S, i * S + T))
        assert w.index == i and w.padded == 0
    if last is not None and last.frames:
        assert 0 < len(last.frames) < T
        assert last.index == len(out)
        # the final window holds frames no earlier window saw
        assert last.seqs[-1] == n - 1
        assert last.seqs[-1] >= (out[-1].seqs[-1] + 1 if out else 0)
    # a frame is retired by a window that contains it, or belongs to no window (stride > T)
    covered = {seq for w in windows for seq in w.seqs}
    for w in windows:
        for seq in w.retire:
            assert seq in w.seqs or seq not in covered or not w.frames


@pytest.mark.parametrize("n,T,S", [(40, 8, 3), (40, 8, 8), (40, 8, 11), (41, 4, 9)])
def test_next_in_window_says_which_frames_a_window_will_hold(n, T, S):
    w = Windower(stream="s", num_frames=T, stride=S)
    flagged, windows = set(), []
    for f in frames(n):
        if w.next_in_window:
            flagged.add(f.seq)
        if (x := w.push(f)) is not None:
            windows.append(x)
    if (last := w.flush()) is not None:
        windows.append(last)
    assert flagged == {seq for x in windows for seq in x.seqs}
    assert (len(flagged) < n) == (S > T)  # a gap between windows only when stride > T


def test_retire_only_window_when_tail_already_seen():
    out, last = run(32, 16, 8)  # windows 0-15, 8-23, 16-31; 24-31 seen but not retired
    assert [w.seqs[0] for w in out] == [0, 8, 16]
    assert last is not None and last.frames == () and last.retire == tuple(range(24, 32))


def test_stats_account_forwarded_skipped_dropped():
    T, S = 8, 4
    w = Windower(stream="s", num_frames=T, stride=S)
    st = StreamStats(stream="s", num_frames=T)
    fs = frames(30)
    st.frame_in()
    st.frame_in()
    st.dropped(2)  # two frames lost to overload before windowing
    picked_total = set()
    for f in fs:
        st.frame_in()
        win = w.push(f)
        if win is not None:
            picked = win.seqs[::2]  # pick every other frame
            picked_total.update(picked)
            st.window_done(win, picked, frames_embedded=len(picked))
            assert st.pending >= 0
    last = w.flush()
    st.window_done(last, last.seqs[:1] if last.frames else (), frames_embedded=1 if last.frames else 0)
    if last.frames:
        picked_total.update(last.seqs[:1])
    s = st.snapshot(final=True)
    assert s.frames_in == 32 and s.frames_dropped == 2 and s.frames_pending == 0
    assert s.frames_forwarded == len(picked_total)
    assert s.frames_in == s.frames_forwarded + s.frames_skipped + s.frames_dropped
    assert 0.0 < s.compute_saved < 1.0


def test_percentiles():
    p = percentiles(range(1, 101))
    assert p["p50"] == pytest.approx(50.5) and p["p99"] == pytest.approx(99.01)
    assert percentiles([]) == {"p50": 0.0, "p95": 0.0, "p99": 0.0}
