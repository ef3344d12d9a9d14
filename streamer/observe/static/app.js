// das-stream live view: polls /api/state, refreshes the live images at the server's reduced rate,
// fetches a window's thumbnails when a new window has closed, draws the probability chart on a canvas.
"use strict";
const COLORS = ["#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363", "#d62728", "#8c564b", "#e377c2"];
const POLL_MS = 500;
const view = { since: 0, streams: {}, classNames: [], historyS: 300, liveFps: 4, serverT: 0 };

function el(tag, props = {}, children = []) {
  const e = document.createElement(tag);
  Object.assign(e, props);
  for (const c of children) e.append(c);
  return e;
}

function panel(name) {
  let s = view.streams[name];
  if (s) return s;
  const node = document.getElementById("stream-template").content.firstElementChild.cloneNode(true);
  node.dataset.stream = name;
  node.querySelector(".name").textContent = name;
  document.getElementById("streams").append(node);
  s = view.streams[name] = { node, history: [], windowShown: null, windowLoading: false, liveStarted: false };
  return s;
}

function startLive(name, s) {
  if (s.liveStarted) return;
  s.liveStarted = true;
  const img = s.node.querySelector(".live");
  let n = 0;
  const next = () => setTimeout(() => { img.src = `/live/${encodeURIComponent(name)}.jpg?n=${n++}`; },
                                1000 / view.liveFps);
  img.onload = () => { img.dataset.loaded = String(n); next(); };  // one request at a time: a slow client asks less
  img.onerror = () => setTimeout(next, 1000);
  img.src = `/live/${encodeURIComponent(name)}.jpg?n=${n++}`;
}

function fmt(x, digits = 0) { return x === undefined || x === null ? "–" : Number(x).toFixed(digits); }

function renderStats(s, st) {
  const body = s.node.querySelector(".stats tbody");
  if (!st) return;
  const lat = st.latency_ms || {}, close = (st.extra || {}).latency_close_ms || {};
  const rows = [
    ["frames in", st.frames_in], ["forwarded", st.frames_forwarded], ["skipped", st.frames_skipped],
    ["dropped", st.frames_dropped], ["pending", st.frames_pending], ["bad messages", st.bad_messages],
    ["windows", st.windows], ["input fps", fmt(st.fps_in, 1)], ["compute saved", fmt(100 * st.compute_saved, 1) + " %"],
    ["latency p50 / p95 / p99 (ms)", `${fmt(lat.p50)} / ${fmt(lat.p95)} / ${fmt(lat.p99)}`],
    ["close → published p99 (ms)", fmt(close.p99)],
  ];
  body.replaceChildren(...rows.map(([k, v]) => el("tr", {}, [el("td", { textContent: k }), el("td", { textContent: String(v) })])));
  body.dataset.framesIn = String(st.frames_in);
}

function renderPrediction(s, w) {
  const box = s.node.querySelector(".prediction");
  box.querySelector(".label").textContent = w.label;
  const bars = view.classNames.map((c, i) => {
    const p = w.probs[c] || 0;
    const fill = el("div", { className: "fill" });
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    fill.style.background = COLORS[i % COLORS.length];
    return el("div", { className: "bar" }, [el("span", { className: "cls", textContent: c }),
      el("div", { className: "track" }, [fill]), el("span", { textContent: p.toFixed(3) })]);
  });
  box.querySelector(".probs").replaceChildren(...bars);
  box.querySelector(".meta").textContent = `window ${w.index} · ${fmt(w.latency_ms, 1)} ms capture → prediction`;
}

async function loadWindow(name, s) {
  if (s.windowLoading) return;
  s.windowLoading = true;
  try {
    const r = await fetch(`/api/window/${encodeURIComponent(name)}`, { cache: "no-store" });
    if (!r.ok) return;
    const w = await r.json();
    const picked = new Set(w.selected);
    const strip = s.node.querySelector(".strip");
    strip.replaceChildren(...w.thumbs.map((src, i) => {
      const seq = w.seqs[i];
      const img = el("img", { className: "thumb" + (picked.has(seq) ? " picked" : ""), src,
                              title: `frame ${seq}` + (picked.has(seq) ? " (picked)" : "") });
      img.dataset.seq = String(seq);
      return img;
    }));
    strip.dataset.window = String(w.index);
    strip.dataset.selected = w.selected.join(",");
    s.node.querySelector(".caption").textContent =
      `last closed window ${w.index}: frames ${w.seqs[0]}–${w.seqs[w.seqs.length - 1]}, ` +
      `${w.selected.length} of ${w.seqs.length + w.padded} picked (outlined) → ${w.label}`;
    renderPrediction(s, w);
    s.windowShown = w.index;
  } finally {
    s.windowLoading = false;
  }
}

function drawChart(s) {
  const canvas = s.node.querySelector(".chart");
  const dpr = window.devicePixelRatio || 1;
  const W = canvas.clientWidth || canvas.width, H = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(W * dpr)) { canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr); }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, W, H);
  const L = 34, R = 8, T = 8, B = 20, pw = W - L - R, ph = H - T - B;
  const t1 = view.serverT, t0 = t1 - view.historyS;
  const x = (t) => L + pw * (t - t0) / view.historyS, y = (p) => T + ph * (1 - p);
  ctx.strokeStyle = "#e5e5e5"; ctx.fillStyle = "#777"; ctx.font = "11px sans-serif"; ctx.lineWidth = 1;
  for (const p of [0, 0.25, 0.5, 0.75, 1]) {
    ctx.beginPath(); ctx.moveTo(L, y(p)); ctx.lineTo(L + pw, y(p)); ctx.stroke();
    ctx.fillText(p.toFixed(2), 2, y(p) + 4);
  }
  const step = view.historyS > 120 ? 60 : 10;
  for (let a = 0; a <= view.historyS; a += step) {
    const px = x(t1 - a);
    ctx.fillText(a === 0 ? "now" : `-${a >= 60 ? a / 60 + " min" : a + " s"}`, px - 14, H - 5);
  }
  const pts = s.history;
  view.classNames.forEach((c, i) => {
    ctx.strokeStyle = COLORS[i % COLORS.length]; ctx.lineWidth = 1.5; ctx.beginPath();
    pts.forEach((pt, j) => { const px = x(pt[0]), py = y(pt[1 + i]); j ? ctx.lineTo(px, py) : ctx.moveTo(px, py); });
    ctx.stroke();
  });
  canvas.dataset.points = String(pts.length);
  canvas.dataset.lastT = pts.length ? String(pts[pts.length - 1][0]) : "";
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
}

async function poll() {
  try {
    const r = await fetch(`/api/state?since=${view.since}`, { cache: "no-store" });
    const st = await r.json();
    view.classNames = st.class_names; view.historyS = st.history_s; view.liveFps = st.live_fps; view.serverT = st.t;
    document.getElementById("model").textContent = st.model ? `model ${st.model}` : "";
    renderHealth(st.health || []);
    for (const [name, info] of Object.entries(st.streams)) {
      const s = panel(name);
      if (info.latest_seq !== null) { startLive(name, s); s.node.querySelector(".seq").textContent = `frame ${info.latest_seq}`; }
      renderStats(s, info.stats);
      for (const pt of info.history) s.history.push(pt);
      while (s.history.length && s.history[0][0] < st.t - st.history_s) s.history.shift();
      if (info.window && info.window.index !== s.windowShown) loadWindow(name, s);
      drawChart(s);
    }
    for (const info of Object.values(st.streams))
      for (const pt of info.history) view.since = Math.max(view.since, pt[0]);
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  } catch (e) {
    renderHealth(["view lost the server: " + e]);
  }
  setTimeout(poll, POLL_MS);
}
poll();
