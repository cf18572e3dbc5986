"""Template helpers: the current user, CSRF tokens, and readable times and values.

Times are rendered in the person's zone on the server, so a page reads right without
JavaScript: their account's zone when they chose one, else their browser's as its last page
reported it (cookie `fh_tz`, written by static/format.js), else UTC on the very first page.
Each time is a `<time datetime="...Z">` element, which format.js redraws in the browser's zone
when the server guessed wrong."""

from __future__ import annotations

import dataclasses
import json
import zoneinfo
from datetime import UTC, datetime, tzinfo
from typing import Any

from flask import Flask, g, request
from markupsafe import Markup, escape

from fieldhub.core import time_zones
from fieldhub.web import display
from fieldhub.web.auth import csrf_token, current_user, has_role

ZONE_COOKIE = "fh_tz"


@dataclasses.dataclass(frozen=True)
class DisplayZone:
    name: str
    zone: tzinfo
    # 'account': the person chose it; 'browser': the browser's own, as far as the server knows.
    source: str


def init_app(app: Flask) -> None:
    app.jinja_env.filters["ago"] = ago
    app.jinja_env.filters["when"] = when
    app.jinja_env.filters["reading"] = reading
    app.jinja_env.filters["tojson_compact"] = lambda v: json.dumps(v, separators=(",", ":"))

    @app.context_processor
    def helpers() -> dict[str, Any]:
        return {
            "csrf_token": csrf_token,
            "current_user": current_user(),
            "has_role": has_role,
            "display_zone": display_zone,
            "browser_zone": browser_zone,
        }


def display_zone() -> DisplayZone:
    """The zone this request's times are rendered in (see the module docstring)."""
    found: DisplayZone | None = g.get("display_zone")
    if found is not None:
        return found
    user = current_user()
    chosen = user.get("time_zone") if user else None
    if chosen:
        found = _zone(chosen, "account")
    if found is None:
        found = _zone(browser_zone() or "", "browser")
    if found is None:
        found = DisplayZone("UTC", UTC, "browser")
    g.display_zone = found
    return found


def browser_zone() -> str | None:
    """The browser's zone as its last page reported it, if it is one the server knows."""
    try:
        return time_zones.check_zone(request.cookies.get(ZONE_COOKIE, ""))
    except time_zones.TimeZoneError:
        return None


def _zone(name: str, source: str) -> DisplayZone | None:
    try:
        checked = time_zones.check_zone(name)
    except time_zones.TimeZoneError:
        return None
    return DisplayZone(checked, zoneinfo.ZoneInfo(checked), source)


def when(value: datetime | None) -> Markup:
    """An instant as the person's wall clock: `<time datetime="...Z">2026-01-31 13:00:05</time>`."""
    if value is None:
        return escape(display.MISSING)
    return Markup('<time datetime="{}" data-format="datetime">{}</time>').format(
        display.iso_utc(value), display.local_time(value, display_zone().zone)
    )


def ago(value: datetime | None, now: datetime | None = None) -> Markup:
    """'3 min ago' with the wall clock as its tooltip, or 'never'."""
    if value is None:
        return Markup("never")
    return Markup('<time datetime="{}" data-format="ago" title="{}">{}</time>').format(
        display.iso_utc(value),
        display.local_time(value, display_zone().zone),
        display.ago(value, now),
    )


def reading(value: Any, unit: str = "") -> str:
    """A value as a person reads it (fieldhub.web.display), with its unit when it has one:
    "20 %RH"."""
    text = display.value_text(value)
    return f"{text} {unit}" if unit and value is not None else text
