// What a person reads for a time or a reading, in the browser: the rules of
// fieldhub/web/display.py, applied to what arrives after the page (live updates, the chart, the
// history table). Times travel in UTC; they are shown in the person's zone: the one on their
// account (<html data-time-zone-source="account">), else the browser's own.
"use strict";
window.fieldhub = window.fieldhub || {};
window.fieldhub.format = (() => {
  const root = document.documentElement;
  const browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  const ZONE_NAME = /^[A-Za-z][A-Za-z0-9_+/-]{0,63}$/;
  const wallFormatIn = (timeZone) =>
    new Intl.DateTimeFormat("en-US", {
      timeZone,
      hourCycle: "h23",
      year: "numeric",
      month: "2-digit",
      day: "2-digit",
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
    });
  let fromAccount = root.dataset.timeZoneSource === "account";
  let wallFormat;
  try {
    wallFormat = wallFormatIn(fromAccount ? root.dataset.timeZone : browserZone);
  } catch (err) {
    // A zone newer than this browser's zone data: the browser's own is the best it can do.
    fromAccount = false;
    wallFormat = wallFormatIn(browserZone);
  }
  const zone = wallFormat.resolvedOptions().timeZone;

  // The wall clock of `zone` at an instant (epoch milliseconds), as numbers.
  function wall(ms) {
    const out = {};
    wallFormat.formatToParts(new Date(ms)).forEach((p) => {
      if (p.type !== "literal") out[p.type] = Number(p.value);
    });
    return out;
  }

  const pad = (n, width = 2) => String(n).padStart(width, "0");
  const dateText = (w) => `${pad(w.year, 4)}-${pad(w.month)}-${pad(w.day)}`;

  // "2026-01-31 13:00:05", as display.local_time writes it.
  function time(ms) {
    const w = wall(ms);
    return `${dateText(w)} ${pad(w.hour)}:${pad(w.minute)}:${pad(w.second)}`;
  }

  // The value of a datetime-local input showing that instant in the person's zone (minutes).
  function inputValue(ms) {
    const w = wall(ms);
    return `${dateText(w)}T${pad(w.hour)}:${pad(w.minute)}`;
  }

  function offsetAt(ms) {
    const w = wall(ms);
    return Date.UTC(w.year, w.month - 1, w.day, w.hour, w.minute, w.second) - Math.floor(ms / 1000) * 1000;
  }

  // The instant (epoch ms) a datetime-local value means in the person's zone; NaN if malformed.
  // A wall time that happens twice (clocks going back) is the first; one that never happens
  // (clocks going forward) moves forward by the gap, as browsers do with new Date(y, m, ...).
  function fromInput(text) {
    const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?/.exec(text || "");
    if (!m) return NaN;
    const asUtc = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] || 0));
    const before = asUtc - offsetAt(asUtc - 86400000);
    const after = asUtc - offsetAt(asUtc + 86400000);
    if (before === after) return before;
    const earlier = Math.min(before, after);
    const later = Math.max(before, after);
    if (asUtc - offsetAt(earlier) === earlier) return earlier;
    if (asUtc - offsetAt(later) === later) return later;
    return asUtc - offsetAt(asUtc - 86400000);
  }

  function ago(ms, now = Date.now()) {
    if (ms == null || Number.isNaN(ms)) return "never";
    const s = (now - ms) / 1000;
    if (s < 0) return "just now";
    if (s < 60) return `${Math.floor(s)} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }

  const SIGNIFICANT = 4;
  const TEXT_LIMIT = 40;
  const stripZeros = (t) => (t.includes(".") ? t.replace(/0+$/, "").replace(/\.$/, "") : t);

  function number(v) {
    if (Number.isNaN(v)) return "NaN";
    if (!Number.isFinite(v)) return v > 0 ? "∞" : "-∞";
    if (v === 0) return "0";
    const size = Math.abs(v);
    if (size < 1e-4 || size >= 1e15) {
      const [mantissa, exponent] = v.toExponential(SIGNIFICANT - 1).split("e");
      return `${stripZeros(mantissa)}e${Number(exponent)}`;
    }
    const digits = Math.floor(Math.log10(size)) + 1;
    return stripZeros(v.toFixed(Math.max(0, SIGNIFICANT - digits)));
  }

  // A reading as display.value_text writes it: true/false, numbers, text cut at 40 characters.
  function value(v) {
    if (v == null) return "—";
    if (typeof v === "boolean") return v ? "true" : "false";
    if (typeof v === "number") return number(v);
    const text = String(v);
    return [...text].length <= TEXT_LIMIT ? text : [...text].slice(0, TEXT_LIMIT - 1).join("") + "…";
  }

  // A <time> element as the server's `when` and `ago` filters write it.
  function timeElement(iso, kind = "datetime") {
    const el = document.createElement("time");
    if (!iso) {
      el.textContent = kind === "ago" ? "never" : "—";
      return el;
    }
    el.dateTime = iso;
    el.dataset.format = kind;
    renderOne(el);
    return el;
  }

  function renderOne(el) {
    const ms = Date.parse(el.dateTime);
    if (Number.isNaN(ms)) return;
    if (el.dataset.format === "ago") {
      el.title = time(ms);
      el.textContent = ago(ms);
    } else {
      el.textContent = time(ms);
    }
  }

  // Server-rendered times are already in the right zone, except while the server does not
  // know the browser's (the first page of a visit, or after travelling): then redraw them.
  function render(scope = document) {
    scope.querySelectorAll("time[datetime][data-format]").forEach(renderOne);
  }

  const shown = document.getElementById("browser-zone");
  if (shown) shown.textContent = browserZone;
  if (!fromAccount) {
    if (root.dataset.timeZone !== browserZone) render();
    const note = document.getElementById("zone-name");
    if (note) note.textContent = browserZone;
    // Tell the server, so the next pages arrive in this zone and never need redrawing.
    const cookie = document.cookie.split("; ").find((c) => c.startsWith("fh_tz="));
    if (ZONE_NAME.test(browserZone) && cookie !== `fh_tz=${browserZone}`) {
      const secure = location.protocol === "https:" ? "; secure" : "";
      document.cookie = `fh_tz=${browserZone}; path=/; max-age=31536000; samesite=lax${secure}`;
    }
  }

  return { zone, browserZone, time, inputValue, fromInput, ago, value, timeElement, render };
})();
