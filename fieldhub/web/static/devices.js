// The device list refreshes online state, last seen and latest values every 10 s while visible.
"use strict";
(() => {
  const table = document.getElementById("device-list");
  if (!table) return;
  const rows = [...table.querySelectorAll("tr[data-device]")];
  if (!rows.length) return;
  const ids = rows.map((r) => r.dataset.device).join(",");
  const format = window.fieldhub.format;

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
      row.querySelector(".seen").replaceChildren(format.timeElement(d.last_seen, "ago"));
      const values = row.querySelector(".values");
      values.replaceChildren(
        ...d.latest.map((v) => {
          const span = document.createElement("span");
          span.className = "kv";
          const key = document.createElement("span");
          key.className = "k";
          key.textContent = v.metric;
          span.append(key, " " + format.value(v.value) + (v.unit ? " " + v.unit : ""));
          return span;
        })
      );
    });
    table.dataset.refreshed = String(Date.now());
  }

  setInterval(refresh, 10000);
  document.addEventListener("visibilitychange", refresh);
})();
