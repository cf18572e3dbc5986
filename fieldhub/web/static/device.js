// The device page: history chart (uPlot), live updates over server-sent events, commands.
"use strict";
(() => {
  const card = document.getElementById("chart-card");
  if (!card) return;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const metricSelect = document.getElementById("metric");
  const chartEl = document.getElementById("chart");
  const sourceNote = document.getElementById("chart-source");
  const liveDot = document.getElementById("live-state");
  const exportLink = document.getElementById("export");
  const customForm = document.getElementById("custom-range");
  const state = { range: "1h", start: null, end: null, plot: null, data: null, raw: true, since: Date.now() / 1000 };

  const fmt = (v) => (v == null ? "—" : typeof v === "number" ? Number(v.toPrecision(4)).toString() : String(v));

  function isLive() {
    return state.range !== "custom" && state.raw;
  }

  function rangeParams() {
    const p = new URLSearchParams({ range: state.range });
    if (state.range === "custom") {
      p.set("start", state.start);
      if (state.end) p.set("end", state.end);
    }
    return p;
  }

  function updateExport() {
    const p = rangeParams();
    if (metricSelect.value) p.set("metric", metricSelect.value);
    exportLink.href = card.dataset.exportUrl + "?" + p.toString();
  }

  function draw(series, data) {
    if (state.plot) state.plot.destroy();
    const width = chartEl.clientWidth || 800;
    state.plot = new uPlot(
      {
        width,
        height: 320,
        series,
        axes: [{ stroke: "#5b6472", grid: { stroke: "#eef0f3" } }, { stroke: "#5b6472", grid: { stroke: "#eef0f3" }, size: 60 }],
        // The x axis spans the requested range, not just the data, and grows with live data.
        scales: { x: { time: true, range: () => [state.xmin, state.xmax] } },
        legend: { live: true },
        cursor: { drag: { x: true, y: false } },
      },
      data,
      chartEl
    );
  }

  async function load() {
    const metric = metricSelect.value;
    updateExport();
    if (!metric) {
      chartEl.innerHTML = '<p class="muted empty">No numeric readings yet. The chart starts with the first one.</p>';
      return;
    }
    const p = rangeParams();
    p.set("metric", metric);
    const resp = await fetch(card.dataset.historyUrl + "?" + p.toString(), { headers: { Accept: "application/json" } });
    const body = await resp.json();
    if (!resp.ok) {
      sourceNote.textContent = body.error ? body.error.message : "Could not load history.";
      return;
    }
    state.raw = body.source === "raw";
    state.xmin = Date.parse(body.start) / 1000;
    state.xmax = Date.parse(body.end) / 1000;
    if (state.raw) {
      state.data = [body.t, body.value];
      draw([{}, { label: metric, stroke: "#2563eb", width: 2, points: { show: body.t.length < 200 } }], state.data);
    } else {
      state.data = [body.t, body.min, body.avg, body.max];
      draw(
        [
          {},
          { label: "min", stroke: "#93c5fd", dash: [4, 4] },
          { label: "avg", stroke: "#2563eb", width: 2 },
          { label: "max", stroke: "#93c5fd", dash: [4, 4] },
        ],
        state.data
      );
    }
    const bucket = body.bucket_s ? ` in ${body.bucket_s >= 3600 ? body.bucket_s / 3600 + " h" : body.bucket_s / 60 + " min"} buckets` : "";
    sourceNote.textContent = `${state.raw ? "Raw readings" : "Rollups (" + body.source + ")" + bucket}` + (body.truncated ? " · truncated" : "") + (isLive() ? " · live" : "");
  }

  function appendReadings(readings) {
    const metric = metricSelect.value;
    readings.forEach((r) => {
      const tile = document.querySelector(`.tile[data-metric="${CSS.escape(r.metric)}"]`);
      const value = r.value != null ? r.value : r.text;
      if (tile) {
        tile.querySelector(".v").textContent = fmt(value);
        tile.querySelector(".t").textContent = "just now";
      } else {
        const grid = document.getElementById("latest");
        const empty = document.getElementById("no-latest");
        if (empty) empty.remove();
        const div = document.createElement("div");
        div.className = "tile";
        div.dataset.metric = r.metric;
        div.innerHTML = '<div class="k"></div><div class="v"></div><div class="t muted small">just now</div>';
        div.querySelector(".k").textContent = r.metric;
        div.querySelector(".v").textContent = fmt(value);
        grid.appendChild(div);
      }
      if (r.value != null && ![...metricSelect.options].some((o) => o.value === r.metric)) {
        metricSelect.add(new Option(r.metric, r.metric));
        if (!metric) {
          metricSelect.value = r.metric;
          load();
        }
      }
    });
    if (!isLive() || !state.data || !state.plot) return;
    const mine = readings.filter((r) => r.metric === metric && r.value != null);
    if (!mine.length) return;
    const span = state.range === "24h" ? 86400 : 3600;
    const now = Date.now() / 1000;
    state.xmax = Math.max(state.xmax, now);
    state.xmin = Math.max(state.xmin, now - span);
    mine.forEach((r) => {
      state.data[0].push(r.t);
      state.data[1].push(r.value);
    });
    while (state.data[0].length && state.data[0][0] < now - span) {
      state.data[0].shift();
      state.data[1].shift();
    }
    state.plot.setData(state.data);
    chartEl.dataset.points = String(state.data[0].length);
    chartEl.dataset.last = String(mine[mine.length - 1].value);
  }

  // -- commands ------------------------------------------------------------------------------
  const commandList = document.querySelector("#command-list tbody");
  const finalStates = ["succeeded", "failed", "rejected", "expired", "cancelled"];

  function commandRow(c) {
    let row = commandList.querySelector(`tr[data-command="${c.id}"]`);
    if (!row) {
      const empty = commandList.querySelector(".empty-row");
      if (empty) empty.remove();
      row = document.createElement("tr");
      row.dataset.command = c.id;
      row.innerHTML = '<td><code></code></td><td><span class="status"></span></td><td>just now</td><td></td>';
      row.querySelector("code").textContent = c.name;
      commandList.prepend(row);
    }
    const status = row.querySelector(".status");
    status.textContent = c.status;
    status.className = "status status-" + c.status;
    const actions = row.children[3];
    if (finalStates.includes(c.status)) {
      actions.innerHTML = "";
    } else if (!actions.querySelector("form") && document.getElementById("command-form")) {
      const form = document.createElement("form");
      form.method = "post";
      form.className = "inline cancel-form";
      form.action = `${location.pathname}/commands/${c.id}/cancel`;
      form.innerHTML = '<input type="hidden" name="csrf_token"><button type="submit" class="link">Cancel</button>';
      form.querySelector("input").value = csrf;
      actions.appendChild(form);
    }
  }

  const commandForm = document.getElementById("command-form");
  const commandError = document.getElementById("command-error");
  if (commandForm) {
    commandForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const fields = new FormData(commandForm);
      const resp = await fetch(commandForm.action, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf, Accept: "application/json" },
        body: JSON.stringify({ name: fields.get("name"), params: fields.get("params") || "{}", ttl_s: fields.get("ttl_s") }),
      });
      const body = await resp.json();
      if (!resp.ok) {
        commandError.textContent = body.error ? body.error.message : "The command was not sent.";
        commandError.classList.remove("hidden");
        return;
      }
      commandError.classList.add("hidden");
      commandRow(body.command);
      commandForm.reset();
    });
  }
  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!form.classList || !form.classList.contains("cancel-form")) return;
    event.preventDefault();
    const resp = await fetch(form.action, { method: "POST", headers: { "X-CSRF-Token": csrf, "Content-Type": "application/json", Accept: "application/json" }, body: "{}" });
    const body = await resp.json();
    if (resp.ok) commandRow(body.command);
    else if (commandError) {
      commandError.textContent = body.error ? body.error.message : "Could not cancel.";
      commandError.classList.remove("hidden");
    }
  });

  // -- live ----------------------------------------------------------------------------------
  function connect() {
    const source = new EventSource(card.dataset.liveUrl + "?since=" + state.since);
    source.addEventListener("hello", () => {
      liveDot.classList.add("on");
      liveDot.title = "Live";
      document.body.dataset.live = "connected";
    });
    source.addEventListener("readings", (e) => {
      const readings = JSON.parse(e.data);
      if (readings.length) state.since = readings[readings.length - 1].t;
      appendReadings(readings);
    });
    source.addEventListener("command", (e) => commandRow(JSON.parse(e.data)));
    source.addEventListener("presence", (e) => {
      const online = JSON.parse(e.data).online;
      const pill = document.getElementById("presence");
      if (pill) {
        pill.textContent = online ? "online" : "offline";
        pill.className = "pill " + (online ? "online" : "offline");
      }
      const list = document.getElementById("presence-list");
      const li = document.createElement("li");
      li.innerHTML = `<span class="pill ${online ? "online" : "offline"}">${online ? "online" : "offline"}</span> <span class="muted small">just now</span>`;
      list.prepend(li);
    });
    source.addEventListener("alerts", (e) => {
      const list = document.getElementById("alert-list");
      list.innerHTML = "";
      JSON.parse(e.data).forEach((a) => {
        const li = document.createElement("li");
        li.dataset.alert = a.id;
        li.innerHTML = '<span class="pill"></span> <span class="rule"></span> <span class="alert-state"></span> ';
        li.querySelector(".pill").textContent = a.severity;
        li.querySelector(".pill").classList.add("sev-" + a.severity);
        li.querySelector(".rule").textContent = `${a.rule} —`;
        li.querySelector(".alert-state").textContent = a.state;
        li.querySelector(".alert-state").classList.add("state-" + a.state);
        if (a.state === "active" && list.dataset.canAck) {
          const form = document.createElement("form");
          form.method = "post";
          form.className = "inline ack-form";
          form.action = `${list.dataset.ackBase}/${a.id}/acknowledge`;
          form.innerHTML = '<input type="hidden" name="csrf_token"><input type="hidden" name="back"><button type="submit" class="link">Acknowledge</button>';
          form.querySelector('input[name="csrf_token"]').value = csrf;
          form.querySelector('input[name="back"]').value = list.dataset.back;
          li.appendChild(form);
        }
        list.appendChild(li);
      });
    });
    source.onerror = () => {
      liveDot.classList.remove("on");
      liveDot.title = "Reconnecting…";
      document.body.dataset.live = "reconnecting";
    };
  }

  document.querySelectorAll("button.range").forEach((button) => {
    button.addEventListener("click", () => {
      document.querySelectorAll("button.range").forEach((b) => b.classList.remove("selected"));
      button.classList.add("selected");
      if (button.dataset.range === "custom") {
        customForm.classList.remove("hidden");
        return;
      }
      customForm.classList.add("hidden");
      state.range = button.dataset.range;
      load();
    });
  });
  customForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const start = document.getElementById("custom-start").value;
    const end = document.getElementById("custom-end").value;
    if (!start) return;
    state.range = "custom";
    state.start = start + "Z";
    state.end = end ? end + "Z" : null;
    load();
  });
  metricSelect.addEventListener("change", load);
  window.addEventListener("resize", () => {
    if (state.plot) state.plot.setSize({ width: chartEl.clientWidth, height: 320 });
  });
  load().then(connect);
})();
