// The modelence-trio dashboard: plain JavaScript and SVG, no framework, no CDN.
// Its data comes over the project's own WebSocket protocol: it joins the system
// channel modelence-dashboard:live (only the configured role may) with the same
// browser client every app uses, and the server delivers a snapshot of its
// metrics there every second while someone watches.
import { ClientChannel, startWebsockets } from "/_modelence/modelence.js";

const $ = (id) => document.getElementById(id);
const HISTORY = 120; // points kept per chart (two minutes at one a second)

// The token: ?token= once (then out of the address bar), else the authToken cookie.
const params = new URLSearchParams(location.search);
const token = params.get("token");
if (token !== null) history.replaceState(null, "", location.pathname);

const points = { connections: [], deliveries: [], broadcasts: [], delay: [] };
let previous = null;

// --- reading a snapshot ------------------------------------------------------------------

function samples(snap, name) {
  return snap.samples[name] ?? [];
}

function total(snap, name, where = {}) {
  let sum = 0;
  for (const [labels, value] of samples(snap, name)) {
    if (Object.entries(where).every(([k, v]) => labels[k] === v)) sum += value;
  }
  return sum;
}

function byLabel(snap, name, label) {
  const out = new Map();
  for (const [labels, value] of samples(snap, name)) {
    const key = labels[label];
    out.set(key, (out.get(key) ?? 0) + value);
  }
  return out;
}

function rate(snap, name, where = {}) {
  if (previous === null) return null;
  const seconds = snap.time - previous.time;
  if (seconds <= 0) return null;
  return Math.max(0, (total(snap, name, where) - total(previous, name, where)) / seconds);
}

// The upper bound of the bucket holding the q quantile, from cumulative `_bucket` samples.
function quantile(snap, name, q, where = {}) {
  const buckets = samples(snap, `${name}_bucket`)
    .filter(([labels]) => Object.entries(where).every(([k, v]) => labels[k] === v))
    .map(([labels, value]) => [labels.le === "+Inf" ? Infinity : Number(labels.le), value])
    .sort((a, b) => a[0] - b[0]);
  const count = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (!count) return null;
  for (const [bound, seen] of buckets) if (seen >= q * count) return bound;
  return Infinity;
}

// --- drawing ---------------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function line(svg, series, colors) {
  const width = 320, height = 120, pad = 14;
  const max = Math.max(1, ...series.flat().filter(Number.isFinite));
  svg.replaceChildren();
  for (const y of [0, 0.5, 1]) {
    const grid = document.createElementNS(SVG, "line");
    const at = height - pad - y * (height - 2 * pad);
    grid.setAttribute("x1", 0); grid.setAttribute("x2", width);
    grid.setAttribute("y1", at); grid.setAttribute("y2", at);
    grid.setAttribute("stroke", "#e3e6ee");
    svg.append(grid);
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", 2); label.setAttribute("y", at - 2);
    label.textContent = short(max * y);
    svg.append(label);
  }
  series.forEach((values, i) => {
    if (values.length < 2) return;
    const step = width / (HISTORY - 1);
    const offset = width - (values.length - 1) * step;
    const path = values
      .map((v, j) => `${(offset + j * step).toFixed(1)},${(height - pad - (Number.isFinite(v) ? v : 0) / max * (height - 2 * pad)).toFixed(1)}`)
      .join(" ");
    const polyline = document.createElementNS(SVG, "polyline");
    polyline.setAttribute("points", path);
    polyline.setAttribute("fill", "none");
    polyline.setAttribute("stroke", colors[i]);
    polyline.setAttribute("stroke-width", "1.5");
    polyline.setAttribute("vector-effect", "non-scaling-stroke");
    svg.append(polyline);
  });
}

function bars(container, rows) {
  const shown = rows.filter(([, n]) => n > 0);
  if (!shown.length) {
    container.innerHTML = '<p class="empty">none</p>';
    return;
  }
  const max = Math.max(...shown.map(([, n]) => n));
  container.replaceChildren(
    ...shown.map(([name, n]) => {
      const row = document.createElement("div");
      row.className = "bar";
      const label = document.createElement("span");
      label.textContent = name;
      const bar = document.createElement("div");
      bar.style.width = `${(100 * n) / max}%`;
      const count = document.createElement("span");
      count.className = "n";
      count.textContent = short(n);
      row.append(label, bar, count);
      return row;
    }),
  );
}

function table(body, rows) {
  body.replaceChildren(
    ...rows.map((cells) => {
      const tr = document.createElement("tr");
      for (const cell of cells) {
        const td = document.createElement("td");
        td.textContent = cell;
        tr.append(td);
      }
      return tr;
    }),
  );
}

function short(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "-";
  if (!Number.isFinite(n)) return "∞";
  const abs = Math.abs(n);
  if (abs >= 1e9) return `${(n / 1e9).toFixed(1)}G`;
  if (abs >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (abs >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

function bytes(n) {
  if (n === null) return "-";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function duration(seconds) {
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function push(series, value) {
  series.push(value);
  if (series.length > HISTORY) series.shift();
}

// --- one snapshot --------------------------------------------------------------------------

function render(snap) {
  $("instance").textContent = snap.instance;
  $("uptime").textContent = duration(snap.time - snap.started);
  const ready = total(snap, "modelence_ready") === 1;
  $("ready").textContent = ready ? "yes" : "no";
  $("ready").dataset.ready = String(ready);

  const connections = total(snap, "modelence_connections");
  $("connections").textContent = short(connections);
  $("accepted").textContent = short(total(snap, "modelence_connections_accepted_total"));
  $("broadcasts").textContent = short(total(snap, "modelence_broadcasts_total"));
  $("deliveries").textContent = short(total(snap, "modelence_deliveries_total"));
  $("memory").textContent = bytes(total(snap, "process_resident_memory_bytes") || null);
  const deliveries = rate(snap, "modelence_deliveries_total");
  const broadcasts = rate(snap, "modelence_broadcasts_total");
  const sent = rate(snap, "modelence_sent_bytes_total");
  $("deliveries-rate").textContent = short(deliveries);
  $("broadcasts-rate").textContent = short(broadcasts);
  $("sent-rate").textContent = sent === null ? "-" : bytes(sent);

  push(points.connections, connections);
  push(points.deliveries, deliveries ?? 0);
  push(points.broadcasts, broadcasts ?? 0);
  line($("chart-connections"), [points.connections], ["#2f6fdf"]);
  line($("chart-rates"), [points.deliveries, points.broadcasts], ["#2f6fdf", "#e0762f"]);

  const channels = byLabel(snap, "modelence_channels", "category");
  const joined = byLabel(snap, "modelence_subscriptions", "category");
  const present = byLabel(snap, "modelence_presence_members", "category");
  table(
    $("categories").tBodies[0],
    [...channels.keys()].map((category) => [
      category,
      short(channels.get(category)),
      short(joined.get(category) ?? 0),
      present.has(category) ? short(present.get(category)) : "-",
      short(rate(snap, "modelence_broadcasts_total", { category })),
    ]),
  );

  bars($("closes"), [...byLabel(snap, "modelence_connections_closed_total", "code")]);
  const refusals = [...byLabel(snap, "modelence_connections_refused_total", "status")].map(([s, n]) => [`HTTP ${s}`, n]);
  const joins = [...byLabel(snap, "modelence_joins_total", "result")].filter(([r]) => r !== "ok");
  const frames = [...byLabel(snap, "modelence_bad_frames_total", "code")];
  bars($("refusals"), [...refusals, ...joins, ...frames]);

  const calls = new Map();
  for (const [labels, value] of samples(snap, "modelence_method_calls_total")) {
    const entry = calls.get(labels.method) ?? { calls: 0, errors: 0 };
    entry.calls += value;
    if (Number(labels.status) >= 400) entry.errors += value;
    calls.set(labels.method, entry);
  }
  table(
    $("methods").tBodies[0],
    [...calls].map(([method, { calls: n, errors }]) => {
      const sum = total(snap, "modelence_method_duration_seconds_sum", { method });
      const count = total(snap, "modelence_method_duration_seconds_count", { method });
      const p99 = quantile(snap, "modelence_method_duration_seconds", 0.99, { method });
      return [method, short(n), short(errors), count ? (1000 * sum / count).toFixed(1) : "-", p99 === null ? "-" : short(p99 * 1000)];
    }),
  );

  renderFanout(snap);
  previous = snap;
}

function renderFanout(snap) {
  $("fanout-section").hidden = snap.fanout === null;
  if (snap.fanout === null) return;
  const p50 = quantile(snap, "modelence_fanout_delay_seconds", 0.5);
  const p99 = quantile(snap, "modelence_fanout_delay_seconds", 0.99);
  const pollSum = total(snap, "modelence_fanout_poll_duration_seconds_sum");
  const polls = total(snap, "modelence_fanout_poll_duration_seconds_count");
  const rows = [
    ["database", total(snap, "modelence_fanout_reachable") === 1 ? "reachable" : "UNREACHABLE"],
    ["held for others", short(total(snap, "modelence_fanout_pending"))],
    ["published / s", short(rate(snap, "modelence_fanout_published_total"))],
    ["received / s", short(rate(snap, "modelence_fanout_received_total"))],
    ["delay p50 / p99 ms ≤", `${p50 === null ? "-" : short(p50 * 1000)} / ${p99 === null ? "-" : short(p99 * 1000)}`],
    ["poll mean ms", polls ? (1000 * pollSum / polls).toFixed(1) : "-"],
    ["gaps skipped", short(total(snap, "modelence_fanout_gaps_skipped_total"))],
    ["duplicates dropped", short(total(snap, "modelence_fanout_duplicates_dropped_total"))],
    ["resets", short(total(snap, "modelence_fanout_resets_total"))],
    ["epoch", snap.fanout.epoch ?? "-"],
    ["instances seen", snap.fanout.peers.map(([id, age]) => `${id} (${Math.round(age)} s ago)`).join(", ") || "none yet"],
  ];
  const tableElement = document.createElement("table");
  const body = tableElement.createTBody();
  table(body, rows);
  $("fanout").replaceChildren(tableElement);
  push(points.delay, p99 === null || !Number.isFinite(p99) ? 0 : p99 * 1000);
  line($("chart-delay"), [points.delay], ["#2a9d6b"]);
}

// --- the stream ------------------------------------------------------------------------------

const live = new ClientChannel("modelence-dashboard", (snap) => render(snap));
startWebsockets({
  channels: [live],
  token: token ?? undefined,
  onStatusChange: (status) => {
    $("status").textContent = status;
    $("status").dataset.status = status;
  },
});
live.joinChannel("live").then(() => {
  document.body.dataset.joined = "true";
}, (error) => {
  $("status").textContent = "refused";
  $("status").dataset.status = "refused";
  $("notice").textContent = `The live data was refused: ${error.message}`;
});
