"""Template helpers: the current user, CSRF tokens, and readable times and values."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from flask import Flask

from fieldhub.web.auth import csrf_token, current_user, has_role


def init_app(app: Flask) -> None:
    app.jinja_env.filters["ago"] = ago
    app.jinja_env.filters["utc"] = utc
    app.jinja_env.filters["reading"] = reading
    app.jinja_env.filters["tojson_compact"] = lambda v: json.dumps(v, separators=(",", ":"))

    @app.context_processor
    def helpers() -> dict[str, Any]:
        return {"csrf_token": csrf_token, "current_user": current_user(), "has_role": has_role}


def utc(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(value: datetime | None, now: datetime | None = None) -> str:
    """'12 s ago', '3 min ago', '5 h ago', '2 d ago' or 'never'."""
    if value is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - value).total_seconds()
    if seconds < 0:
        return "just now"
    for limit, unit, size in ((60, "s", 1), (3600, "min", 60), (86400, "h", 3600)):
        if seconds < limit:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds // 86400)} d ago"


def reading(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.3e}"
    if value is None:
        return "—"
    text = str(value)
    return text if len(text) <= 40 else text[:39] + "…"
