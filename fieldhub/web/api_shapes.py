"""What /api/v1 takes and gives: one type per query string, body and response.

These types ARE the contract: fieldhub/web/openapi.py parses every request with them and makes
the OpenAPI document from them (fieldhub/web/contract.py says how), and mypy checks that the
views build responses of exactly these shapes. Bounds come from the modules that enforce them
(command names and time to live from fieldhub.core.command_requests, rule fields from the
analysis service's alert_logic), so a bound is written once."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime
from typing import Annotated, ClassVar, Literal, NamedTuple, NotRequired, TypedDict

from fieldhub.analysis.alert_logic import CONDITIONS, MAX_FOR_SECONDS, SEVERITIES
from fieldhub.core import command_requests
from fieldhub.core.command_states import STATUSES
from fieldhub.core.decode import MAX_UNIT_LENGTH
from fieldhub.web.contract import Doc, Length, OneOf, Pattern, Range, Upload
from fieldhub.web.history import AGGREGATES

# -- parameters shared by several operations ---------------------------------------------------
Cursor = Annotated[
    str,
    Length(1, 512),
    Doc("Where the page starts: the `cursor` of the previous page's `next` URL. Opaque."),
]
Org = Annotated[
    str,
    Length(1, 64),
    Doc("Operators only: the organisation (its handle) to act in; default their own."),
]
DeviceId = Annotated[
    str,
    Pattern("^[a-z0-9_-]{1,64}$"),
    Doc("Device id (lowercase letters, digits, '_' and '-')."),
]
ObjectId = Annotated[int, Range(1, 2**63 - 1)]
Severity = Annotated[str, OneOf(SEVERITIES)]
AlertState = Literal["active", "acknowledged", "cleared"]
CommandStatus = Annotated[str, OneOf(STATUSES)]
Json = Annotated[object, Doc("Any JSON value.")]


# -- devices -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DeviceQuery:
    q: Annotated[str, Length(0, 256), Doc("Search in id and display name.")] | None = None
    label: Annotated[str, Length(0, 4096), Doc("key=value[,key=value]: all must match.")] | None = (
        None
    )
    status: Literal["online", "offline"] | None = None
    limit: Annotated[int, Range(1, 1000)] = 100
    cursor: Cursor | None = None


class DeviceKey(NamedTuple):
    device_id: str


class LatestValue(TypedDict):
    metric: str
    unit: Annotated[str, Doc('The SenML unit the device sent (e.g. "%RH"); "" for none.')]
    time: datetime
    value: Annotated[object, Doc("A number, boolean or string, as the device sent it.")]


class Device(TypedDict):
    device_id: str
    org: str
    display_name: str
    labels: dict[str, str]
    enabled: bool
    online: bool
    last_seen: datetime | None
    created_at: datetime
    gateway_id: Annotated[str, Doc("The gateway device this device speaks through, if any.")] | None
    latest: NotRequired[list[LatestValue]]


class DevicePage(TypedDict):
    devices: list[Device]
    total: Annotated[int, Doc("How many devices match the filters, on every page.")]
    next: Annotated[str, Doc("The URL of the next page; null on the last.")] | None


class Latest(TypedDict):
    device_id: str
    values: list[LatestValue]


# -- telemetry -----------------------------------------------------------------------------
RAW_LIMIT = 10000
TELEMETRY_SOURCES = ("raw", "raw_buckets", "rollup_1m", "rollup_1h")


@dataclasses.dataclass(frozen=True)
class TelemetryQuery:
    metric: Annotated[str, Length(1, 256)]
    unit: Annotated[
        str,
        Length(0, MAX_UNIT_LENGTH),
        Doc('The series\' unit, as in the latest values ("": none, the default).'),
    ] = ""
    start: datetime | None = None
    end: datetime | None = None
    bucket: (
        Annotated[
            int,
            Range(1, 366 * 86400),
            Doc("Seconds per bucket; omit for raw points (paged, at most 10,000 per page)."),
        ]
        | None
    ) = None
    agg: Annotated[str, OneOf(AGGREGATES), Doc("The aggregate of each bucket.")] = "avg"
    limit: Annotated[int, Range(1, RAW_LIMIT), Doc("Raw points per page.")] = RAW_LIMIT
    cursor: Cursor | None = None


class PointKey(NamedTuple):
    # A reading's identity within one series is its time and seq (-1 for none).
    time: datetime
    seq: int


class Point(TypedDict):
    time: datetime
    value: float | None


class Telemetry(TypedDict):
    device_id: str
    metric: str
    unit: str
    start: datetime
    end: datetime
    bucket: int | None
    aggregate: str | None
    source: Annotated[str, OneOf(TELEMETRY_SOURCES)]
    truncated: Annotated[bool, Doc("Whether more raw points follow on the `next` page.")]
    points: list[Point]
    next: str | None


# -- twin ------------------------------------------------------------------------------------
TwinDocument = Annotated[
    dict[str, object], Doc("A JSON object of at most 16 KiB, nested at most 8 levels deep.")
]
Version = Annotated[int, Range(0)]


class TwinDesired(TypedDict):
    version: Version
    state: TwinDocument
    updated_at: datetime | None


class TwinReported(TypedDict):
    version: Annotated[int, Range(0), Doc("The desired version the device says it applied.")]
    seq: int | None
    state: TwinDocument
    updated_at: Annotated[datetime, Doc("When the last report came.")] | None


class TwinDelta(TypedDict):
    """The desired values the device has not reported (yet)."""

    version: Version
    state: TwinDocument


class Twin(TypedDict):
    device_id: str
    desired: TwinDesired
    reported: TwinReported
    delta: TwinDelta


@dataclasses.dataclass(frozen=True)
class TwinPatch:
    # Anything beside `desired` is a mistake in a patch, not a member to ignore.
    closed: ClassVar[bool] = True
    desired: Annotated[
        dict[str, object],
        Doc("A JSON merge patch (RFC 7396) of the desired state: null removes a key."),
    ]


@dataclasses.dataclass(frozen=True)
class TwinHistoryQuery:
    limit: Annotated[int, Range(1, 1000)] = 50


class TwinChange(TypedDict):
    version: int
    patch: TwinDocument
    actor: Annotated[str, Doc("Who: an e-mail address or the CLI.")]
    source: Literal["web", "api", "cli"]
    changed_at: datetime


class TwinHistory(TypedDict):
    changes: list[TwinChange]


@dataclasses.dataclass(frozen=True)
class GatewayChoice:
    gateway_id: DeviceId


# -- commands --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CommandQuery:
    status: CommandStatus | None = None
    limit: Annotated[int, Range(1, 500)] = 50
    cursor: Cursor | None = None


class CommandKey(NamedTuple):
    created_at: datetime
    id: uuid.UUID


@dataclasses.dataclass(frozen=True)
class NewCommand:
    name: Annotated[
        str,
        Pattern(f"^{command_requests.NAME_PATTERN.pattern}$"),
        Doc("What the device should do, e.g. reboot or set_interval."),
    ]
    params: Annotated[
        dict[str, object],
        Doc(f"A JSON object, at most {command_requests.MAX_PARAMS_BYTES} bytes as JSON."),
    ] = dataclasses.field(default_factory=dict)
    ttl_s: Annotated[
        int,
        Range(command_requests.MIN_TTL_S, command_requests.MAX_TTL_S),
        Doc("Seconds the command may wait for the device before it expires."),
    ] = command_requests.DEFAULT_TTL_S


class TimelineEvent(TypedDict):
    status: str
    at: datetime
    detail: Json | None


class Command(TypedDict):
    id: uuid.UUID
    device_id: str
    name: str
    params: dict[str, object]
    status: CommandStatus
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    result: Json | None
    error: str | None
    timeline: NotRequired[list[TimelineEvent]]


class CommandPage(TypedDict):
    commands: list[Command]
    next: str | None


# -- alerts ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class AlertQuery:
    state: AlertState | None = None
    device_id: DeviceId | None = None
    limit: Annotated[int, Range(1, 1000)] = 100
    cursor: Cursor | None = None


class AlertKey(NamedTuple):
    started_at: datetime
    id: int


class Alert(TypedDict):
    id: int
    device_id: str
    state: AlertState
    rule: str
    metric: str
    severity: Severity
    value: float | None
    message: str | None
    started_at: datetime
    acknowledged_at: datetime | None
    cleared_at: datetime | None


class AlertPage(TypedDict):
    alerts: list[Alert]
    next: str | None


# -- alert rules -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OrgQuery:
    org: Org | None = None


@dataclasses.dataclass(frozen=True)
class RuleQuery:
    org: Org | None = None
    limit: Annotated[int, Range(1, 1000)] = 100
    cursor: Cursor | None = None


class RuleKey(NamedTuple):
    id: int


RuleName = Annotated[str, Length(1, 200)]
Threshold = float | None


@dataclasses.dataclass(frozen=True)
class NewAlertRule:
    """A rule on one device (device_id) or on every device with a label (label_key and
    label_value): above threshold_high, below threshold_low, or outside both, for at least
    for_seconds."""

    name: RuleName
    metric: RuleName
    condition: Annotated[str, OneOf(CONDITIONS)]
    device_id: DeviceId | None = None
    label_key: Annotated[str, Length(1, 64)] | None = None
    label_value: Annotated[str, Length(0, 256)] | None = None
    threshold_low: Threshold = None
    threshold_high: Threshold = None
    for_seconds: Annotated[int, Range(0, MAX_FOR_SECONDS)] = 0
    severity: Severity = "warning"
    enabled: bool = True
    org: Org | None = None


class AlertRule(TypedDict):
    id: int
    name: str
    metric: str
    device_id: str | None
    label_key: str | None
    label_value: str | None
    condition: Annotated[str, OneOf(CONDITIONS)]
    threshold_low: float | None
    threshold_high: float | None
    for_seconds: int
    severity: Severity
    enabled: bool
    created_at: datetime


class RulePage(TypedDict):
    rules: list[AlertRule]
    next: str | None


# -- the webhook -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class NewWebhook:
    url: Annotated[str, Length(1, 2000), Doc("An http:// or https:// URL.")]
    enabled: bool = True
    org: Org | None = None


class Webhook(TypedDict):
    url: str
    enabled: bool
    legacy_signature: Annotated[
        bool,
        Doc(
            "Set up before deliveries were signed with a timestamp: also gets the replayable "
            "X-Fieldhub-Signature header until saved again."
        ),
    ]


class WebhookSetting(TypedDict):
    webhook: Webhook | None


class SavedWebhook(TypedDict):
    url: str
    enabled: bool
    secret: Annotated[
        str,
        Doc(
            "whsec_<base64 key>: the Standard Webhooks secret that verifies webhook-signature; "
            "shown in this answer only."
        ),
    ]


@dataclasses.dataclass(frozen=True)
class DeliveryQuery:
    org: Org | None = None
    limit: Annotated[int, Range(1, 1000)] = 100
    cursor: Cursor | None = None


class DeliveryKey(NamedTuple):
    created_at: datetime
    id: int


class Delivery(TypedDict):
    id: int
    alert_id: int | None
    event: str
    status: Literal["pending", "delivered", "failed"]
    attempt_count: int
    attempts: Annotated[list[dict[str, object]], Doc("Every attempt: {at, status, error, ms}.")]
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None


class DeliveryPage(TypedDict):
    deliveries: list[Delivery]
    next: str | None


# -- imports ---------------------------------------------------------------------------------
ImportFormat = Literal["csv", "ndjson", "senml"]


@dataclasses.dataclass(frozen=True)
class ImportQuery:
    org: Org | None = None
    limit: Annotated[int, Range(1, 500)] = 50
    cursor: Cursor | None = None


class ImportKey(NamedTuple):
    created_at: datetime
    id: uuid.UUID


@dataclasses.dataclass(frozen=True)
class NewImport:
    file: Upload
    device_id: (
        Annotated[
            str,
            Pattern("^[a-z0-9_-]{1,64}$"),
            Doc("The device of every line; omit when the file has a device_id column."),
        ]
        | None
    ) = None
    format: Annotated[ImportFormat, Doc("Default: from the file name.")] | None = None
    org: Org | None = None


class BadLine(TypedDict):
    line: int
    reason: str


class Import(TypedDict):
    id: uuid.UUID
    status: Literal["queued", "running", "done", "failed"]
    filename: str
    format: ImportFormat
    device_id: str | None
    total_bytes: int
    processed_bytes: int
    percent: Annotated[float, Range(0, 100)]
    processed_rows: int
    rows_imported: int
    rows_rejected: int
    rows_per_s: float
    errors: Annotated[list[BadLine], Doc("Bad lines (the first 1,000), 1-based.")]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ImportPage(TypedDict):
    imports: list[Import]
    next: str | None


# -- dead letters ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DeadLetterQuery:
    since: Annotated[datetime, Doc("Only letters received at or after this time.")] | None = None
    limit: Annotated[int, Range(1, 500)] = 50
    cursor: Cursor | None = None


class DeadLetterKey(NamedTuple):
    received_at: datetime
    id: int


class DeadLetter(TypedDict):
    """A message of the device that the bridge refused, kept whole (docs/devices.md)."""

    id: int
    received_at: datetime
    device_id: Annotated[str, Doc("The device's id when the message came.")] | None
    topic: str
    reason: Annotated[str, Doc("The reason code (docs/devices.md has the table).")]
    explanation: Annotated[str, Doc("The reason in words.")]
    detail: Annotated[str, Doc("What exactly was wrong, e.g. which reading.")]
    payload_preview: Annotated[
        str,
        Doc(
            "The payload's first bytes: as text when they are UTF-8 without control "
            "characters (other than tab and line breaks), else as hex. Plain text: escape it."
        ),
    ]
    payload_encoding: Literal["text", "hex"]
    payload_bytes: Annotated[int, Doc("The size of the whole payload.")]
    payload_truncated: bool


class DeadLetterPage(TypedDict):
    dead_letters: list[DeadLetter]
    next: str | None


# -- errors ------------------------------------------------------------------------------------
class FieldProblem(TypedDict):
    detail: str
    parameter: NotRequired[Annotated[str, Doc("The query or path parameter at fault.")]]
    pointer: NotRequired[Annotated[str, Doc("A JSON Pointer (as a URI fragment) into the body.")]]


class Problem(TypedDict):
    """An RFC 9457 problem document; `type` opens the page that documents it."""

    type: Annotated[str, Doc("A URI reference, e.g. /api/v1/problems/not-found.")]
    title: str
    status: int
    detail: str
    errors: NotRequired[list[FieldProblem]]
    current_version: NotRequired[
        Annotated[int, Doc("precondition-failed: the version the object is at now.")]
    ]
