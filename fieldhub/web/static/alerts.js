// The alerts page follows its organisation's alerts live: each change re-reads the page's
// own list (server-rendered, scoped like the page) and swaps the table body.
"use strict";
(() => {
  const table = document.getElementById("alert-table");
  if (!table) return;
  const dot = document.getElementById("live-state");
  let pending = null;

  async function refresh() {
    pending = null;
    const resp = await fetch(location.href, { headers: { Accept: "text/html" } });
    if (!resp.ok) return;
    const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
    const fresh = doc.querySelector("#alert-table tbody");
    if (fresh) {
      window.fieldhub.format.render(fresh);
      table.tBodies[0].replaceWith(fresh);
    }
    table.dataset.refreshed = String(Date.now());
  }

  const source = new EventSource(table.dataset.liveUrl);
  source.addEventListener("hello", () => {
    dot.classList.add("on");
    document.body.dataset.live = "connected";
  });
  source.addEventListener("alert", () => {
    // A burst of changes (one evaluation opening many alerts) costs one re-read.
    if (!pending) pending = setTimeout(refresh, 200);
  });
  source.addEventListener("end", (e) => window.fieldhubLiveEnded(source, e, dot));
  source.onerror = () => {
    dot.classList.remove("on");
    document.body.dataset.live = "reconnecting";
  };
})();
