// dupn-stream live dashboard: polls /dashboard/metrics every 2 s, keeps a rolling window of the workers'
// samples and evaluates core/series.py's definitions on it the way Prometheus does (rate = increase between
// the first and last sample in the window / the time between them, counter resets handled, no extrapolation
// to the window's edges; histogram_quantile = linear interpolation in the bucket holding the rank). No external requests: same origin only (the page's CSP enforces it).
"use strict";

const POLL_MS = 2000;
const KEEP_S = 15 * 60 + 30;
const COLORS = ["#5470c6", "#ee6666", "#91cc75", "#fac858", "#73c0de", "#3ba272", "#fc8452", "#9a60b4", "#ea7ccc"];
const TOKEN_KEY = "dupn.token";

const state = {
  spec: null,
  snaps: [], // {t (s), workers: Map url -> {up, error, idx: Map name -> Map labelKey -> [labels, value]}}
  instance: "", // "" = all workers
  span: 300,
  charts: new Map(), // key -> {el, plot, seriesKeys}
  polls: 0,
  errors: 0,
};
// read by tests and handy in the console
window.dupnDashboard = { points: {}, polls: 0, errors: 0, workers: 0, lastError: null };

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function takeTokenFromHash() {
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

async function getJSON(path) {
  const headers = {};
  if (token()) headers.Authorization = "Bearer " + token();
  const resp = await fetch(path, { headers, cache: "no-store" });
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) {
    const err = new Error((body && body.error) || ("HTTP " + resp.status));
    err.status = resp.status;
    throw err;
  }
  return body;
}

function setStatus(text, cls) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.className = "status " + (cls || "");
}

// -- samples -------------------------------------------------------------------------------
function labelKey(labels) {
  return Object.keys(labels).sort().map((k) => k + "=" + labels[k]).join(",");
}

function ingest(body) {
  const workers = new Map();
  for (const w of body.workers) {
    const idx = new Map();
    for (const [name, labels, value] of w.samples) {
      if (!idx.has(name)) idx.set(name, new Map());
      idx.get(name).set(labelKey(labels), [labels, value]);
    }
    workers.set(w.url, { up: w.up, error: w.error, idx });
  }
  const snap = { t: body.now_ms / 1000, workers, cache: new Map() };
  state.snaps.push(snap);
  while (state.snaps.length && state.snaps[0].t < snap.t - KEEP_S) state.snaps.shift();
}

function selected(snap, only) {
  const out = [];
  for (const [url, w] of snap.workers) {
    if (only !== undefined ? url === only : (!state.instance || url === state.instance)) out.push([url, w]);
  }
  return out;
}

function matches(labels, match) {
  for (const [l, op, v] of match || []) {
    const x = labels[l] === undefined ? "" : labels[l];
    const re = op === "=~" || op === "!~" ? new RegExp("^(?:" + v + ")$") : null;
    if (op === "=" && x !== v) return false;
    if (op === "!=" && x === v) return false;
    if (op === "=~" && !re.test(x)) return false;
    if (op === "!~" && re.test(x)) return false;
  }
  return true;
}

function groupOf(labels, by) { return by.map((l) => (labels[l] === undefined ? "" : labels[l])).join("\u0001"); }

// -- evaluation: Map group -> {labels, value} -----------------------------------------------
function evaluate(s, i, only) {
  const snap = state.snaps[i];
  const cacheKey = s.promql + "|" + (only === undefined ? "*" + state.instance : only);
  if (snap.cache.has(cacheKey)) return snap.cache.get(cacheKey);
  const out = evaluateUncached(s, i, only);
  snap.cache.set(cacheKey, out);
  return out;
}

function windowStart(i, windowS) {
  const now = state.snaps[i].t;
  for (let j = 0; j < i; j++) if (state.snaps[j].t >= now - windowS - 0.5) return j;
  return -1;
}

function add(groups, labels, by, value) {
  const g = groupOf(labels, by);
  const cur = groups.get(g);
  if (cur) cur.value += value;
  else groups.set(g, { labels: Object.fromEntries(by.map((l) => [l, labels[l] || ""])), value, n: 0 });
  groups.get(g).n += 1;
}

// increase of every matching series between snapshot j and i, per worker; calls fn(labels, increase, dt)
function increases(s, i, j, only, fn) {
  const now = state.snaps[i], then = state.snaps[j];
  const dt = now.t - then.t;
  for (const [url, w] of selected(now, only)) {
    const before = then.workers.get(url);
    if (!w.up || !before || !before.up) continue;
    const series = w.idx.get(s.metric);
    if (!series) continue;
    const prev = before.idx.get(s.metric) || new Map();
    for (const [key, [labels, value]] of series) {
      if (value === null || !matches(labels, s.match)) continue;
      const p = prev.get(key);
      const old = p && p[1] !== null ? p[1] : 0; // a series that appears counts from 0
      fn(labels, value >= old ? value - old : value, dt); // below the old value: a counter reset
    }
  }
}

function evaluateUncached(s, i, only) {
  const groups = new Map();
  const snap = state.snaps[i];
  if (s.kind === "ratio") {
    const num = evaluate(s.num, i, only), den = evaluate(s.den, i, only);
    for (const [g, v] of num) {
      const d = den.get(g) || den.get("");
      if (!d) continue;
      groups.set(g, { labels: v.labels, value: v.value / Math.max(d.value, s.floor) });
    }
    return groups;
  }
  if (s.kind === "up") {
    for (const [, w] of selected(snap, only)) add(groups, {}, [], w.up ? 1 : 0);
    return groups;
  }
  if (s.kind === "sum" || s.kind === "avg" || s.kind === "count_by") {
    for (const [, w] of selected(snap, only)) {
      if (!w.up) continue;
      for (const [labels, value] of (w.idx.get(s.metric) || new Map()).values()) {
        if (value === null || !matches(labels, s.match)) continue;
        if (s.kind === "count_by") { if (value === 1) add(groups, labels, s.by, 1); } else add(groups, labels, s.by, value);
      }
    }
    if (s.kind === "avg") for (const v of groups.values()) v.value /= v.n;
    return groups;
  }
  const j = windowStart(i, s.window_s);
  if (j < 0) return groups;
  if (s.kind === "rate") {
    increases(s, i, j, only, (labels, inc, dt) => add(groups, labels, s.by, inc / dt));
    return groups;
  }
  if (s.kind === "quantile") {
    const buckets = new Map(); // group -> {labels, le -> rate}
    increases(s, i, j, only, (labels, inc, dt) => {
      const g = groupOf(labels, s.by);
      if (!buckets.has(g)) buckets.set(g, { labels: Object.fromEntries(s.by.map((l) => [l, labels[l] || ""])), les: new Map() });
      const les = buckets.get(g).les;
      const le = labels.le === "+Inf" ? Infinity : parseFloat(labels.le);
      les.set(le, (les.get(le) || 0) + inc / dt);
    });
    for (const [g, b] of buckets) {
      const v = histogramQuantile(s.q, b.les);
      if (Number.isFinite(v)) groups.set(g, { labels: b.labels, value: v });
    }
    return groups;
  }
  return groups; // deriv: not drawn live
}

// Prometheus' histogram_quantile over cumulative bucket rates
function histogramQuantile(q, les) {
  const b = [...les.entries()].sort((x, y) => x[0] - y[0]);
  if (b.length < 2 || b[b.length - 1][0] !== Infinity) return NaN;
  for (let k = 1; k < b.length; k++) if (b[k][1] < b[k - 1][1]) b[k][1] = b[k - 1][1]; // monotonic
  const total = b[b.length - 1][1];
  if (!(total > 0)) return NaN;
  let rank = q * total;
  let k = b.findIndex((x) => x[1] >= rank);
  if (k === b.length - 1) return b[b.length - 2][0];
  if (k === 0 && b[0][0] <= 0) return b[0][0];
  let start = 0, count = b[k][1];
  if (k > 0) { start = b[k - 1][0]; count -= b[k - 1][1]; rank -= b[k - 1][1]; }
  return start + (b[k][0] - start) * (rank / count);
}

// -- formatting ------------------------------------------------------------------------------
function fmt(v, unit) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (unit === "s") return a === 0 ? "0" : a < 1 ? (v * 1000).toFixed(a < 0.01 ? 2 : 0) + " ms" : v.toFixed(a < 10 ? 2 : 0) + " s";
  if (unit === "percentunit") return (v * 100).toFixed(a < 0.1 ? 2 : 1) + " %";
  if (unit === "bytes") return a >= 1024 ? (v / 1024).toFixed(1) + " KiB" : v.toFixed(0) + " B";
  if (Number.isInteger(v) && a < 1e4) return unit === "ops" || unit === "reqps" ? v + "/s" : String(v);
  const n = a >= 1e6 ? (v / 1e6).toFixed(2) + "M" : a >= 1e4 ? (v / 1e3).toFixed(1) + "k" : a >= 100 ? v.toFixed(0) : v.toFixed(a < 10 ? 2 : 1);
  return unit === "ops" || unit === "reqps" ? n + "/s" : n;
}

function legendOf(template, labels, fallback) {
  const text = (template || "").replace(/\{\{\s*(\w+)\s*\}\}/g, (_, l) => labels[l] || "");
  return text.trim() || fallback;
}

// -- charts ----------------------------------------------------------------------------------
function buildChartShells() {
  const root = document.getElementById("charts");
  root.textContent = "";
  for (const c of state.spec.charts) {
    const el = document.createElement("div");
    el.className = "chart";
    el.dataset.chart = c.key;
    el.dataset.points = "0";
    const h = document.createElement("h3");
    const title = document.createElement("span");
    title.textContent = c.title;
    const now = document.createElement("span");
    now.className = "now";
    h.append(title, now);
    h.title = c.description + "\n\n" + c.lines.map((l) => l.series.promql).join("\n");
    const plot = document.createElement("div");
    plot.className = "plot";
    el.append(h, plot);
    root.append(el);
    state.charts.set(c.key, { spec: c, el, plotEl: plot, nowEl: now, plot: null, seriesKeys: "" });
  }
}

function chartData(c) {
  const snaps = state.snaps;
  const end = snaps.length ? snaps[snaps.length - 1].t : 0;
  let first = snaps.findIndex((s) => s.t >= end - state.span);
  if (first < 0) first = snaps.length;
  const names = new Map(); // series id -> label
  const cols = new Map();
  for (let i = first; i < snaps.length; i++) {
    c.spec.lines.forEach((line, li) => {
      for (const [g, v] of evaluate(line.series, i)) {
        const id = li + "|" + g;
        if (!cols.has(id)) { cols.set(id, new Array(snaps.length - first).fill(null)); names.set(id, legendOf(line.legend, v.labels, "value")); }
        cols.get(id)[i - first] = v.value;
      }
    });
  }
  const ids = [...cols.keys()].sort();
  const xs = snaps.slice(first).map((s) => s.t);
  return { ids, names, data: [xs, ...ids.map((id) => cols.get(id))] };
}

function drawChart(c) {
  const { ids, names, data } = chartData(c);
  let points = 0;
  for (const col of data.slice(1)) for (const v of col) if (v !== null) points += 1;
  c.el.dataset.points = String(points);
  window.dupnDashboard.points[c.spec.key] = points;
  c.nowEl.textContent = ids.map((id, k) => {
    const col = data[k + 1];
    return names.get(id) + " " + fmt(col[col.length - 1], c.spec.unit);
  }).join(" · ");
  if (!ids.length) {
    if (c.plot) { c.plot.destroy(); c.plot = null; }
    c.seriesKeys = "";
    c.plotEl.innerHTML = '<div class="empty">no data yet</div>';
    return;
  }
  const keys = ids.join(";");
  const width = Math.max(300, c.plotEl.clientWidth || c.el.clientWidth - 20);
  if (c.plot && c.seriesKeys === keys) {
    c.plot.setData(data);
    if (Math.abs(c.plot.width - width) > 4) c.plot.setSize({ width, height: 190 });
    return;
  }
  if (c.plot) c.plot.destroy();
  c.plotEl.textContent = "";
  c.seriesKeys = keys;
  const unit = c.spec.unit;
  c.plot = new uPlot({
    width, height: 190,
    legend: { live: false }, // the current values are in the chart's title line
    cursor: { points: { size: 5 } },
    scales: { x: { time: true }, y: { range: (u, lo, hi) => [Math.min(0, lo), hi > 0 ? hi * 1.1 : 1] } },
    axes: [{ stroke: "#667085" }, { stroke: "#667085", size: 64, values: (u, vals) => vals.map((v) => fmt(v, unit)) }],
    series: [{}, ...ids.map((id, k) => ({
      label: names.get(id), stroke: COLORS[k % COLORS.length], width: 1.6, spanGaps: true,
      points: { show: false }, value: (u, v) => fmt(v, unit),
    }))],
  }, data, c.plotEl);
}

function drawTable() {
  const table = document.getElementById("workers");
  const snaps = state.snaps;
  if (!snaps.length) return;
  const last = snaps.length - 1;
  const rows = [["worker", "up", ...state.spec.table.map((t) => t.label)]];
  const cell = (s, only) => {
    const m = evaluate(s, last, only);
    let total = null;
    for (const v of m.values()) total = (total || 0) + v.value;
    return total;
  };
  const urls = [...snaps[last].workers.keys()];
  for (const url of urls) {
    const w = snaps[last].workers.get(url);
    rows.push([url + (url === state.spec.self ? " (this)" : ""), w.up ? "up" : "down: " + (w.error || "?"),
      ...state.spec.table.map((t) => fmt(cell(t.series, url), t.unit))]);
  }
  if (urls.length > 1) {
    rows.push(["total", urls.filter((u) => snaps[last].workers.get(u).up).length + "/" + urls.length,
      ...state.spec.table.map((t) => fmt(cell(t.series, undefined), t.unit))]);
  }
  table.textContent = "";
  rows.forEach((r, k) => {
    const tr = document.createElement("tr");
    if (k === rows.length - 1 && r[0] === "total") tr.className = "total";
    for (const v of r) {
      const td = document.createElement(k === 0 ? "th" : "td");
      td.textContent = v;
      if (String(v).startsWith("down")) td.className = "down";
      tr.append(td);
    }
    table.append(tr);
  });
}

function syncInstances() {
  const sel = document.getElementById("instance");
  const have = new Set([...sel.options].map((o) => o.value));
  for (const url of state.spec.workers) {
    if (!have.has(url)) {
      const o = document.createElement("option");
      o.value = url;
      o.textContent = url + (url === state.spec.self ? " (this)" : "");
      sel.append(o);
    }
  }
}

function redraw() {
  for (const c of state.charts.values()) drawChart(c);
  drawTable();
}

async function poll() {
  try {
    if (!state.spec) {
      state.spec = await getJSON("/dashboard/spec");
      buildChartShells();
      syncInstances();
    }
    const body = await getJSON("/dashboard/metrics");
    ingest(body);
    state.polls += 1;
    const up = body.workers.filter((w) => w.up).length;
    window.dupnDashboard.polls = state.polls;
    window.dupnDashboard.workers = up;
    setStatus(up + "/" + body.workers.length + " workers · " + new Date(body.now_ms).toLocaleTimeString(), up === body.workers.length ? "ok" : "bad");
    redraw();
  } catch (err) {
    state.errors += 1;
    window.dupnDashboard.errors = state.errors;
    window.dupnDashboard.lastError = String(err.message || err);
    setStatus(err.status === 401 ? "token needed: enter DUPN_API_TOKEN above" : "error: " + (err.message || err), "bad");
    if (err.status === 401) document.getElementById("token").focus();
  }
}

// -- one user ----------------------------------------------------------------------------------
async function lookUp(userId) {
  const out = document.getElementById("user-out");
  out.textContent = "loading…";
  const id = encodeURIComponent(userId);
  try {
    const [vec, exp] = await Promise.all([getJSON("/users/" + id + "/vector"), getJSON("/users/" + id + "/explain")]);
    out.textContent = "";
    const norm = Math.sqrt(vec.vector.reduce((a, x) => a + x * x, 0));
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = "model " + vec.model_version + " · " + vec.events_seen + " events seen · updated " +
      fmt(vec.age_ms / 1000, "s") + " ago · " + vec.vector.length + "-d, norm " + norm.toFixed(3);
    out.append(meta);
    const plotEl = document.createElement("div");
    out.append(plotEl);
    const xs = vec.vector.map((_, k) => k);
    new uPlot({
      width: Math.max(300, out.clientWidth - 10), height: 140, legend: { show: false },
      scales: { x: { time: false } },
      series: [{}, { label: "vector", stroke: "#5470c6", width: 1, points: { show: false } }],
    }, [xs, vec.vector], plotEl);
    const rows = exp.behaviors.slice().reverse();
    const max = Math.max(1e-9, ...rows.map((r) => r.attention));
    const wrap = document.createElement("div");
    wrap.className = "att";
    const table = document.createElement("table");
    const head = document.createElement("tr");
    for (const h of ["#", "age", "type", "scenario", "attention", ""]) {
      const th = document.createElement("th");
      th.textContent = h;
      head.append(th);
    }
    table.append(head);
    for (const r of rows) {
      const tr = document.createElement("tr");
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = Math.round((160 * r.attention) / max) + "px";
      for (const v of [r.position, fmt(r.age_ms / 1000, "s"), r.event_type, r.scenario, r.attention.toFixed(4), bar]) {
        const td = document.createElement("td");
        if (v instanceof Node) { td.style.textAlign = "left"; td.append(v); } else td.textContent = v;
        tr.append(td);
      }
      table.append(tr);
    }
    wrap.append(table);
    const cap = document.createElement("div");
    cap.className = "meta";
    cap.textContent = "attention over the " + rows.length + " behaviors of the window, newest first (as of " +
      new Date(exp.as_of).toLocaleString() + ")";
    out.append(cap, wrap);
    window.dupnDashboard.user = { id: userId, dim: vec.vector.length, behaviors: rows.length };
  } catch (err) {
    out.innerHTML = "";
    const e = document.createElement("div");
    e.className = "err";
    e.textContent = userId + ": " + (err.message || err);
    out.append(e);
  }
}

function main() {
  takeTokenFromHash();
  document.getElementById("token").value = token();
  document.getElementById("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
    state.spec = null;
    poll();
  });
  document.getElementById("instance").addEventListener("change", (ev) => { state.instance = ev.target.value; redraw(); });
  document.getElementById("span").addEventListener("change", (ev) => { state.span = Number(ev.target.value); redraw(); });
  document.getElementById("user-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = document.getElementById("user-id").value.trim();
    if (id) lookUp(id);
  });
  const params = new URLSearchParams(location.search);
  if (params.get("user")) { document.getElementById("user-id").value = params.get("user"); lookUp(params.get("user")); }
  window.addEventListener("resize", redraw);
  poll();
  setInterval(poll, POLL_MS);
}

document.addEventListener("DOMContentLoaded", main);
