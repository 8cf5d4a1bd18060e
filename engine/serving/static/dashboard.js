// Polls /dashboard/data and draws every chart with uPlot; no other dependency.
"use strict";
(function () {
  const POLL_MS = 2000;
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
  const charts = {};  // id -> {plot, key}
  const state = { polls: 0, errors: 0, renders: 0, points: 0, last: null };
  window.rankly = state;

  function pct(v) { return v == null ? "–" : (v * 100).toFixed(1) + "%"; }
  function num(v) { return v == null ? "–" : v.toFixed(2); }

  // Draw (or update) one chart; `lines` is [{label, values, color?, dash?, fill?}], `bands` pairs
  // of line indexes (upper, lower) to shade between.
  function draw(id, el, t, lines, opts) {
    opts = opts || {};
    if (!lines.length || !t.length) {
      if (charts[id]) { charts[id].plot.destroy(); delete charts[id]; }
      el.innerHTML = '<div class="empty">' + (opts.empty || "no data yet") + "</div>";
      return;
    }
    const key = lines.map(l => l.label).join("|");
    const data = [t].concat(lines.map(l => l.values));
    const width = Math.max(300, el.clientWidth || 440);
    if (charts[id] && charts[id].key === key) {
      charts[id].plot.setSize({ width: width, height: 220 });
      charts[id].plot.setData(data);
    } else {
      if (charts[id]) charts[id].plot.destroy();
      el.innerHTML = "";
      const series = [{}].concat(lines.map((l, i) => ({
        label: l.label,
        stroke: l.color || COLORS[i % COLORS.length],
        width: l.hidden ? 0 : 2,
        dash: l.dash,
        spanGaps: true,
        value: (u, v) => (opts.fmt || num)(v),
      })));
      const plot = new uPlot({
        width: width, height: 220, series: series,
        bands: (opts.bands || []).map(b => ({ series: b.series, fill: b.fill })),
        scales: { y: opts.range ? { range: opts.range } : {} },
        axes: [{}, { values: (u, vals) => vals.map(v => (opts.axis || String)(v)), size: 60 }],
        legend: { live: true },
      }, data, el);
      charts[id] = { plot: plot, key: key };
    }
    state.renders += 1;
  }

  // One line and a shaded 95% band per series: "all recommendations" first, then each running
  // experiment's arms as "experiment/variant" (the server leaves stopped experiments out).
  function intervalLines(byVariant) {
    const lines = [], bands = [];
    const keys = Object.keys(byVariant).sort((a, b) => (b === "all recommendations") - (a === "all recommendations") || a.localeCompare(b));
    keys.forEach((v, i) => {
      const c = COLORS[i % COLORS.length], s = byVariant[v];
      const base = lines.length + 1;
      lines.push({ label: v, values: s.rate, color: c });
      lines.push({ label: v + " high", values: s.high, color: c + "55", dash: [4, 4] });
      lines.push({ label: v + " low", values: s.low, color: c + "55", dash: [4, 4] });
      bands.push({ series: [base + 1, base + 2], fill: c + "22" });
    });
    return { lines: lines, bands: bands };
  }

  function latency(t, byStage) {
    const root = document.getElementById("latency");
    const stages = Object.keys(byStage);
    if (!stages.length) { root.innerHTML = '<div class="empty">no requests yet</div>'; return; }
    root.querySelectorAll(".empty").forEach(e => e.remove());
    stages.forEach(stage => {
      let box = document.getElementById("lat-" + stage);
      if (!box) {
        const wrap = document.createElement("div");
        wrap.innerHTML = "<h3></h3>";
        wrap.firstChild.textContent = stage === "request" ? "end to end (/recommendations)" : stage;
        box = document.createElement("div");
        box.id = "lat-" + stage;
        box.className = "chart";
        wrap.appendChild(box);
        root.appendChild(wrap);
      }
      const s = byStage[stage];
      const ms = arr => arr.map(v => (v == null ? null : v * 1000));
      draw("lat-" + stage, box, t, [
        { label: "P50", values: ms(s.p50), color: COLORS[2] },
        { label: "P95", values: ms(s.p95), color: COLORS[3] },
        { label: "P99", values: ms(s.p99), color: COLORS[1] },
      ], { fmt: v => (v == null ? "–" : v.toFixed(2) + " ms") });
    });
  }

  function render(d) {
    const s = d.series, t = s.t;
    document.getElementById("model-version").textContent = d.model_version;
    document.getElementById("updated").textContent = new Date(d.now * 1000).toLocaleTimeString();
    const el = id => document.getElementById(id);
    draw("traffic", el("chart-traffic"), t, [{ label: "requests/s", values: s.request_rate }]);
    draw("errors", el("chart-errors"), t, [
      { label: "5xx", values: s.error_rate, color: COLORS[1] },
      { label: "fallbacks", values: s.fallback_rate, color: COLORS[3] },
    ], { fmt: pct, axis: v => (v * 100).toFixed(1) + "%",
         range: (u, lo, hi) => [0, Math.max(hi || 0, 0.02)] });
    draw("cache", el("chart-cache"), t, Object.keys(s.cache_hit_rate).map((tier, i) => ({
      label: tier, values: s.cache_hit_rate[tier], color: COLORS[i % COLORS.length],
    })), { fmt: pct, axis: v => Math.round(v * 100) + "%", range: [0, 1] });
    const q = s.quality, qLines = [];
    if (q.catalog_coverage) qLines.push({ label: "coverage", values: q.catalog_coverage });
    if (q.intra_list_diversity) qLines.push({ label: "diversity", values: q.intra_list_diversity });
    if (q.cold_start_share) qLines.push({ label: "cold-start share", values: q.cold_start_share });
    draw("quality", el("chart-quality"), t, qLines,
      { fmt: pct, axis: v => Math.round(v * 100) + "%", range: [0, 1] });
    for (const kind of ["ctr", "conversion"]) {
      const iv = intervalLines(s[kind]);
      draw(kind, el("chart-" + kind), t, iv.lines, {
        bands: iv.bands, fmt: pct, axis: v => (v * 100).toFixed(1) + "%",
        empty: "no recommendations served yet",
      });
    }
    latency(t, s.latency);
    state.points = t.length;
    state.last = d;
  }

  async function poll() {
    const status = document.getElementById("status");
    try {
      const r = await fetch("/dashboard/data", { cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      render(await r.json());
      state.polls += 1;
      status.textContent = "live";
      status.className = "pill";
    } catch (e) {
      state.errors += 1;
      status.textContent = "offline: " + e.message;
      status.className = "pill error";
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }
  poll();
})();
