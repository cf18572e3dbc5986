"""A user of the web app during `fieldhub bench hosts`, run on the lab's ops host.

It logs in through nginx and watches one device's page live, and meanwhile a program of the
same user sends commands through the JSON API and follows each one to its final status. Every
observation is one JSON line appended to --events (the harness tails that file):

    {"t": ..., "kind": "login"}
    {"t": ..., "kind": "live", "event": "open" | "hello" | "readings" | "error" | ...}
    {"t": ..., "kind": "command_sent", "id", "device", "http"}   (the API accepted it)
    {"t": ..., "kind": "command", "id", "device", "sent", "status"}  (final, or "open" at exit)
    {"t": ..., "kind": "command_error", "device", "error"}      (the API call itself failed)

The live view is Debian's Chromium driven by Playwright when both are installed: the page's
own EventSource, wrapped by an init script that records each event, so a reconnect is the
browser's, exactly as a user would see it. Without Playwright it is a plain server-sent-events
client that reconnects after the `retry` the server announces, as EventSource does.

`python -m fieldhub.bench.hosts_user --help`; it runs until SIGTERM, then sends no more
commands and follows those it sent for up to FINISH_S."""

from __future__ import annotations

import argparse
import http.cookiejar
import itertools
import json
import re
import shutil
import signal
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from fieldhub.core.command_states import FINAL_STATUSES

# Debian's Chromium (Playwright cannot download browsers here), as the browser tests launch it.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
# Records every event of every EventSource the page opens, for the harness to collect.
RECORD_EVENTS_JS = """
(() => {
  const Native = window.EventSource;
  window.__fhEvents = [];
  const record = (type) => window.__fhEvents.push({ type, t: Date.now() });
  class Recorded extends Native {
    constructor(url, options) {
      super(url, options);
      this.addEventListener("open", () => record("open"));
      this.addEventListener("error", () => record("error"));
      for (const name of ["hello", "readings", "presence", "command", "alerts"]) {
        this.addEventListener(name, () => record(name));
      }
    }
  }
  window.EventSource = Recorded;
})();
"""
COMMAND_TTL_S = 300
POLL_S = 0.5
FINISH_S = 15.0  # after SIGTERM, how long commands already sent are followed


class Events:
    """Appends one JSON object per line, flushed at once (the harness reads as they come)."""

    def __init__(self, path: Path) -> None:
        self._file: IO[str] = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def emit(self, kind: str, t: float | None = None, **fields: Any) -> None:
        line = json.dumps({"t": time.time() if t is None else t, "kind": kind, **fields})
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()


def tls_context(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


# -- commands through the API ---------------------------------------------------------------------
class CommandSender:
    def __init__(
        self,
        base: str,
        token: str,
        context: ssl.SSLContext,
        devices: list[str],
        every_s: float,
        events: Events,
    ) -> None:
        self.base = base
        self.token = token
        self.context = context
        self.devices = itertools.cycle(devices)
        self.every_s = every_s
        self.events = events
        self.pending: dict[str, tuple[str, float]] = {}

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(  # noqa: S310 - the lab's own https URL
            self.base + path,
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10, context=self.context) as response:  # noqa: S310
            return response.status, json.loads(response.read())

    def run(self, stop: threading.Event) -> None:
        next_send = time.monotonic()
        while not stop.is_set():
            if time.monotonic() >= next_send:
                self._send(next(self.devices))
                next_send += self.every_s
            self._follow()
            stop.wait(POLL_S)
        # Stopped: send nothing more, but give what was sent the time to finish.
        deadline = time.monotonic() + FINISH_S
        while self.pending and time.monotonic() < deadline:
            time.sleep(POLL_S)
            self._follow()
        for command_id, (device, sent) in self.pending.items():
            self.events.emit("command", id=command_id, device=device, sent=sent, status="open")

    def _send(self, device: str) -> None:
        sent = time.time()
        try:
            status, body = self._call(
                "POST",
                f"api/v1/devices/{device}/commands",
                {"name": "ping", "params": {}, "ttl_s": COMMAND_TTL_S},
            )
        except urllib.error.HTTPError as exc:
            self.events.emit("command_error", t=sent, device=device, error=f"HTTP {exc.code}")
            return
        except OSError as exc:
            self.events.emit("command_error", t=sent, device=device, error=str(exc))
            return
        self.pending[str(body["id"])] = (device, sent)
        self.events.emit("command_sent", t=sent, id=str(body["id"]), device=device, http=status)

    def _follow(self) -> None:
        for command_id, (device, sent) in list(self.pending.items()):
            try:
                _, body = self._call("GET", f"api/v1/commands/{command_id}")
            except (urllib.error.HTTPError, OSError):
                continue  # asked again on the next round
            if body["status"] in FINAL_STATUSES:
                del self.pending[command_id]
                self.events.emit(
                    "command", id=command_id, device=device, sent=sent, status=body["status"]
                )


# -- the live view ---------------------------------------------------------------------------------
def watch_with_browser(
    base: str, email: str, password: str, device: str, events: Events, stop: threading.Event,
    screenshot: Path | None,
) -> None:  # fmt: skip
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=list(CHROMIUM_ARGS)
        )
        # The lab's CA is not in Chromium's store; the API client above verifies it.
        context = browser.new_context(ignore_https_errors=True)
        context.add_init_script(RECORD_EVENTS_JS)
        page = context.new_page()
        page.goto(base + "login")
        page.fill("input[name=email]", email)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/login" not in url, timeout=30_000)
        events.emit("login", via="browser")
        page.goto(base + f"devices/{device}")
        while not stop.is_set():
            for event in page.evaluate("() => window.__fhEvents.splice(0)"):
                events.emit("live", t=event["t"] / 1000, event=event["type"])
            page.wait_for_timeout(250)
        if screenshot is not None:
            page.screenshot(path=str(screenshot), full_page=True)
        browser.close()


def watch_with_sse(
    base: str,
    email: str,
    password: str,
    device: str,
    events: Events,
    stop: threading.Event,
    context: ssl.SSLContext,
) -> None:
    cookies = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(cookies), urllib.request.HTTPSHandler(context=context)
    )
    with opener.open(base + "login", timeout=10) as page:
        form = page.read().decode()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
    if csrf is None:
        raise RuntimeError("the login page has no CSRF token")
    body = urllib.parse.urlencode({"email": email, "password": password, "csrf_token": csrf[1]})
    with opener.open(base + "login", body.encode(), timeout=10) as done:
        if done.url.endswith("/login"):
            raise RuntimeError(f"{email} could not log in")
    events.emit("login", via="sse")
    retry_s = 2.0
    since = time.time()
    while not stop.is_set():
        try:
            with opener.open(f"{base}devices/{device}/live?since={since}", timeout=30) as stream:
                events.emit("live", event="open")
                for event, data in sse_events(stream):
                    if event == "retry":
                        retry_s = int(data) / 1000
                        continue
                    events.emit("live", event=event)
                    if event == "readings":
                        readings = json.loads(data)
                        if readings:
                            since = readings[-1]["t"]
                    if stop.is_set():
                        return
        except (OSError, ValueError):
            pass
        events.emit("live", event="error")
        stop.wait(retry_s)


def sse_events(lines: Iterator[bytes]) -> Iterator[tuple[str, str]]:
    """(event, data) per server-sent event; ("retry", ms) for a reconnection delay. Comments
    (keep-alives) are skipped."""
    event, data = "message", list[str]()
    for raw in lines:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
            elif field == "retry" and value.isdigit():
                yield "retry", value


def browser_available() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return shutil.which(CHROMIUM) is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fieldhub.bench.hosts_user")
    parser.add_argument("--base", required=True, help="https://NGINX/")
    parser.add_argument("--ca", type=Path, required=True, help="CA of nginx's certificate")
    parser.add_argument("--email", required=True)
    parser.add_argument("--password-file", type=Path, required=True)
    parser.add_argument("--token-file", type=Path, required=True, help="the API token")
    parser.add_argument("--device", required=True, help="the device to watch live")
    parser.add_argument("--command-devices", required=True, help="comma-separated device ids")
    parser.add_argument("--command-every", type=float, default=2.0, metavar="S")
    parser.add_argument("--events", type=Path, required=True)
    parser.add_argument("--browser", choices=("auto", "chromium", "sse"), default="auto")
    parser.add_argument("--screenshot", type=Path, default=None)
    args = parser.parse_args(argv)
    events = Events(args.events)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    context = tls_context(args.ca)
    sender = CommandSender(
        args.base,
        args.token_file.read_text().strip(),
        context,
        args.command_devices.split(","),
        args.command_every,
        events,
    )
    commands = threading.Thread(target=sender.run, args=(stop,), name="commands")
    commands.start()
    password = args.password_file.read_text().strip()
    use_browser = args.browser == "chromium" or (args.browser == "auto" and browser_available())
    try:
        if use_browser:
            watch_with_browser(
                args.base, args.email, password, args.device, events, stop, args.screenshot
            )
        else:
            watch_with_sse(args.base, args.email, password, args.device, events, stop, context)
    except Exception as exc:
        events.emit("user_error", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        stop.set()
        commands.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
