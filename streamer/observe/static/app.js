// das-stream live view: polls /api/state, refreshes the live images at the server's reduced rate,
// fetches a window's thumbnails when a new window has closed, draws the probability chart on a canvas.
"use strict";
const COLORS = ["#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363", "#d62728", "#8c564b", "#e377c2"];
const POLL_MS = 500;
const STATE_TEXT = { starting: "waiting for the first frame", stalled: "stalled", reconnecting: "reconnecting…",
                     ended: "ended", failed: "failed" };
const STATE_DETAIL = { starting: false };  // states whose detail the overlay's title already says
const view = { since: 0, streams: {}, classNames: [], historyS: 300, liveFps: 4, serverT: 0, count: 0 };

function el(tag, props = {}, children = []) {
  const e = document.createElement(tag);
  Object.assign(e, props);
  for (const c of children) e.append(c);
  return e;
}

function fmt(x, digits = 0) { return x === undefined || x === null ? "–" : Number(x).toFixed(digits); }

// --- the grid: as many columns as make the panels largest, every panel on one screen ---
function layout() {
  const n = Math.max(1, Object.keys(view.streams).length);
  const main = document.getElementById("streams");
  const W = main.clientWidth || window.innerWidth, H = main.clientHeight || window.innerHeight;
  let best = 1, bestSize = 0;
  for (let cols = 1; cols <= n; cols++) {
    const rows = Math.ceil(n / cols);
    const size = Math.min(W / cols / 1.3, H / rows);  // a panel is about 1.3 times as wide as high
    if (size > bestSize + 1) { best = cols; bestSize = size; }
  }
  main.style.setProperty("--cols", String(best));
  const many = Math.ceil(n / best) > 1;
  document.body.classList.toggle("many", many);
  document.body.dataset.cols = String(best);
  for (const s of Object.values(view.streams)) {
    const more = s.node.querySelector(".more");
    if (!more.dataset.touched) more.open = !many;  // all counters beside a lone stream's image
    const strip = s.node.querySelector(".strip"), cells = Math.max(1, strip.childElementCount);
    const perRow = (strip.clientWidth || 600) / cells >= 44 ? cells : Math.ceil(cells / 2);  // two rows when narrow
    strip.style.setProperty("--strip-cols", String(perRow));
  }
}
window.addEventListener("resize", () => { layout(); for (const s of Object.values(view.streams)) drawChart(s); });

function panel(name) {
  let s = view.streams[name];
  if (s) return s;
  const node = document.getElementById("stream-template").content.firstElementChild.cloneNode(true);
  node.dataset.stream = name;
  node.querySelector(".name").textContent = name;
  document.getElementById("streams").append(node);
  const more = node.querySelector(".more");
  more.addEventListener("toggle", () => { if (more.open === document.body.classList.contains("many")) more.dataset.touched = "1"; });
  s = view.streams[name] = { node, history: [], windowShown: null, windowLoading: false, liveStarted: false };
  new ResizeObserver(() => drawChart(s)).observe(node.querySelector(".chart"));  // redrawn at its new size
  layout();
  return s;
}

function startLive(name, s) {
  if (s.liveStarted) return;
  s.liveStarted = true;
  const img = s.node.querySelector(".live"), box = s.node.querySelector(".livebox");
  let n = 0;
  // asks for the size it shows (device pixels): the server encodes no more than that
  const url = () => `/live/${encodeURIComponent(name)}.jpg?n=${n++}&size=` +
    Math.round(Math.max(box.clientWidth, box.clientHeight, 1) * (window.devicePixelRatio || 1));
  const next = () => setTimeout(() => { img.src = url(); }, 1000 / view.liveFps);
  img.onload = () => { img.dataset.loaded = String(n); next(); };  // one request at a time: a slow client asks less
  img.onerror = () => setTimeout(next, 1000);
  img.src = url();
}

function renderState(s, state, detail) {
  const node = s.node;
  for (const c of ["starting", "running", "stalled", "reconnecting", "ended", "failed"]) node.classList.toggle(c, c === state);
  node.dataset.state = state;
  const badge = node.querySelector(".state");
  badge.className = "state badge " + state;
  badge.textContent = state;
  node.querySelector(".detail").textContent = detail || "";
  const overlay = node.querySelector(".overlay");
  overlay.replaceChildren();
  if (state !== "running") {
    overlay.append(STATE_TEXT[state] || state);
    if (detail && STATE_DETAIL[state] !== false) overlay.append(el("small", { textContent: detail }));
  }
}

function renderStats(s, st) {
  if (!st) return;
  const x = st.extra || {};
  const lat = st.latency_ms || {}, close = x.latency_close_ms || {}, flushed = x.latency_flushed_ms || {};
  const chips = [
    [`${fmt(x.fps_recent, 1)} fps`, false],
    [`p95 ${fmt(lat.p95)} ms`, false],
    [`saved ${fmt(100 * st.compute_saved)} %`, false],
    [`dropped ${st.frames_dropped}`, st.frames_dropped > 0],
    [`bad ${st.bad_messages}`, st.bad_messages > 0],
  ];
  if (x.reconnects) chips.push([`reconnects ${x.reconnects}`, true]);
  if (x.gaps_closed) chips.push([`pauses ${x.gaps_closed}`, true]);
  s.node.querySelector(".chips").replaceChildren(...chips.map(([t, warn]) => el("span", { className: "chip" + (warn ? " warn" : ""), textContent: t })));
  const rows = [
    ["frames in", st.frames_in], ["forwarded", st.frames_forwarded], ["skipped", st.frames_skipped],
    ["dropped", st.frames_dropped], ["resampled out", st.frames_resampled_out], ["pending", st.frames_pending],
    ["bad messages", st.bad_messages], ["windows (flushed)", `${st.windows} (${x.windows_flushed || 0})`],
    ["input fps, last 5 s / run", `${fmt(x.fps_recent, 1)} / ${fmt(st.fps_in, 1)}`],
    ["compute saved", fmt(100 * st.compute_saved, 1) + " %"],
    ["capture → published p50 / p95 / p99 ms", `${fmt(lat.p50)} / ${fmt(lat.p95)} / ${fmt(lat.p99)}`],
    ["close → published p99 ms", fmt(close.p99)],
    ["flushed windows, capture → published p50 ms", fmt(flushed.p50)],
    ["reconnects", x.reconnects || 0], ["pauses", x.gaps_closed || 0],
  ];
  const used = x.frames_per_window, exits = x.exits;
  if (used) rows.push(["frames per window mean / p50 / p95", `${fmt(used.mean, 2)} / ${fmt(used.p50)} / ${fmt(used.p95)}`]);
  if (exits) rows.push(["exits confident / k_max / budget", `${exits.confident || 0} / ${exits.k_max || 0} / ${exits.budget || 0}`]);
  if (x.k_max_in_force !== undefined) rows.push(["k_max in force", x.k_max_in_force]);
  const body = s.node.querySelector(".stats tbody");
  body.replaceChildren(...rows.map(([k, v]) => el("tr", {}, [el("td", { textContent: k }), el("td", { textContent: String(v) })])));
  body.dataset.framesIn = String(st.frames_in);
  body.dataset.windows = String(st.windows);
}

function renderPrediction(s, w) {
  const box = s.node.querySelector(".prediction");
  box.querySelector(".label").textContent = w.label;
  const bars = view.classNames.map((c, i) => {
    const p = w.probs[c] || 0;
    const fill = el("div", { className: "fill" });
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    fill.style.background = COLORS[i % COLORS.length];
    return el("div", { className: "bar" }, [el("span", { className: "cls", textContent: c, title: c }),
      el("div", { className: "track" }, [fill]), el("span", { className: "val", textContent: p.toFixed(2) })]);
  });
  box.querySelector(".probs").replaceChildren(...bars);
  // the engine's per-window figures (its early exit), as short as a small panel needs
  const f = w.figures || {};
  let figures = "";
  if (f.frames_used !== undefined) figures += ` · ${f.frames_used}${f.k_max !== undefined ? "/" + f.k_max : ""} frames`;
  if (f.exit !== undefined) figures += ` · exit: ${f.exit}`;
  const meta = box.querySelector(".meta");
  meta.textContent = `window ${w.index} · ${fmt(w.latency_ms)} ms` + (w.padded ? ` · flushed (${w.padded} padded)` : "") + figures;
  meta.title = "window number · capture of its last frame → prediction" +
    (f.frames_used !== undefined ? " · frames the prediction used / the most it may use" : "") +
    (f.exit !== undefined ? " · why the engine stopped adding frames" : "");
}

function stripCells(w) {
  const picked = new Set(w.selected);
  const scores = w.scores || [];
  const lo = scores.length ? Math.min(...scores) : 0, hi = scores.length ? Math.max(...scores) : 0;
  const rank = scores.map((v, i) => i).sort((a, b) => scores[b] - scores[a]);
  const rankOf = new Map(rank.map((i, r) => [i, r + 1]));
  const cells = w.thumbs.map((src, i) => {
    const seq = w.seqs[i], isPicked = picked.has(seq);
    const img = el("img", { className: "thumb", src, alt: `frame ${seq}` });
    const parts = [img];
    let title = `frame ${seq}` + (isPicked ? ", picked" : ", not picked");
    if (scores.length) {
      const bar = el("i");
      bar.style.width = `${(hi > lo ? 8 + 92 * (scores[i] - lo) / (hi - lo) : 100).toFixed(0)}%`;
      parts.push(el("div", { className: "score" }, [bar]));
      title += ` · sampler score ${scores[i].toFixed(3)} (rank ${rankOf.get(i)} of ${scores.length})`;
    }
    const cell = el("div", { className: "cell" + (isPicked ? " picked" : ""), title }, parts);
    cell.dataset.seq = String(seq);
    if (scores.length) cell.dataset.score = String(scores[i]);
    return cell;
  });
  for (let i = 0; i < w.padded; i++) {
    cells.push(el("div", { className: "cell pad", title: "padding: the window closed early" }, [el("div", { className: "thumb" })]));
  }
  return cells;
}

async function loadWindow(name, s) {
  if (s.windowLoading) return;
  s.windowLoading = true;
  try {
    const r = await fetch(`/api/window/${encodeURIComponent(name)}`, { cache: "no-store" });
    if (!r.ok) return;
    const w = await r.json();
    const strip = s.node.querySelector(".strip");
    strip.replaceChildren(...stripCells(w));
    layout();
    strip.dataset.window = String(w.index);
    strip.dataset.selected = w.selected.join(",");
    const why = (w.scores || []).length ? "bars: the sampler's score of each frame" : "this sampler scores no frame";
    s.node.querySelector(".caption").textContent =
      `window ${w.index}: frames ${w.seqs[0]}–${w.seqs[w.seqs.length - 1]}, ${w.selected.length} of ` +
      `${w.seqs.length + w.padded} picked (outlined; ${why}) → ${w.label}`;
    renderPrediction(s, w);
    s.windowShown = w.index;
  } finally {
    s.windowLoading = false;
  }
}

// A time step that gives at most about `most` ticks over `span` seconds.
function niceStep(span, most = 6) {
  for (const step of [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600]) if (span / step <= most) return step;
  return 3600;
}

function drawChart(s) {
  const canvas = s.node.querySelector(".chart");
  const dpr = window.devicePixelRatio || 1;
  const W = canvas.clientWidth, H = canvas.clientHeight;
  if (!W || !H) return;
  if (canvas.width !== Math.round(W * dpr) || canvas.height !== Math.round(H * dpr)) {
    canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, W, H);
  const pts = s.history;
  // the axis fits the data: from the first point shown (at least 10 s back) to now
  const t1 = view.serverT;
  const first = pts.length ? pts[0][0] : t1;
  const span = Math.min(view.historyS, Math.max(5, 1.05 * (t1 - first)));
  const t0 = t1 - span;
  const L = 30, R = 6, T = 5, B = 15, pw = W - L - R, ph = H - T - B;
  const x = (t) => L + pw * (t - t0) / span, y = (p) => T + ph * (1 - p);
  ctx.strokeStyle = "#e5e5e5"; ctx.fillStyle = "#777"; ctx.font = "10px sans-serif"; ctx.lineWidth = 1;
  for (const p of (H > 90 ? [0, 0.25, 0.5, 0.75, 1] : [0, 0.5, 1])) {
    ctx.beginPath(); ctx.moveTo(L, y(p)); ctx.lineTo(L + pw, y(p)); ctx.stroke();
    ctx.fillText(String(p).replace(/^0\./, "."), 4, y(p) + 3);
  }
  const step = niceStep(span, Math.max(2, Math.floor(pw / 70)));
  const ticks = [];
  for (let a = 0; a <= span + 1e-6; a += step) {
    const label = a === 0 ? "now" : a >= 60 ? `-${+(a / 60).toFixed(1)} min` : `-${a} s`;
    ticks.push(label);
    const px = x(t1 - a);
    ctx.beginPath(); ctx.moveTo(px, T); ctx.lineTo(px, T + ph); ctx.stroke();
    ctx.fillText(label, Math.min(px - 10, W - 24), H - 3);
  }
  // a break in the line where the stream paused (no point for much longer than usual)
  const dts = pts.slice(1).map((p, i) => p[0] - pts[i][0]).sort((a, b) => a - b);
  const typical = dts.length ? dts[Math.floor(dts.length / 2)] : 1;
  view.classNames.forEach((c, i) => {
    ctx.strokeStyle = COLORS[i % COLORS.length]; ctx.lineWidth = 1.5; ctx.beginPath();
    pts.forEach((pt, j) => {
      const px = x(pt[0]), py = y(pt[1 + i]);
      const jump = j > 0 && pt[0] - pts[j - 1][0] > Math.max(3, 4 * typical);
      j && !jump ? ctx.lineTo(px, py) : ctx.moveTo(px, py);
    });
    ctx.stroke();
  });
  canvas.dataset.points = String(pts.length);
  canvas.dataset.lastT = pts.length ? String(pts[pts.length - 1][0]) : "";
  canvas.dataset.span = String(span);
  canvas.dataset.ticks = ticks.join("|");
  const legend = s.node.querySelector(".legend");
  if (legend.childElementCount !== view.classNames.length) {
    legend.replaceChildren(...view.classNames.map((c, i) => {
      const sw = el("i"); sw.style.background = COLORS[i % COLORS.length];
      return el("span", {}, [sw, c]);
    }));
  }
}

function renderHealth(reasons) {
  const h = document.getElementById("health");
  h.className = "badge " + (reasons.length ? "bad" : "ok");
  h.textContent = reasons.length ? reasons.join("; ") : "healthy";
  h.title = h.textContent;
}

async function poll() {
  try {
    const r = await fetch(`/api/state?since=${view.since}`, { cache: "no-store" });
    const st = await r.json();
    view.classNames = st.class_names; view.historyS = st.history_s; view.liveFps = st.live_fps; view.serverT = st.t;
    document.getElementById("model").textContent = st.model ? `model ${st.model}` : "";
    renderHealth(st.health || []);
    const states = {};
    for (const [name, info] of Object.entries(st.streams)) {
      const s = panel(name);
      states[info.state] = (states[info.state] || 0) + 1;
      if (info.aspect) s.node.style.setProperty("--aspect", String(info.aspect));
      if (info.latest_seq !== null || info.aspect) startLive(name, s);
      renderState(s, info.state || "running", info.state_detail);
      renderStats(s, info.stats);
      for (const pt of info.history) s.history.push(pt);
      while (s.history.length && s.history[0][0] < st.t - st.history_s) s.history.shift();
      if (info.window && info.window.index !== s.windowShown) loadWindow(name, s);
      drawChart(s);
    }
    document.getElementById("summary").textContent = Object.entries(states).map(([k, v]) => `${v} ${k}`).join(", ");
    for (const info of Object.values(st.streams))
      for (const pt of info.history) view.since = Math.max(view.since, pt[0]);
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  } catch (e) {
    renderHealth(["view lost the server: " + e]);
  }
  setTimeout(poll, POLL_MS);
}
poll();
