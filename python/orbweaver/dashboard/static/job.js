// The job page follows its job through server-sent events: task colours, counts, the
// waiting table, then the error or the outputs, without reloading the page.
"use strict";
(function () {
  const page = document.getElementById("job-page");
  if (!page || page.dataset.terminal === "yes") return;
  const jobId = page.dataset.job;
  const maxRows = Number(page.dataset.maxRows);
  const TERMINAL = ["SUCCEEDED", "FAILED", "CANCELLED"];

  function text(id, value) {
    const el = document.getElementById(id);
    if (el) el.textContent = value;
  }

  function fmt(ms) {
    if (!ms) return "";
    const d = new Date(ms);
    const p = (n) => String(n).padStart(2, "0");
    return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " +
      p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
  }

  function update(data) {
    const job = data.job;
    const badge = document.getElementById("job-state");
    badge.textContent = job.state.toLowerCase();
    badge.className = "badge st-job-" + job.state.toLowerCase();
    if (job.ended_at_ms) text("job-ended", " · ended " + fmt(job.ended_at_ms));
    for (const [name, n] of Object.entries(data.counts)) text("count-" + name, String(n));
    const rows = [];
    for (const t of data.tasks) {
      const node = document.getElementById("node-" + t.id);
      if (node) {
        node.setAttribute("class", "node st-" + t.state);
        node.dataset.state = t.state;
        const title = node.querySelector("title");
        if (title) {
          const name = title.textContent.split(":")[0];
          title.textContent = name + ": " + t.state + (t.detail ? " (" + t.detail + ")" : "") +
            (t.failures ? ", " + t.failures + " failed attempt(s)" : "");
        }
      }
      if (t.state !== "succeeded") rows.push(t);
    }
    const body = document.querySelector("#waiting tbody");
    body.replaceChildren();
    if (rows.length === 0) {
      const tr = body.insertRow();
      const td = tr.insertCell();
      td.colSpan = 6;
      td.textContent = "Every task has finished.";
    }
    for (const t of rows.slice(0, maxRows)) {
      const tr = body.insertRow();
      tr.dataset.task = t.id;
      const cells = [t.id, t.state, t.reason.replaceAll("_", " "), t.detail, t.failures, t.instances];
      for (const v of cells) {
        tr.insertCell().textContent = v;
      }
    }
    if (rows.length > maxRows) {
      const td = body.insertRow().insertCell();
      td.colSpan = 6;
      td.textContent = "… and " + (rows.length - maxRows) + " more";
    }
    if (data.error) {
      document.getElementById("error-box").hidden = false;
      text("error-task", data.error.task);
      text("error-func", data.error.func);
      text("error-type", data.error.type);
      text("error-message", data.error.message);
      text("error-traceback", data.error.traceback);
    }
    if (data.outputs !== null && data.outputs !== undefined) {
      document.getElementById("outputs-box").hidden = false;
      text("outputs", data.outputs);
    }
    if (TERMINAL.includes(job.state)) {
      const form = document.getElementById("cancel-form");
      if (form) form.hidden = true;
    }
  }

  const source = new EventSource("/api/jobs/" + jobId + "/events");
  source.onmessage = (ev) => update(JSON.parse(ev.data));
  source.addEventListener("end", () => source.close());
})();
