// The device list refreshes online state, last seen and latest values every 10 s while visible.
"use strict";
(() => {
  const table = document.getElementById("device-list");
  if (!table) return;
  const rows = [...table.querySelectorAll("tr[data-device]")];
  if (!rows.length) return;
  const ids = rows.map((r) => r.dataset.device).join(",");
  const fmt = (v) => (typeof v === "number" ? Number(v.toPrecision(4)).toString() : String(v));

  function ago(iso) {
    if (!iso) return "never";
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (s < 60) return `${Math.floor(s)} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }

  async function refresh() {
    if (document.hidden) return;
    const resp = await fetch(`${table.dataset.stateUrl}?ids=${encodeURIComponent(ids)}`, { headers: { Accept: "application/json" } });
    if (!resp.ok) return;
    const body = await resp.json();
    body.devices.forEach((d) => {
      const row = table.querySelector(`tr[data-device="${CSS.escape(d.device_id)}"]`);
      if (!row) return;
      const pill = document.createElement("span");
      pill.className = "pill " + (!d.enabled ? "disabled" : d.online ? "online" : "offline");
      pill.textContent = !d.enabled ? "disabled" : d.online ? "online" : "offline";
      row.querySelector(".state").replaceChildren(pill);
      row.querySelector(".seen").textContent = ago(d.last_seen);
      const values = row.querySelector(".values");
      values.replaceChildren(
        ...d.latest.map((v) => {
          const span = document.createElement("span");
          span.className = "kv";
          const key = document.createElement("span");
          key.className = "k";
          key.textContent = v.metric;
          span.append(key, " " + fmt(v.value));
          return span;
        })
      );
    });
    table.dataset.refreshed = String(Date.now());
  }

  setInterval(refresh, 10000);
  document.addEventListener("visibilitychange", refresh);
})();
