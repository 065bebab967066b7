// nightlab's dashboard: one page for `nightlab serve` (live, over server-sent events) and for
// report.html (static, data inlined). No library and nothing fetched from elsewhere. Every text
// that came from an agent or a training run is set with textContent, never parsed as HTML.
(function () {
  "use strict";
  const OUTCOMES = ["baseline", "kept", "discarded", "crashed", "pruned", "invalid", "skipped", "running", "interrupted"];
  const COLOURS = {baseline: "#2f6fdb", kept: "#1a7f37", discarded: "#8c959f", crashed: "#cf222e",
    pruned: "#8250df", invalid: "#9a3412", skipped: "#b8bec5", running: "#d4a72c", interrupted: "#cf222e"};
  const NO_METRIC = new Set(["crashed", "pruned", "invalid", "skipped"]);
  const ROW_H = 26;
  const $ = (id) => document.getElementById(id);
  const boot = JSON.parse($("boot").textContent);
  const embedded = JSON.parse($("data").textContent);
  const S = {rows: new Map(), order: [], overview: {}, running: [], runningAt: 0, loop: {}, details: new Map(),
    hidden: new Set(), filter: {outcome: "", agent: "", text: ""}, sort: {key: "id", dir: 1}, view: [],
    zoom: null, points: [], token: "", drawQueued: false};

  // ---------------------------------------------------------------- small helpers
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
    return node;
  }
  const isNum = (v) => typeof v === "number" && isFinite(v);
  const fixed = (v, d = 6) => isNum(v) ? v.toFixed(d) : "";
  const signed = (v, d = 6) => isNum(v) ? (v >= 0 ? "+" : "−") + Math.abs(v).toFixed(d) : "";
  const pval = (v) => isNum(v) ? (v < 0.001 ? v.toExponential(1) : v.toFixed(3)) : "";
  function duration(s) {
    if (!isNum(s)) return "";
    if (s < 10) return s.toFixed(1) + " s";
    if (s < 90) return s.toFixed(0) + " s";
    if (s < 5400) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(2) + " h";
  }
  const badge = (o) => el("span", {class: "o o-" + o, text: o});
  const metricName = () => S.overview.metric_name || boot.metric_name || "metric";
  const minimize = () => (S.overview.direction || boot.direction) !== "maximize";

  // ---------------------------------------------------------------- data in
  function applySnapshot(snap) {
    performance.mark("nightlab-data");
    S.rows = new Map();
    S.order = [];
    for (const r of snap.experiments || []) { S.rows.set(r.id, r); S.order.push(r.id); }
    S.overview = snap.overview || {};
    S.loop = snap.loop || {};
    setRunning(snap.running || []);
    refreshAll();
    document.body.dataset.ready = "1";
    performance.mark("nightlab-ready");
  }
  function applyPatch(p) {
    for (const r of p.experiments || []) {
      if (!S.rows.has(r.id)) S.order.push(r.id);
      S.rows.set(r.id, r);
      S.details.delete(r.id);
    }
    if (p.experiments) S.order.sort((a, b) => a - b);
    if (p.overview) S.overview = p.overview;
    if (p.loop) S.loop = p.loop;
    if (p.running) setRunning(p.running);
    if (p.experiments || p.overview) refreshAll(); else { renderLoop(); renderRunning(); }
    document.body.dataset.sequence = String(p.sequence || 0);
  }
  function setRunning(slots) { S.running = slots; S.runningAt = performance.now(); }
  function refreshAll() {
    renderHeader(); renderLoop(); renderSummary(); renderRunning(); renderCards(); renderStudies();
    renderFilters(); computeView(); renderTable(); queueDraw();
    const open = $("details").hidden ? null : Number($("details").dataset.id);
    if (open && !S.details.has(open) && boot.mode === "live") openDetails(open, true);
  }

  // ---------------------------------------------------------------- header, loop, controls
  function renderHeader() {
    $("title").textContent = "nightlab: " + (S.overview.tag || boot.tag || "");
    const better = minimize() ? "lower is better" : "higher is better";
    const where = boot.workspace ? " · " + boot.workspace : "";
    $("subtitle").textContent = metricName() + " (" + better + ")" + where + (boot.mode === "static" ? " · report" : " · live");
  }
  function renderLoop() {
    const box = $("loop");
    box.replaceChildren();
    if (boot.mode !== "live") return;
    const state = S.loop.state || "not running";
    box.append("loop: ", el("b", {class: state.replace(" ", "-"), text: state}));
    if (S.loop.why && state === "stopped") box.append(" (" + S.loop.why + ")");
    if (S.loop.requested === "pause" && state !== "paused") box.append(" · pause requested: it pauses after the current experiment");
    if (S.loop.requested === "stop") box.append(" · stop requested");
  }
  function setupControls() {
    if (boot.mode !== "live") return;
    $("controls").hidden = false;
    const params = new URLSearchParams(location.search);
    const fromUrl = params.get("token");
    S.token = fromUrl || sessionStorage.getItem("nightlab-token") || "";
    if (fromUrl) {
      sessionStorage.setItem("nightlab-token", fromUrl);
      params.delete("token");
      history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : "") + location.hash);
    }
    $("token").value = S.token;
    $("controls").addEventListener("submit", (ev) => ev.preventDefault());
    $("token").addEventListener("change", () => {
      S.token = $("token").value.trim();
      sessionStorage.setItem("nightlab-token", S.token);
      note(S.token ? "token set" : "read-only: no token", "");
      connect();
    });
    if (!S.token) note("read-only: paste the token `nightlab serve` printed to pause, resume or stop", "");
    for (const button of document.querySelectorAll("#controls button[data-action]")) {
      button.addEventListener("click", () => control(button.dataset.action));
    }
  }
  function note(text, cls) { const n = $("control-note"); n.textContent = text; n.className = cls || ""; }
  async function control(action) {
    const headers = {"Content-Type": "application/json"};
    if (S.token) headers["Authorization"] = "Bearer " + S.token;
    try {
      const res = await fetch("api/control", {method: "POST", headers, body: JSON.stringify({action})});
      if (res.status === 403) { note("refused (403): the token is missing or wrong; this page stays read-only", "bad"); return; }
      const body = await res.json();
      if (!res.ok) { note(body.error || "refused (" + res.status + ")", "bad"); return; }
      S.loop = body.loop || S.loop;
      renderLoop();
      note(action === "pause" ? "pause asked: the loop pauses after the current experiment" : action + " asked", "good");
    } catch (err) { note("could not reach nightlab serve: " + err, "bad"); }
  }

  // ---------------------------------------------------------------- summary, running, cards
  function renderSummary() {
    const box = $("summary");
    const m = S.overview.morning;
    if (boot.mode === "static" || !m) { box.hidden = true; return; }
    box.hidden = false;
    box.className = "morning";
    box.replaceChildren(el("h2", {text: m.headline}));
    if (m.kept && m.kept.length) {
      const ul = el("ul");
      for (const k of m.kept) ul.append(el("li", {text: "#" + k.id + " " + k.text}));
      box.append(ul);
    }
    if (m.cost) box.append(el("div", {text: m.cost}));
    if (m.look_at && m.look_at.length) {
      const ul = el("ul");
      for (const item of m.look_at) ul.append(el("li", {text: item}));
      box.append(el("div", {class: "look"}, el("b", {text: "What to look at"}), ul));
    }
  }
  function renderRunning() {
    const box = $("running");
    box.replaceChildren();
    if (boot.mode === "static") { $("running-section").hidden = true; return; }
    if (!S.running.length) {
      const state = S.loop.state || "not running";
      box.append(el("p", {class: "muted", text: state === "paused" ? "paused: nothing running" : "nothing running right now (loop: " + state + ")"}));
      return;
    }
    for (const s of S.running) {
      const card = el("div", {class: "slot", "data-experiment": s.experiment});
      const title = el("div", {}, el("b", {text: "slot " + s.slot + " · #" + s.experiment}), " replicate " + (s.replicate + 1) + " · " + s.stage + " · " + s.kind + (s.device ? " · on " + s.device : ""));
      const clock = el("span", {class: "num elapsed"});
      card.append(el("div", {class: "head"}, title, clock));
      card.append(el("div", {text: s.description}));
      card.append(el("div", {class: "muted"}, "command: ", el("code", {text: s.command || ""})));
      const bar = el("div", {class: "bar"}, el("div"));
      card.append(bar);
      if (s.points && s.points.length) {
        const c = el("canvas", {class: "mini"});
        card.append(el("div", {class: "muted", text: "intermediate points (" + metricName() + " by training seconds)"}), c);
        requestAnimationFrame(() => drawMini(c, [{label: "", points: s.points}]));
      }
      const log = el("pre", {class: "log", text: s.log_tail || "(no output yet)"});
      card.append(log);
      box.append(card);
      requestAnimationFrame(() => { log.scrollTop = log.scrollHeight; });
    }
    tickClocks();
  }
  function tickClocks() {
    const since = (performance.now() - S.runningAt) / 1000;
    document.querySelectorAll("#running .slot").forEach((card, i) => {
      const s = S.running[i];
      if (!s) return;
      const elapsed = isNum(s.elapsed) ? s.elapsed + since : null;
      const limit = s.budget_seconds || s.timeout;
      card.querySelector(".elapsed").textContent = duration(elapsed) + (limit ? " / " + duration(limit) + (s.budget_seconds ? " budget" : " timeout") : "");
      const bar = card.querySelector(".bar");
      const frac = limit && isNum(elapsed) ? elapsed / limit : 0;
      bar.firstChild.style.width = Math.min(100, 100 * frac).toFixed(1) + "%";
      bar.classList.toggle("over", frac > 1);
    });
  }
  function card(id, title, ...body) { $(id).replaceChildren(el("h3", {text: title}), ...body.filter((n) => n)); }
  function renderCards() {
    const o = S.overview;
    const nf = o.noise_floor;
    card("noise", "Noise floor", nf
      ? el("div", {text: "sd " + fixed(nf.sd) + " per run (" + nf.df + " df from " + nf.groups + " replicate groups); the band around the best line in the plot is ± 1 sd"})
      : el("div", {class: "muted", text: "not measured yet: it needs an experiment with two or more replicates"}));
    const checks = o.holdout_checks || [];
    if (!checks.length) card("holdout", "Val against holdout", el("div", {class: "muted", text: "no kept change yet, or no holdout metric"}));
    else {
      const t = el("table", {class: "small"});
      t.append(el("tr", {}, el("th", {text: "#"}), el("th", {text: "val gain"}), el("th", {text: "holdout Δ"}), el("th", {text: ""})));
      for (const c of checks) {
        const shown = o.holdout_shown;
        t.append(el("tr", {}, el("td", {text: "#" + c.id}), el("td", {class: "num", text: shown ? fixed(c.val_gain) : "·"}),
          el("td", {class: "num", text: shown ? signed(c.holdout_delta) : "·"}),
          el("td", {class: c.overfit ? "flag" : "", text: c.overfit ? "⚠ gain on val, not on holdout: possible overfitting" : "ok"})));
      }
      card("holdout", "Val against holdout (kept changes)", t,
        o.holdout_shown ? null : el("div", {class: "muted", text: "holdout values are shown with the token only"}));
    }
    const c = o.cost || {};
    const lines = [
      "LLM: " + (c.tokens || 0).toLocaleString() + " tokens, $" + (c.usd || 0).toFixed(2),
      "compute: " + duration((c.compute_hours || 0) * 3600) + " of runs" +
        (c.training_share ? ", " + Math.round(100 * c.training_share) + "% of it training" : ""),
      c.kept ? "per kept change: $" + (c.usd_per_kept || 0).toFixed(2) + ", " + duration((c.compute_hours_per_kept || 0) * 3600) + " of compute" : "no kept change yet",
    ];
    card("cost", "Cost", ...lines.map((t) => el("div", {text: t})));
  }
  function renderStudies() {
    const list = S.overview.studies || [];
    $("studies-section").hidden = !list.length;
    const box = $("studies");
    box.replaceChildren();
    for (const s of list) {
      const t = el("table", {class: "small"});
      t.append(el("tr", {}, ...["arm", "description", metricName(), "± se", "runs", "status", "verdict / reason"].map((h) => el("th", {text: h}))));
      for (const a of s.arms) {
        t.append(el("tr", {}, el("td", {text: a.label}), el("td", {text: a.description}), el("td", {class: "num", text: fixed(a.metric)}),
          el("td", {class: "num", text: fixed(a.spread)}), el("td", {class: "num", text: a.runs}), el("td", {text: a.status}), el("td", {text: a.reason})));
      }
      const state = s.state && s.state !== "finished" ? " (" + s.state + ")" : "";
      box.append(el("h3", {text: s.kind + " " + s.study + (s.scale ? " at scale " + s.scale : "") + state}));
      if (s.resume) box.append(el("div", {class: "muted", text: s.resume}));
      box.append(t);
    }
  }

  // ---------------------------------------------------------------- the table
  const COLUMNS = [
    ["id", "#", "48px", (r) => String(r.id), "num"],
    ["outcome", "outcome", "78px", (r) => badge(r.outcome), ""],
    ["agent", "agent", "64px", (r) => r.agent, ""],
    ["metric", "", "92px", (r) => fixed(r.metric), "num"],
    ["spread", "± se", "74px", (r) => fixed(r.spread), "num"],
    ["delta", "Δ", "86px", (r) => signed(r.delta), "num"],
    ["p_value", "p", "52px", (r) => pval(r.p_value), "num"],
    ["runs", "runs", "38px", (r) => String(r.runs), "num"],
    ["usd", "$", "48px", (r) => r.usd ? r.usd.toFixed(3) : "", "num"],
    ["description", "description", "minmax(160px,2fr)", (r) => r.description, ""],
    ["reason", "reason", "minmax(120px,1.4fr)", (r) => r.reason, ""],
  ];
  function renderFilters() {
    const fill = (id, values, current) => {
      const sel = $(id);
      const want = ["", ...values].join("|");
      if (sel.dataset.values === want) return;
      sel.dataset.values = want;
      sel.replaceChildren(el("option", {value: "", text: "all"}), ...values.map((v) => el("option", {value: v, text: v})));
      sel.value = current;
    };
    const outcomes = OUTCOMES.filter((o) => S.order.some((id) => S.rows.get(id).outcome === o));
    fill("filter-outcome", outcomes, S.filter.outcome);
    fill("filter-agent", [...new Set(S.order.map((id) => S.rows.get(id).agent))].filter(Boolean).sort(), S.filter.agent);
  }
  function computeView() {
    const f = S.filter;
    const text = f.text.toLowerCase();
    let rows = S.order.map((id) => S.rows.get(id)).filter((r) =>
      (!f.outcome || r.outcome === f.outcome) && (!f.agent || r.agent === f.agent) &&
      (!text || (r.description + " " + r.reason).toLowerCase().includes(text)));
    const {key, dir} = S.sort;
    if (key !== "id" || dir !== 1) {
      rows = rows.slice().sort((a, b) => {
        const x = a[key], y = b[key];
        if (x === y) return a.id - b.id;
        if (x === null || x === undefined || x === "") return 1;
        if (y === null || y === undefined || y === "") return -1;
        return (x < y ? -1 : 1) * dir;
      });
    }
    S.view = rows;
    const total = S.order.length;
    $("count").textContent = rows.length === total ? total + " experiments" : rows.length + " of " + total + " experiments";
  }
  function renderTable() {
    const head = $("table-head");
    const cols = COLUMNS.map((c) => c[2]).join(" ");
    $("table").style.setProperty("--cols", cols);
    $("table").style.setProperty("--cols-narrow", "40px 70px 80px 1fr");
    head.replaceChildren(...COLUMNS.map(([key, label, , , cls]) => {
      const arrow = S.sort.key === key ? (S.sort.dir > 0 ? " ▲" : " ▼") : "";
      const cell = el("span", {class: cls, "data-key": key, text: (key === "metric" ? metricName() : label) + arrow});
      cell.addEventListener("click", () => {
        S.sort = S.sort.key === key ? {key, dir: -S.sort.dir} : {key, dir: 1};
        computeView(); renderTable();
      });
      return cell;
    }));
    $("table-spacer").style.height = S.view.length * ROW_H + "px";
    $("table-body").style.height = Math.min(520, Math.max(3, S.view.length) * ROW_H + 4) + "px";
    renderRows(true);
  }
  function renderRows(force) {
    const body = $("table-body");
    const first = Math.max(0, Math.floor(body.scrollTop / ROW_H) - 10);
    const last = Math.min(S.view.length, first + Math.ceil((body.clientHeight || 520) / ROW_H) + 20);
    if (!force && body.dataset.range === first + ":" + last) return;
    body.dataset.range = first + ":" + last;
    const spacer = $("table-spacer");
    const rows = [];
    for (let i = first; i < last; i++) {
      const r = S.view[i];
      const row = el("div", {class: "row", "data-id": r.id});
      row.style.top = i * ROW_H + "px";
      for (const [, , , cell, cls] of COLUMNS) {
        const value = cell(r);
        row.append(value instanceof Node ? el("span", {class: cls}, value) : el("span", {class: cls, text: value, title: value}));
      }
      rows.push(row);
    }
    spacer.replaceChildren(...rows);
  }

  // ---------------------------------------------------------------- the progress plot
  function queueDraw() {
    if (S.drawQueued) return;
    S.drawQueued = true;
    requestAnimationFrame(() => { S.drawQueued = false; drawPlot(); });
  }
  function niceTicks(lo, hi, count) {
    const span = hi - lo || Math.abs(hi) || 1;
    const step0 = span / count, mag = Math.pow(10, Math.floor(Math.log10(step0)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => span / s <= count) || 10 * mag;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(v);
    return out;
  }
  function bestLine(rows) {
    const line = [];
    let best = null;
    for (const r of rows) {
      if ((r.outcome === "baseline" || r.outcome === "kept") && isNum(r.metric)) best = r.metric;
      if (best !== null) line.push([r.id, best]);
    }
    return line;
  }
  function drawPlot() {
    const canvas = $("plot");
    const dpr = window.devicePixelRatio || 1;
    const W = canvas.clientWidth || 800, H = canvas.clientHeight || 360;
    canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, W, H);
    const rows = S.order.map((id) => S.rows.get(id));
    S.points = [];
    if (!rows.length) {
      ctx.fillStyle = "#6e7781"; ctx.font = "14px system-ui";
      ctx.fillText("no experiments yet", 20, 30);
      return;
    }
    const pad = {l: 74, r: 14, t: 12, b: 52};
    const failY = H - pad.b + 22;
    let x0 = rows[0].id, x1 = rows[rows.length - 1].id;
    if (S.zoom) [x0, x1] = S.zoom;
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    const shown = rows.filter((r) => r.id >= x0 && r.id <= x1);
    const values = shown.filter((r) => isNum(r.metric)).map((r) => r.metric).sort((a, b) => a - b);
    let lo = values.length ? values[0] : 0, hi = values.length ? values[values.length - 1] : 1;
    if (values.length > 20) {  // a few diverged runs must not flatten everything else
      const q = values[Math.floor(0.97 * (values.length - 1))], q0 = values[Math.floor(0.03 * (values.length - 1))];
      if (minimize()) hi = q; else lo = q0;
    }
    const margin = (hi - lo) * 0.08 || Math.abs(hi) * 0.01 || 1;
    lo -= margin; hi += margin;
    const X = (v) => pad.l + (v - x0) / (x1 - x0) * (W - pad.l - pad.r);
    const Y = (v) => pad.t + (hi - Math.min(hi, Math.max(lo, v))) / (hi - lo) * (H - pad.t - pad.b);
    S.plot = {X, x0, x1, pad, W};
    // axes and grid
    ctx.strokeStyle = "#eceff2"; ctx.fillStyle = "#6e7781"; ctx.font = "11px system-ui"; ctx.lineWidth = 1;
    for (const v of niceTicks(lo, hi, 6)) {
      const y = Y(v);
      ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(W - pad.r, y); ctx.stroke();
      ctx.textAlign = "right"; ctx.fillText(v.toPrecision(5), pad.l - 6, y + 3);
    }
    ctx.textAlign = "center";
    const xticks = x1 - x0 <= 10 ? Array.from({length: Math.floor(x1) - Math.ceil(x0) + 1}, (_, i) => Math.ceil(x0) + i) : niceTicks(x0, x1, 10);
    for (const v of xticks) if (Number.isInteger(v)) ctx.fillText("#" + v, X(v), H - pad.b + 40);
    ctx.save(); ctx.translate(14, pad.t + (H - pad.t - pad.b) / 2); ctx.rotate(-Math.PI / 2);
    ctx.fillText(metricName() + (minimize() ? " (lower is better)" : " (higher is better)"), 0, 0); ctx.restore();
    ctx.textAlign = "right"; ctx.fillText("failed", pad.l - 6, failY + 3);
    // the running best, and the noise band around it
    const line = bestLine(rows).filter(([x]) => x >= x0 && x <= x1);
    const sd = S.overview.noise_floor ? S.overview.noise_floor.sd : null;
    if (line.length) {
      const step = (offset) => {
        ctx.beginPath();
        line.forEach(([x, v], i) => {
          const px = X(x), py = Y(v + offset);
          if (i === 0) ctx.moveTo(px, py); else { ctx.lineTo(px, Y(line[i - 1][1] + offset)); ctx.lineTo(px, py); }
        });
        ctx.lineTo(X(x1), Y(line[line.length - 1][1] + offset));
      };
      if (isNum(sd) && sd > 0) {
        ctx.fillStyle = "rgba(26,127,55,0.10)";
        ctx.beginPath();
        const up = line.map(([x, v]) => [x, v + sd]), down = line.map(([x, v]) => [x, v - sd]).reverse();
        ctx.moveTo(X(up[0][0]), Y(up[0][1]));
        up.forEach(([x, v], i) => { if (i) ctx.lineTo(X(x), Y(up[i - 1][1])); ctx.lineTo(X(x), Y(v)); });
        ctx.lineTo(X(x1), Y(up[up.length - 1][1])); ctx.lineTo(X(x1), Y(down[0][1]));
        down.forEach(([x, v], i) => { ctx.lineTo(X(i ? down[i - 1][0] : x1), Y(v)); ctx.lineTo(X(x), Y(v)); });
        ctx.closePath(); ctx.fill();
      }
      ctx.strokeStyle = COLOURS.kept; ctx.lineWidth = 2; step(0); ctx.stroke(); ctx.lineWidth = 1;
    }
    // the experiments
    for (const r of shown) {
      if (S.hidden.has(r.outcome)) continue;
      const px = X(r.id);
      const noMetric = NO_METRIC.has(r.outcome) || !isNum(r.metric);
      if (noMetric && r.outcome === "running") continue;  // no replicate finished yet: nothing to place
      const py = noMetric ? failY : Y(r.metric);
      const colour = COLOURS[r.outcome] || "#444";
      ctx.strokeStyle = colour; ctx.fillStyle = colour;
      if (!noMetric && isNum(r.spread) && r.spread > 0) {
        ctx.globalAlpha = 0.5; ctx.beginPath(); ctx.moveTo(px, Y(r.metric - r.spread)); ctx.lineTo(px, Y(r.metric + r.spread)); ctx.stroke(); ctx.globalAlpha = 1;
      }
      if (noMetric) {
        if (r.outcome === "skipped") { ctx.fillRect(px - 1, py - 3, 2, 6); }
        else { ctx.beginPath(); ctx.moveTo(px - 3, py - 3); ctx.lineTo(px + 3, py + 3); ctx.moveTo(px + 3, py - 3); ctx.lineTo(px - 3, py + 3); ctx.stroke(); }
      } else if (r.outcome === "running") {
        ctx.lineWidth = 2; ctx.beginPath(); ctx.arc(px, py, 4.5, 0, 2 * Math.PI); ctx.stroke(); ctx.lineWidth = 1;
      } else {
        const radius = r.outcome === "kept" || r.outcome === "baseline" ? 4.5 : 3;
        ctx.beginPath(); ctx.arc(px, py, radius, 0, 2 * Math.PI); ctx.fill();
      }
      S.points.push([px, py, r.id]);
    }
    renderLegend();
  }
  function renderLegend() {
    const counts = S.overview.counts || {};
    const box = $("legend");
    box.replaceChildren(...OUTCOMES.filter((o) => counts[o]).map((o) => {
      const item = el("span", {class: S.hidden.has(o) ? "off" : "", "data-outcome": o, title: "show or hide"}, el("span", {class: "dot o-" + o}), o + " " + counts[o]);
      item.addEventListener("click", () => { S.hidden.has(o) ? S.hidden.delete(o) : S.hidden.add(o); queueDraw(); });
      return item;
    }), el("span", {class: "muted", text: "— running best" + (S.overview.noise_floor ? ", band: ± noise sd" : "")}));
  }
  function nearest(mx, my) {
    let best = null, dist = 100;  // within 10 px
    for (const p of S.points) {
      const d = (p[0] - mx) ** 2 + (p[1] - my) ** 2;
      if (d < dist) { dist = d; best = p; }
    }
    return best;
  }
  function tooltip(r) {
    const box = $("tooltip");
    const values = (r.values || []).map((v) => (isNum(v[2]) ? v[2].toFixed(6) : v[3]) + " (seed " + v[1] + ")");
    box.replaceChildren(...[
      el("div", {class: "d", text: "#" + r.id + " " + r.description}),
      el("div", {}, badge(r.outcome), " " + r.agent),
      el("div", {text: metricName() + " " + fixed(r.metric) + (isNum(r.spread) ? " ± " + fixed(r.spread) : "")}),
      isNum(r.delta) ? el("div", {text: "Δ " + signed(r.delta) + (isNum(r.delta_se) ? " ± " + fixed(r.delta_se) : "") + (isNum(r.p_value) ? ", p " + pval(r.p_value) : "")}) : null,
      el("div", {text: r.runs + " replicate" + (r.runs === 1 ? "" : "s") + (values.length ? ": " + values.join(", ") : "")}),
      r.reason ? el("div", {class: "muted", text: r.reason}) : null].filter((n) => n));
  }
  function setupPlot() {
    const canvas = $("plot"), box = $("tooltip");
    let drag = null;
    canvas.addEventListener("mousemove", (ev) => {
      const rect = canvas.getBoundingClientRect();
      const mx = ev.clientX - rect.left, my = ev.clientY - rect.top;
      if (drag) { drag.to = mx; return; }
      const p = nearest(mx, my);
      if (!p) { box.hidden = true; return; }
      tooltip(S.rows.get(p[2]));
      box.hidden = false;
      box.style.left = Math.min(mx + 14, rect.width - box.offsetWidth - 4) + "px";
      box.style.top = Math.max(0, my - box.offsetHeight - 10) + "px";
    });
    canvas.addEventListener("mouseleave", () => { box.hidden = true; });
    canvas.addEventListener("mousedown", (ev) => { drag = {from: ev.clientX - canvas.getBoundingClientRect().left, to: null}; });
    window.addEventListener("mouseup", (ev) => {
      if (!drag) return;
      const {from, to} = drag;
      drag = null;
      if (to !== null && Math.abs(to - from) > 8 && S.plot) {
        const {pad, W, x0, x1} = S.plot;
        const inv = (px) => x0 + (px - pad.l) / (W - pad.l - pad.r) * (x1 - x0);
        S.zoom = [inv(Math.min(from, to)), inv(Math.max(from, to))];
        queueDraw();
      } else {
        const rect = canvas.getBoundingClientRect();
        const p = nearest(ev.clientX - rect.left, ev.clientY - rect.top);
        if (p && ev.target === canvas) openDetails(p[2]);
      }
    });
    canvas.addEventListener("dblclick", () => { S.zoom = null; queueDraw(); });
    window.addEventListener("resize", queueDraw);
  }
  function drawMini(canvas, series) {
    const dpr = window.devicePixelRatio || 1, W = canvas.clientWidth || 300, H = canvas.clientHeight || 140;
    canvas.width = W * dpr; canvas.height = H * dpr;
    const ctx = canvas.getContext("2d"); ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const all = series.flatMap((s) => s.points);
    if (!all.length) return;
    const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
    const [xa, xb, ya, yb] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    const X = (v) => 40 + (v - xa) / ((xb - xa) || 1) * (W - 50), Y = (v) => 8 + (yb - v) / ((yb - ya) || 1) * (H - 26);
    ctx.font = "10px system-ui"; ctx.fillStyle = "#6e7781";
    ctx.fillText(yb.toPrecision(4), 2, 12); ctx.fillText(ya.toPrecision(4), 2, H - 18); ctx.fillText(duration(xb), W - 40, H - 4);
    const palette = ["#2f6fdb", "#1a7f37", "#8250df", "#d4a72c", "#cf222e"];
    series.forEach((s, i) => {
      ctx.strokeStyle = palette[i % palette.length]; ctx.beginPath();
      s.points.forEach((p, j) => (j ? ctx.lineTo(X(p[0]), Y(p[1])) : ctx.moveTo(X(p[0]), Y(p[1]))));
      ctx.stroke();
    });
  }

  // ---------------------------------------------------------------- one experiment in full
  // report.html packs every experiment's details (gzip, base64): unpacked once, in the browser.
  async function unpack(packed) {
    try {
      const bytes = Uint8Array.from(atob(packed), (c) => c.charCodeAt(0));
      const text = await new Response(new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"))).text();
      for (const [id, d] of Object.entries(JSON.parse(text))) S.details.set(Number(id), d);
    } catch (err) {
      S.unpackError = "details need a browser that reads gzip (DecompressionStream: Chrome 80, Firefox 113, Safari 16.4 or later)";
    }
  }
  async function openDetails(id, quiet) {
    const aside = $("details");
    aside.dataset.id = id;
    if (S.unpacking) await S.unpacking;
    let d = S.details.get(id);
    if (!d && boot.mode === "live") {
      try {
        const headers = S.token ? {"Authorization": "Bearer " + S.token} : {};
        const res = await fetch("api/experiments/" + id, {headers});
        if (res.ok) { d = await res.json(); S.details.set(id, d); }
      } catch (err) { /* shown below as missing */ }
    }
    if (quiet && aside.hidden) return;
    renderDetails(id, d);
    aside.hidden = false;
    if (location.hash !== "#experiment-" + id) history.replaceState(null, "", "#experiment-" + id);
  }
  function renderDetails(id, d) {
    const body = $("details-body");
    const r = S.rows.get(id) || {};
    body.replaceChildren(el("h2", {text: "#" + id + " " + (d ? d.description : r.description || "")}));
    body.append(el("div", {}, badge(r.outcome || "?"), " " + (d ? d.kind + " · agent " + d.agent : ""), d && d.commit ? el("code", {text: d.commit.slice(0, 12)}) : null));
    if (r.reason) body.append(el("p", {text: r.reason}));
    if (!d) { body.append(el("p", {class: "muted", text: S.unpackError || "details are not available"})); return; }
    const section = (title, ...nodes) => body.append(el("h2", {text: title}), ...nodes);
    if (d.hypothesis) section("Hypothesis", el("p", {text: d.hypothesis}));
    if (d.lesson) section("Lesson", el("p", {text: d.lesson}));
    if (d.knobs) {
      const t = el("table", {class: "small"});
      for (const [k, v] of Object.entries(d.knobs)) t.append(el("tr", {}, el("td", {text: k}), el("td", {text: v})));
      section("Knob values", t);
    }
    const t = el("table", {class: "small"});
    const holdout = d.runs.some((x) => isNum(x.holdout));
    const slotted = d.runs.some((x) => x.slot);
    t.append(el("tr", {}, ...["replicate", "seed", slotted ? "slot" : null, "status", metricName(), holdout ? "holdout" : null, "training", "total", "peak MB", "reason"]
      .filter((h) => h !== null).map((h) => el("th", {text: h}))));
    for (const x of d.runs) {
      t.append(el("tr", {}, el("td", {text: x.replicate + 1}), el("td", {class: "num", text: x.seed}), slotted ? el("td", {text: x.slot || ""}) : null, el("td", {text: x.status}),
        el("td", {class: "num", text: fixed(x.metric)}), holdout ? el("td", {class: "num", text: fixed(x.holdout)}) : null,
        el("td", {class: "num", text: duration(x.training_seconds)}), el("td", {class: "num", text: duration(x.total_seconds)}),
        el("td", {class: "num", text: isNum(x.peak_memory_mb) ? x.peak_memory_mb.toFixed(0) : ""}), el("td", {text: x.reason})));
    }
    section("Replicates", d.runs.length ? t : el("p", {class: "muted", text: "no replicate finished"}));
    const withPoints = d.runs.filter((x) => x.points && x.points.length);
    if (withPoints.length) {
      const c = el("canvas", {class: "mini"});
      section("Intermediate points", c);
      requestAnimationFrame(() => drawMini(c, withPoints.map((x) => ({label: x.replicate, points: x.points}))));
    }
    const metrics = el("table", {class: "small"});
    for (const x of d.runs) {
      for (const [k, v] of Object.entries(x.metrics || {})) metrics.append(el("tr", {}, el("td", {text: "replicate " + (x.replicate + 1)}), el("td", {text: k}), el("td", {class: "num", text: String(v)})));
    }
    if (metrics.childNodes.length) section("Metrics", el("details", {}, el("summary", {text: "every metric the runs reported"}), metrics));
    if (d.diff) {
      const pre = el("pre", {class: "diff"});
      for (const line of d.diff.split("\n")) {
        const cls = line.startsWith("+++") || line.startsWith("---") ? "file" : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : line.startsWith("@@") ? "hunk" : "";
        pre.append(cls ? el("span", {class: cls, text: line || " "}) : el("span", {class: "ctx", text: line || " "}));
      }
      section("Diff (" + (d.lines[0] || 0) + "+ " + (d.lines[1] || 0) + "−)", pre);
    }
    const last = [...d.runs].reverse().find((x) => x.log_tail);
    if (last) section("Log tail (replicate " + (last.replicate + 1) + ")", el("pre", {class: "log", text: last.log_tail}));
    else if (d.log_note) section("Log tail", el("p", {class: "muted", text: d.log_note}));
    if (d.cost && (d.cost.tokens_in || d.cost.cost_usd)) section("Cost", el("p", {text: (d.cost.tokens_in || 0) + " tokens in, " + (d.cost.tokens_out || 0) + " out, $" + (d.cost.cost_usd || 0).toFixed(4) + (d.cost.model ? " (" + d.cost.model + ")" : "")}));
  }
  function closeDetails() {
    $("details").hidden = true;
    if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  }

  // ---------------------------------------------------------------- wiring
  // The stream carries only changes; the state itself comes by fetch, which parses megabytes far
  // faster than an event does. Patches that arrive before it are held, and those it already
  // contains (sequence not above its own) are dropped.
  let source = null, sequence = -1, held = [];
  function connect() {
    if (source) source.close();
    const query = S.token ? "?token=" + encodeURIComponent(S.token) : "";
    source = new EventSource("api/events" + query);
    source.addEventListener("patch", (ev) => {
      const patch = JSON.parse(ev.data);
      if (sequence < 0) held.push(patch); else if (patch.sequence > sequence) { sequence = patch.sequence; applyPatch(patch); }
    });
    source.addEventListener("error", () => note("connection to nightlab serve lost: retrying", "bad"));
    source.addEventListener("open", () => {
      if ($("control-note").classList.contains("bad")) note("", "");
      sequence = -1;
      held = [];
      loadState();
    });
  }
  async function loadState() {
    const headers = S.token ? {"Authorization": "Bearer " + S.token} : {};
    const res = await fetch("api/state", {headers, cache: "no-store"});
    if (!res.ok) { note("nightlab serve refused the state (" + res.status + "): " + ((await res.json()).error || ""), "bad"); return; }
    const snap = await res.json();
    performance.mark("nightlab-received");
    sequence = snap.sequence;
    applySnapshot(snap);
    for (const patch of held) if (patch.sequence > sequence) { sequence = patch.sequence; applyPatch(patch); }
    held = [];
  }
  function start() {
    document.body.dataset.mode = boot.mode;
    setupControls();
    setupPlot();
    $("table-body").addEventListener("scroll", () => renderRows(false), {passive: true});
    $("filter-outcome").addEventListener("change", (ev) => { S.filter.outcome = ev.target.value; computeView(); renderTable(); });
    $("filter-agent").addEventListener("change", (ev) => { S.filter.agent = ev.target.value; computeView(); renderTable(); });
    $("filter-text").addEventListener("input", (ev) => { S.filter.text = ev.target.value; computeView(); renderTable(); });
    $("table-body").addEventListener("click", (ev) => {
      const row = ev.target.closest(".row");
      if (row) openDetails(Number(row.dataset.id));
    });
    $("details-close").addEventListener("click", closeDetails);
    document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") closeDetails(); });
    if (boot.mode === "static") {
      for (const [id, d] of Object.entries(embedded.details || {})) S.details.set(Number(id), d);
      if (embedded.details_gz) S.unpacking = unpack(embedded.details_gz);
      applySnapshot(embedded.snapshot);
    } else {
      connect();
      setInterval(tickClocks, 1000);
    }
    const m = /^#experiment-(\d+)$/.exec(location.hash);
    if (m) openDetails(Number(m[1]));
  }
  start();
})();
