// An import's page polls its progress every second until the import is done or failed, then
// reloads once to show the result (bad lines by line number) rendered by the server.
"use strict";
(() => {
  const card = document.getElementById("import-card");
  if (!card || card.dataset.final) return;
  const bar = document.getElementById("import-bar");
  const set = (id, value) => {
    document.getElementById(id).textContent = String(value);
  };

  async function poll() {
    const resp = await fetch(card.dataset.progressUrl, { headers: { Accept: "application/json" } });
    if (resp.ok) {
      const p = await resp.json();
      bar.style.width = `${p.percent}%`;
      bar.parentElement.setAttribute("aria-valuenow", String(p.percent));
      set("import-percent", p.percent);
      set("import-rate", Math.round(p.rows_per_s));
      set("import-rows", p.processed_rows);
      set("import-imported", p.rows_imported);
      set("import-rejected", p.rows_rejected);
      set("import-status", p.status);
      const note = document.getElementById("import-note");
      if (note && p.status !== "queued") note.remove();
      if (p.status === "done" || p.status === "failed") {
        location.reload();
        return;
      }
    }
    setTimeout(poll, 1000);
  }
  setTimeout(poll, 1000);
})();
