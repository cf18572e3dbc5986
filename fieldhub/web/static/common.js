// Small behaviours shared by every page (kept out of the HTML: the CSP forbids inline script).
"use strict";
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});
document.querySelectorAll("select[data-autosubmit]").forEach((select) => {
  select.addEventListener("change", () => select.form.submit());
});

// A live stream's `end` event: the session that opened it is gone (logout, a password change,
// a disabled account). Stop the browser's automatic reconnect and say why, once.
window.fieldhubLiveEnded = (source, event, dot) => {
  source.close();
  if (dot) {
    dot.classList.remove("on");
    dot.title = "Live updates ended";
  }
  document.body.dataset.live = "ended";
  if (document.getElementById("live-ended")) return;
  const reason = JSON.parse(event.data).reason;
  const note = document.createElement("div");
  note.id = "live-ended";
  note.className = "flash flash-error";
  note.setAttribute("role", "status");
  const link = document.createElement("a");
  link.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
  link.textContent = "Log in again";
  note.append(reason + " ", link, ".");
  document.querySelector("main").prepend(note);
};
