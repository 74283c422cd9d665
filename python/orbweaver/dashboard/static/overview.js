// The overview refreshes its figures every two seconds and draws the rate of finished tasks
// over the last five minutes (the dashboard keeps the samples every operator's page saw).
"use strict";
(function () {
  const WINDOW_MS = 5 * 60 * 1000;
  let samples = []; // [storage time ms, tasks finished]
  let now = Date.now();
  const chart = document.getElementById("rate-chart");
  const SVG = "http://www.w3.org/2000/svg";
  const W = 1200; // the chart's viewBox: W x H
  const H = 180;

  function text(id, value) {
    const el = document.getElementById(id);
    if (el) el.textContent = value;
  }

  function rates() {
    const out = [];
    for (let i = 1; i < samples.length; i++) {
      const [t0, n0] = samples[i - 1];
      const [t1, n1] = samples[i];
      if (t1 > t0) out.push([t1, Math.max(0, (n1 - n0) * 1000 / (t1 - t0))]);
    }
    return out;
  }

  function draw() {
    if (!chart) return;
    const pts = rates();
    const peak = Math.max(1, ...pts.map((p) => p[1]));
    chart.replaceChildren();
    for (const frac of [0, 0.5, 1]) {
      const y = H - 10 - frac * (H - 20);
      const line = document.createElementNS(SVG, "line");
      line.setAttribute("x1", "0"); line.setAttribute("x2", String(W));
      line.setAttribute("y1", String(y)); line.setAttribute("y2", String(y));
      line.setAttribute("class", "grid-line");
      chart.appendChild(line);
      const label = document.createElementNS(SVG, "text");
      label.setAttribute("x", "4"); label.setAttribute("y", String(y - 3));
      label.setAttribute("class", "axis");
      label.textContent = (peak * frac).toFixed(peak < 10 ? 1 : 0);
      chart.appendChild(label);
    }
    if (pts.length) {
      // The x axis spans the samples so far, up to the last five minutes.
      const from = Math.max(now - WINDOW_MS, samples[0][0]);
      const span = Math.max(1, now - from);
      const x = (t) => (40 + (t - from) * (W - 50) / span).toFixed(1);
      const y = (r) => (H - 10 - r * (H - 20) / peak).toFixed(1);
      const line = pts.map(([t, r]) => x(t) + "," + y(r));
      if (pts.length === 1) line.unshift(x(samples[0][0]) + "," + y(pts[0][1]));
      const area = document.createElementNS(SVG, "polygon");
      area.setAttribute("class", "rate-area");
      const first = line[0].split(",")[0];
      const last = line[line.length - 1].split(",")[0];
      const base = String(H - 10);
      area.setAttribute("points", [first + "," + base, ...line, last + "," + base].join(" "));
      chart.appendChild(area);
      const poly = document.createElementNS(SVG, "polyline");
      poly.setAttribute("class", "rate");
      poly.setAttribute("points", line.join(" "));
      chart.appendChild(poly);
      text("rate-now", pts[pts.length - 1][1].toFixed(1));
      text("rate-peak", Math.max(...pts.map((p) => p[1])).toFixed(1));
    }
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const c of cells) {
      const td = document.createElement("td");
      td.textContent = c;
      tr.appendChild(td);
    }
    return tr;
  }

  async function refresh() {
    let data;
    try {
      const res = await fetch("/api/overview", { credentials: "same-origin" });
      if (res.status === 401) { window.location = "/login"; return; }
      if (!res.ok) return;
      data = await res.json();
    } catch (e) {
      return;
    }
    for (const [state, n] of Object.entries(data.jobs)) text("jobs-" + state, String(n));
    if (!data.cluster_wide) return;
    now = data.server_time_ms;
    samples = data.history;
    text("tasks-finished", String(data.tasks_finished));
    text("tasks-failed", String(data.tasks_failed));
    text("queue-task", String(data.queues.task));
    text("queue-commit", String(data.queues.commit));
    text("queue-cleanup", String(data.queues.cleanup));
    text("session-id", String(data.session_id));
    text("cached-jobs", String(data.cached_jobs));
    text("live-instances", String(data.live_task_instances));
    text("em-count", String(data.execution_managers.length));
    const body = document.querySelector("#ems tbody");
    if (body) {
      body.replaceChildren();
      for (const em of data.execution_managers) {
        body.appendChild(row([em.id, em.ip, em.executors || "?", em.in_flight,
          em.heartbeat_age_s.toFixed(1) + " s ago"]));
      }
      if (!data.execution_managers.length) {
        body.appendChild(row(["No execution manager is alive.", "", "", "", ""]));
      }
    }
    draw();
  }

  refresh();
  setInterval(refresh, 2000);
})();
