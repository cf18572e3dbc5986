"""Pure alert logic: rule validation, the breach test and the state machine (no I/O)."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any, Literal

Condition = Literal["above", "below", "outside"]
CONDITIONS: tuple[Condition, ...] = ("above", "below", "outside")
SEVERITIES = ("info", "warning", "critical")
MAX_FOR_SECONDS = 7 * 24 * 3600
_LABEL_KEY = re.compile(r"\A[A-Za-z0-9_.:/-]{1,64}\Z")


class RuleError(ValueError):
    """A rule definition that cannot be stored; the message says which field and why."""


@dataclasses.dataclass(frozen=True)
class RuleSpec:
    name: str
    metric: str
    condition: Condition
    threshold_low: float | None
    threshold_high: float | None
    for_seconds: int
    severity: str
    device_id: str | None
    label_key: str | None
    label_value: str | None
    enabled: bool = True

    def as_params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _number(raw: Any, field: str) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise RuleError(f"{field} must be a number, not {raw!r}") from None
    if not math.isfinite(value):
        raise RuleError(f"{field} must be a finite number")
    return value


def parse_rule(data: Mapping[str, Any]) -> RuleSpec:
    """Validate a rule from a form, JSON body or CLI arguments."""
    name = str(data.get("name") or "").strip()
    if not 1 <= len(name) <= 200:
        raise RuleError("name must be 1 to 200 characters")
    metric = str(data.get("metric") or "").strip()
    if not 1 <= len(metric) <= 200:
        raise RuleError("metric must be 1 to 200 characters")
    condition = data.get("condition")
    if condition not in CONDITIONS:
        raise RuleError("condition must be above, below or outside")
    low = _number(data.get("threshold_low"), "threshold_low")
    high = _number(data.get("threshold_high"), "threshold_high")
    if condition == "above" and high is None:
        raise RuleError("an 'above' rule needs threshold_high")
    if condition == "below" and low is None:
        raise RuleError("a 'below' rule needs threshold_low")
    if condition == "outside":
        if low is None or high is None:
            raise RuleError("an 'outside' rule needs threshold_low and threshold_high")
        if low > high:
            raise RuleError("threshold_low must not be above threshold_high")
    try:
        for_seconds = int(data.get("for_seconds") or 0)
    except (TypeError, ValueError):
        raise RuleError("for_seconds must be a whole number of seconds") from None
    if not 0 <= for_seconds <= MAX_FOR_SECONDS:
        raise RuleError(f"for_seconds must be between 0 and {MAX_FOR_SECONDS}")
    severity = data.get("severity") or "warning"
    if severity not in SEVERITIES:
        raise RuleError("severity must be info, warning or critical")
    device_id = data.get("device_id") or None
    label_key = data.get("label_key") or None
    label_value = data.get("label_value")
    if (device_id is None) == (label_key is None):
        raise RuleError("a rule targets either one device (device_id) or a label (label_key)")
    if label_key is not None:
        if not _LABEL_KEY.match(str(label_key)):
            raise RuleError("label_key must be 1-64 of letters, digits and _.:/-")
        if label_value is None:
            raise RuleError("a label rule needs label_value")
        label_value = str(label_value)
    else:
        label_value = None
    return RuleSpec(
        name=name,
        metric=metric,
        condition=condition,
        threshold_low=low if condition != "above" else None,
        threshold_high=high if condition != "below" else None,
        for_seconds=for_seconds,
        severity=str(severity),
        device_id=str(device_id) if device_id else None,
        label_key=str(label_key) if label_key else None,
        label_value=label_value,
        enabled=bool(data.get("enabled", True)),
    )


def breaches(condition: str, value: float, low: float | None, high: float | None) -> bool:
    """Whether one value violates the rule (thresholds themselves are not a breach)."""
    if condition == "above":
        return high is not None and value > high
    if condition == "below":
        return low is not None and value < low
    return (low is not None and value < low) or (high is not None and value > high)


Action = Literal["fire", "clear", "none"]


def decide(*, open_alert: bool, sustained: bool, latest_breaches: bool) -> Action:
    """The state machine: one alert per rule and device while the condition lasts.

    `sustained`: the condition has held for at least the rule's duration (every reading in
    that window breached). An open (active or acknowledged) alert clears as soon as the
    latest reading is back within bounds."""
    if open_alert:
        return "clear" if not latest_breaches else "none"
    return "fire" if sustained and latest_breaches else "none"


def describe(
    condition: str, metric: str, value: float, low: float | None, high: float | None
) -> str:
    if condition == "above":
        return f"{metric} = {value:g} is above {high:g}"
    if condition == "below":
        return f"{metric} = {value:g} is below {low:g}"
    return f"{metric} = {value:g} is outside [{low:g}, {high:g}]"


def backoff_s(attempt: int, *, base_s: float, cap_s: float = 3600.0) -> float:
    """Delay before retry number `attempt` (1 = the first retry): doubling, capped."""
    return float(min(cap_s, base_s * 2 ** max(0, attempt - 1)))
