// The device page: history chart (uPlot) and table, live updates over server-sent events,
// commands. Times and values are written by static/format.js, in the person's time zone.
"use strict";
(() => {
  const card = document.getElementById("chart-card");
  if (!card) return;
  const format = window.fieldhub.format;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const metricSelect = document.getElementById("metric");
  const chartEl = document.getElementById("chart");
  const sourceNote = document.getElementById("chart-source");
  const liveDot = document.getElementById("live-state");
  const exportLink = document.getElementById("export");
  const customForm = document.getElementById("custom-range");
  const customStart = document.getElementById("custom-start");
  const customEnd = document.getElementById("custom-end");
  const historyTable = document.getElementById("history-table");
  const historyNote = document.getElementById("history-note");
  const HISTORY_ROWS = 200;
  const state = {
    range: "1h", start: null, end: null, plot: null, data: null, raw: true, bool: false,
    metric: "", xmin: 0, xmax: 0, since: Date.now() / 1000,
  };

  const withUnit = (text, unit) => (unit ? text + " " + unit : text);
  // A chart series is a metric in one unit; the select's value is "metric|unit" (metric names
  // cannot contain "|", so the first "|" splits them).
  const seriesKey = (metric, unit) => metric + "|" + (unit || "");
  function selectedSeries() {
    const value = metricSelect.value;
    if (!value) return null;
    const cut = value.indexOf("|");
    return { metric: value.slice(0, cut), unit: value.slice(cut + 1) };
  }

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
    const series = selectedSeries();
    if (series) {
      p.set("metric", series.metric);
      p.set("unit", series.unit);
    }
    exportLink.href = card.dataset.exportUrl + "?" + p.toString();
  }

  // A boolean metric arrives as true/false (live) or 1/0 (history, where it is charted).
  const shown = (v) => (state.bool && typeof v === "number" && state.raw ? format.value(v !== 0) : format.value(v));

  // -- chart ---------------------------------------------------------------------------------
  // Colours come from the stylesheet's custom properties, so the chart follows dark mode.
  function colour(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function seriesSpec() {
    const line = colour("--chart-line");
    const band = colour("--chart-band");
    const value = (u, v) => shown(v);
    if (state.raw) {
      return [{ label: state.metric, stroke: line, width: 2, value, points: { show: state.data[0].length < 200, fill: line } }];
    }
    return [
      { label: "min", stroke: band, dash: [4, 4], value },
      { label: "avg", stroke: line, width: 2, value },
      { label: "max", stroke: band, dash: [4, 4], value },
    ];
  }

  // A tooltip at the cursor: the reading's time in the person's zone and its value(s).
  function tooltipPlugin() {
    const tip = document.createElement("div");
    tip.className = "chart-tip hidden";
    tip.id = "chart-tip";
    return {
      hooks: {
        init: (u) => u.over.appendChild(tip),
        setCursor: (u) => {
          const i = u.cursor.idx;
          if (i == null || u.cursor.left < 0) {
            tip.classList.add("hidden");
            return;
          }
          const time = document.createElement("div");
          time.className = "tip-time";
          time.textContent = format.time(u.data[0][i] * 1000);
          const parts = u.series.slice(1).map((s, k) => {
            const row = document.createElement("div");
            row.className = "tip-value";
            row.textContent = (u.series.length > 2 ? s.label + " " : "") + shown(u.data[k + 1][i]);
            return row;
          });
          tip.replaceChildren(time, ...parts);
          tip.classList.remove("hidden");
          const x = Math.min(u.cursor.left + 12, u.over.clientWidth - tip.offsetWidth);
          tip.style.transform = `translate(${Math.max(0, x)}px, ${Math.max(0, u.cursor.top - tip.offsetHeight - 8)}px)`;
        },
      },
    };
  }

  // Axis labels on a 24-hour clock with ISO dates, like every other time on the page (uPlot's
  // default is US style). Rows: tick step, label, then the label where a larger unit changes.
  const D = "{YYYY}-{MM}-{DD}";
  const X_LABELS = [
    [3600 * 24 * 365, "{YYYY}", null, null, null, null, null, null, 1],
    [3600 * 24 * 28, "{YYYY}-{MM}", "\n{YYYY}", null, null, null, null, null, 1],
    [3600 * 24, "{MM}-{DD}", "\n{YYYY}", null, null, null, null, null, 1],
    [3600, "{HH}:{mm}", `\n${D}`, null, "\n{MM}-{DD}", null, null, null, 1],
    [60, "{HH}:{mm}", `\n${D}`, null, "\n{MM}-{DD}", null, null, null, 1],
    [1, ":{ss}", `\n${D} {HH}:{mm}`, null, "\n{MM}-{DD} {HH}:{mm}", null, "\n{HH}:{mm}", null, 1],
  ];

  function draw() {
    if (state.plot) state.plot.destroy();
    chartEl.dataset.xmin = String(state.xmin);
    chartEl.dataset.xmax = String(state.xmax);
    const axis = colour("--chart-axis");
    const grid = { stroke: colour("--chart-grid") };
    const ticks = { stroke: colour("--chart-grid") };
    const yAxis = { stroke: axis, grid, ticks, size: 60 };
    if (state.bool && state.raw) {
      yAxis.splits = () => [0, 1];
      yAxis.values = (u, splits) => splits.map((v) => format.value(v !== 0));
    }
    state.plot = new uPlot(
      {
        width: chartEl.clientWidth || 800,
        height: 320,
        // Axis ticks in the person's zone; the legend and tooltip use the same formatter.
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), format.zone),
        series: [{ value: (u, ts) => (ts == null ? "—" : format.time(ts * 1000)) }, ...seriesSpec()],
        axes: [{ stroke: axis, grid, ticks, values: X_LABELS }, yAxis],
        // The x axis spans the requested range, not just the data, and grows with live data.
        scales: {
          x: { time: true, range: () => [state.xmin, state.xmax] },
          y: state.bool && state.raw ? { range: [-0.1, 1.1] } : {},
        },
        legend: { live: true },
        cursor: { drag: { x: true, y: false, setScale: false }, points: { size: 7 } },
        plugins: [tooltipPlugin()],
        hooks: { setSelect: [selectRange] },
      },
      state.data,
      chartEl
    );
  }

  // Dragging across the chart chooses that span as a custom range (shown in the two fields).
  function selectRange(u) {
    if (u.select.width < 4) return;
    const from = u.posToVal(u.select.left, "x");
    const to = u.posToVal(u.select.left + u.select.width, "x");
    u.setSelect({ left: 0, width: 0, top: 0, height: 0 }, false);
    showCustom(from * 1000, to * 1000);
    applyCustom();
  }

  // -- history table -------------------------------------------------------------------------
  function historyRow(i) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.append(format.timeElement(new Date(state.data[0][i] * 1000).toISOString()));
    tr.append(td);
    for (let k = 1; k < state.data.length; k += 1) {
      const cell = document.createElement("td");
      cell.className = "num";
      cell.textContent = shown(state.data[k][i]);
      tr.append(cell);
    }
    return tr;
  }

  function renderHistory() {
    const n = state.data[0].length;
    const head = document.createElement("tr");
    ["Time", ...(state.raw ? [state.metric] : ["min", "avg", "max"])].forEach((label) => {
      const th = document.createElement("th");
      th.textContent = label;
      head.append(th);
    });
    historyTable.tHead.replaceChildren(head);
    const rows = [];
    for (let i = n - 1; i >= Math.max(0, n - HISTORY_ROWS); i -= 1) rows.push(historyRow(i));
    historyTable.tBodies[0].replaceChildren(...rows);
    const what = state.raw ? "reading" : "bucket";
    historyNote.textContent = !n
      ? `No ${what}s in this range.`
      : n > HISTORY_ROWS
        ? `The newest ${HISTORY_ROWS} of ${n} ${what}s; the export has them all.`
        : `${n} ${what}${n === 1 ? "" : "s"}, newest first.`;
  }

  // Adds one live reading to the raw series in time order. A history answer can already hold
  // it: the answer may be read after the reading was stored and still reach the page before the
  // stream's event does. The same time and value is that reading again; a late reading (the
  // device's own older timestamp) goes where its time says.
  function addReading(t, value) {
    const [times, values] = state.data;
    let at = times.length;
    while (at > 0 && times[at - 1] > t) at -= 1;
    if (at > 0 && times[at - 1] === t && values[at - 1] === value) return;
    times.splice(at, 0, t);
    values.splice(at, 0, value);
  }

  // Each load() gets a number, so an answer overtaken by a later load is dropped; live readings
  // that arrive while a load is on its way are kept here and added to its answer (it may have
  // been read before they were stored).
  let loadNumber = 0;
  let arrivedDuringLoad = null;

  async function load() {
    const series = selectedSeries();
    updateExport();
    if (!series) {
      chartEl.innerHTML = '<p class="muted empty">No numeric readings yet. The chart starts with the first one.</p>';
      return;
    }
    const metric = withUnit(series.metric, series.unit && `(${series.unit})`);
    const p = rangeParams();
    p.set("metric", series.metric);
    p.set("unit", series.unit);
    const key = metricSelect.value;
    const number = (loadNumber += 1);
    arrivedDuringLoad = [];
    let resp;
    let body;
    try {
      resp = await fetch(card.dataset.historyUrl + "?" + p.toString(), { headers: { Accept: "application/json" } });
      body = await resp.json();
    } catch (error) {
      // Nobody will take what arrived: stop keeping it (the next load starts afresh).
      if (number === loadNumber) arrivedDuringLoad = null;
      throw error;
    }
    if (number !== loadNumber) return;
    const arrived = arrivedDuringLoad;
    arrivedDuringLoad = null;
    if (!resp.ok) {
      sourceNote.textContent = body.detail || "Could not load history.";
      return;
    }
    state.raw = body.source === "raw";
    state.bool = body.type === "boolean";
    state.metric = metric;
    state.xmin = Date.parse(body.start) / 1000;
    state.xmax = Date.parse(body.end) / 1000;
    state.data = state.raw ? [body.t, body.value] : [body.t, body.min, body.avg, body.max];
    if (isLive()) {
      arrived
        .filter((r) => seriesKey(r.metric, r.unit) === key && r.value != null)
        .forEach((r) => addReading(r.t, Number(r.value)));
    }
    draw();
    renderHistory();
    const bucket = body.bucket_s ? ` in ${body.bucket_s >= 3600 ? body.bucket_s / 3600 + " h" : body.bucket_s / 60 + " min"} buckets` : "";
    sourceNote.textContent = `${state.raw ? "Raw readings" : "Rollups (" + body.source + ")" + bucket}` + (body.truncated ? " · truncated" : "") + (isLive() ? " · live" : "");
  }

  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
    if (state.plot) draw();
  });

  function appendReadings(readings) {
    const selected = metricSelect.value;
    if (arrivedDuringLoad) arrivedDuringLoad.push(...readings);
    readings.forEach((r) => {
      const unit = r.unit || "";
      const tile = document.querySelector(`.tile[data-metric="${CSS.escape(r.metric)}"][data-unit="${CSS.escape(unit)}"]`);
      const value = r.value != null ? r.value : r.text;
      const when = format.timeElement(new Date(r.t * 1000).toISOString(), "ago");
      if (tile) {
        tile.querySelector(".v").textContent = withUnit(format.value(value), unit);
        tile.querySelector(".t").replaceChildren(when);
      } else {
        const grid = document.getElementById("latest");
        const empty = document.getElementById("no-latest");
        if (empty) empty.remove();
        const div = document.createElement("div");
        div.className = "tile";
        div.dataset.metric = r.metric;
        div.dataset.unit = unit;
        div.innerHTML = '<div class="k"></div><div class="v"></div><div class="t muted small"></div>';
        div.querySelector(".k").textContent = r.metric;
        div.querySelector(".v").textContent = withUnit(format.value(value), unit);
        div.querySelector(".t").append(when);
        grid.appendChild(div);
      }
      const key = seriesKey(r.metric, unit);
      if (r.value != null && ![...metricSelect.options].some((o) => o.value === key)) {
        metricSelect.add(new Option(withUnit(r.metric, unit && `(${unit})`), key));
        if (!selected) {
          metricSelect.value = key;
          load();
        }
      }
    });
    if (!isLive() || !state.data || !state.plot) return;
    const mine = readings.filter((r) => seriesKey(r.metric, r.unit) === selected && r.value != null);
    if (!mine.length) return;
    const span = state.range === "24h" ? 86400 : 3600;
    const now = Date.now() / 1000;
    state.xmax = Math.max(state.xmax, now);
    state.xmin = Math.max(state.xmin, now - span);
    mine.forEach((r) => addReading(r.t, Number(r.value)));
    while (state.data[0].length && state.data[0][0] < now - span) {
      state.data[0].shift();
      state.data[1].shift();
    }
    state.plot.setData(state.data);
    renderHistory();
    chartEl.dataset.points = String(state.data[0].length);
    chartEl.dataset.last = format.value(mine[mine.length - 1].value);
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
        commandError.textContent = body.detail || "The command was not sent.";
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
      commandError.textContent = body.detail || "Could not cancel.";
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
    source.addEventListener("end", (e) => window.fieldhubLiveEnded(source, e, liveDot));
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
        li.innerHTML = '<span class="pill"></span> <span class="rule"></span> <span class="alert-state"></span> <span class="muted small"></span>';
        li.querySelector(".pill").textContent = a.severity;
        li.querySelector(".pill").classList.add("sev-" + a.severity);
        li.querySelector(".rule").textContent = `${a.rule} —`;
        li.querySelector(".alert-state").textContent = a.state;
        li.querySelector(".alert-state").classList.add("state-" + a.state);
        li.querySelector(".small").append(format.timeElement(a.started_at, "ago"));
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

  // -- ranges --------------------------------------------------------------------------------
  // The two fields show and take times in the person's zone; the server gets UTC.
  function showCustom(fromMs, toMs) {
    document.querySelectorAll("button.range").forEach((b) => b.classList.toggle("selected", b.dataset.range === "custom"));
    customForm.classList.remove("hidden");
    customStart.value = format.inputValue(fromMs);
    customEnd.value = format.inputValue(toMs);
  }

  function applyCustom() {
    const start = format.fromInput(customStart.value);
    const end = customEnd.value ? format.fromInput(customEnd.value) : null;
    if (Number.isNaN(start) || Number.isNaN(end)) {
      sourceNote.textContent = "Enter a start (and optionally an end) time.";
      return;
    }
    state.range = "custom";
    state.start = new Date(start).toISOString();
    state.end = end == null ? null : new Date(end).toISOString();
    load();
  }

  document.querySelectorAll("button.range").forEach((button) => {
    button.addEventListener("click", () => {
      if (button.dataset.range === "custom") {
        // Start from what the chart shows now.
        showCustom(state.xmin * 1000, state.xmax * 1000);
        return;
      }
      document.querySelectorAll("button.range").forEach((b) => b.classList.toggle("selected", b === button));
      customForm.classList.add("hidden");
      state.range = button.dataset.range;
      load();
    });
  });
  customForm.addEventListener("submit", (event) => {
    event.preventDefault();
    applyCustom();
  });
  metricSelect.addEventListener("change", load);
  window.addEventListener("resize", () => {
    if (state.plot) state.plot.setSize({ width: chartEl.clientWidth, height: 320 });
  });
  load().then(connect);
})();
