"""The OpenAPI 3 document of /api/v1, kept next to the code it describes.

tests/web/test_openapi.py runs schemathesis against the live API with this document, so a
route or field that drifts from it fails the suite.
"""

from __future__ import annotations

from typing import Any

from fieldhub.core.command_states import STATUSES
from fieldhub.web.serializers import RULE_FIELDS

NULLABLE_TIME = {"type": "string", "format": "date-time", "nullable": True}
TIME = {"type": "string", "format": "date-time"}
DEVICE_ID = {
    "name": "device_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "Device id (lowercase letters, digits, '_' and '-').",
}
COMMAND_ID = {
    "name": "command_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "Command id (a UUID).",
}
COMMAND_STATUS = {"type": "string", "enum": list(STATUSES)}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    texts = {
        400: "The request's parameters are not valid.",
        401: "No API token, or not a valid one (unknown, revoked, expired, or its user "
        "disabled or their password changed).",
        403: "The token's role may not do this.",
        404: "No such object in the token's organisation.",
        409: "The command is already final, or the alert is not active.",
        412: "If-Match named a desired version the twin is no longer at (the error's "
        "current_version says which it is at).",
        413: "The upload is larger than the limit (100 MiB by default).",
        422: "The request was refused (the message says which field and why).",
    }
    return {str(code): _json(_ref("Error"), texts[code]) for code in codes}


def _path_int(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "integer"}}


IMPORT_ID = {
    "name": "import_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "Import id (a UUID).",
}
ORG_QUERY = {
    "name": "org",
    "in": "query",
    "required": False,
    "schema": {"type": "string"},
    "description": "Operators only: the organisation (handle) to act in; default their own.",
}
RULE_PROPERTIES: dict[str, Any] = {
    "name": {"type": "string", "minLength": 1, "maxLength": 200},
    "metric": {"type": "string", "minLength": 1, "maxLength": 200},
    "device_id": {"type": "string", "nullable": True},
    "label_key": {"type": "string", "nullable": True},
    "label_value": {"type": "string", "nullable": True},
    "condition": {"type": "string", "enum": ["above", "below", "outside"]},
    "threshold_low": {"type": "number", "nullable": True},
    "threshold_high": {"type": "number", "nullable": True},
    "for_seconds": {"type": "integer", "minimum": 0, "maximum": 604800},
    "severity": {"type": "string", "enum": ["info", "warning", "critical"]},
    "enabled": {"type": "boolean"},
}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "LatestValue": {
        "type": "object",
        "required": ["metric", "unit", "time", "value"],
        "properties": {
            "metric": {"type": "string"},
            "unit": {
                "type": "string",
                "description": 'The SenML unit the device sent (e.g. "%RH"); "" for none.',
            },
            "time": TIME,
            "value": {"description": "A number, boolean or string, as the device sent it."},
        },
    },
    "Device": {
        "type": "object",
        "required": [
            "device_id",
            "org",
            "display_name",
            "labels",
            "enabled",
            "online",
            "last_seen",
            "created_at",
        ],
        "properties": {
            "device_id": {"type": "string"},
            "org": {"type": "string"},
            "display_name": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "enabled": {"type": "boolean"},
            "online": {"type": "boolean"},
            "last_seen": NULLABLE_TIME,
            "created_at": TIME,
            "gateway_id": {
                "type": "string",
                "nullable": True,
                "description": "The gateway device this device speaks through, if any.",
            },
            "latest": {"type": "array", "items": _ref("LatestValue")},
        },
    },
    "TwinDocument": {
        "type": "object",
        "description": "A JSON object of at most 16 KiB, nested at most 8 levels deep.",
        "additionalProperties": True,
    },
    "Twin": {
        "type": "object",
        "required": ["device_id", "desired", "reported", "delta"],
        "properties": {
            "device_id": {"type": "string"},
            "desired": {
                "type": "object",
                "required": ["version", "state", "updated_at"],
                "properties": {
                    "version": {"type": "integer", "minimum": 0},
                    "state": _ref("TwinDocument"),
                    "updated_at": NULLABLE_TIME,
                },
            },
            "reported": {
                "type": "object",
                "required": ["version", "seq", "state", "updated_at"],
                "properties": {
                    "version": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "The desired version the device says it has applied.",
                    },
                    "seq": {"type": "integer", "nullable": True},
                    "state": _ref("TwinDocument"),
                    "updated_at": {**NULLABLE_TIME, "description": "When the last report came."},
                },
            },
            "delta": {
                "type": "object",
                "required": ["version", "state"],
                "description": "The desired values the device has not reported (yet).",
                "properties": {
                    "version": {"type": "integer", "minimum": 0},
                    "state": _ref("TwinDocument"),
                },
            },
        },
    },
    "TwinPatch": {
        "type": "object",
        "required": ["desired"],
        "additionalProperties": False,
        "properties": {
            "desired": {
                **_ref("TwinDocument"),
                "description": "A JSON merge patch (RFC 7396): null removes a key.",
            }
        },
    },
    "TwinChange": {
        "type": "object",
        "required": ["version", "patch", "actor", "source", "changed_at"],
        "properties": {
            "version": {"type": "integer"},
            "patch": _ref("TwinDocument"),
            "actor": {"type": "string", "description": "Who: an e-mail address or the CLI."},
            "source": {"type": "string", "enum": ["web", "api", "cli"]},
            "changed_at": TIME,
        },
    },
    "Command": {
        "type": "object",
        "required": [
            "id",
            "device_id",
            "name",
            "params",
            "status",
            "created_at",
            "updated_at",
            "expires_at",
        ],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "device_id": {"type": "string"},
            "name": {"type": "string"},
            "params": {"type": "object"},
            "status": COMMAND_STATUS,
            "created_at": TIME,
            "updated_at": TIME,
            "expires_at": TIME,
            "result": {"nullable": True},
            "error": {"type": "string", "nullable": True},
            "timeline": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["status", "at"],
                    "properties": {
                        "status": {"type": "string"},
                        "at": TIME,
                        "detail": {"nullable": True},
                    },
                },
            },
        },
    },
    "NewCommand": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
            "params": {"type": "object"},
            "ttl_s": {"type": "integer", "minimum": 1},
        },
    },
    "Alert": {
        "type": "object",
        "required": ["id", "device_id", "state", "rule", "metric", "severity", "started_at"],
        "properties": {
            "id": {"type": "integer"},
            "device_id": {"type": "string"},
            "state": {"type": "string", "enum": ["active", "acknowledged", "cleared"]},
            "rule": {"type": "string"},
            "metric": {"type": "string"},
            "severity": {"type": "string", "enum": ["info", "warning", "critical"]},
            "value": {"type": "number", "nullable": True},
            "message": {"type": "string", "nullable": True},
            "started_at": TIME,
            "acknowledged_at": NULLABLE_TIME,
            "cleared_at": NULLABLE_TIME,
        },
    },
    "AlertRule": {
        "type": "object",
        "required": list(RULE_FIELDS),
        "properties": {"id": {"type": "integer"}, **RULE_PROPERTIES, "created_at": TIME},
    },
    "NewAlertRule": {
        "type": "object",
        "description": (
            "A rule on one device (device_id) or on every device with a label (label_key and "
            "label_value): above threshold_high, below threshold_low, or outside both, for at "
            "least for_seconds."
        ),
        "required": ["name", "metric", "condition"],
        "properties": {
            **RULE_PROPERTIES,
            "org": {"type": "string", "description": "Operators only: the organisation."},
        },
    },
    "Import": {
        "type": "object",
        "required": [
            "id",
            "status",
            "filename",
            "format",
            "device_id",
            "total_bytes",
            "processed_bytes",
            "percent",
            "processed_rows",
            "rows_imported",
            "rows_rejected",
            "rows_per_s",
            "errors",
            "created_at",
        ],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "status": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
            "filename": {"type": "string"},
            "format": {"type": "string", "enum": ["csv", "ndjson", "senml"]},
            "device_id": {"type": "string", "nullable": True},
            "total_bytes": {"type": "integer"},
            "processed_bytes": {"type": "integer"},
            "percent": {"type": "number", "minimum": 0, "maximum": 100},
            "processed_rows": {"type": "integer"},
            "rows_imported": {"type": "integer"},
            "rows_rejected": {"type": "integer"},
            "rows_per_s": {"type": "number"},
            "errors": {
                "type": "array",
                "description": "Bad lines (the first 1,000), 1-based line numbers.",
                "items": {
                    "type": "object",
                    "required": ["line", "reason"],
                    "properties": {"line": {"type": "integer"}, "reason": {"type": "string"}},
                },
            },
            "error": {"type": "string", "nullable": True},
            "created_at": TIME,
            "started_at": NULLABLE_TIME,
            "finished_at": NULLABLE_TIME,
        },
    },
    "Webhook": {
        "type": "object",
        "required": ["url", "enabled", "legacy_signature"],
        "properties": {
            "url": {"type": "string"},
            "enabled": {"type": "boolean"},
            "legacy_signature": {
                "type": "boolean",
                "description": "Set up before deliveries were signed with a timestamp: also "
                "gets the replayable X-Fieldhub-Signature header until saved again.",
            },
        },
    },
    "Delivery": {
        "type": "object",
        "required": ["id", "event", "status", "attempt_count", "attempts", "created_at"],
        "properties": {
            "id": {"type": "integer"},
            "alert_id": {"type": "integer", "nullable": True},
            "event": {"type": "string"},
            "status": {"type": "string", "enum": ["pending", "delivered", "failed"]},
            "attempt_count": {"type": "integer"},
            "attempts": {
                "type": "array",
                "description": "Every attempt: {at, status, error, ms}.",
                "items": {"type": "object"},
            },
            "last_error": {"type": "string", "nullable": True},
            "next_attempt_at": NULLABLE_TIME,
            "created_at": TIME,
            "delivered_at": NULLABLE_TIME,
        },
    },
    "Telemetry": {
        "type": "object",
        "required": [
            "device_id",
            "metric",
            "unit",
            "start",
            "end",
            "bucket",
            "aggregate",
            "source",
            "truncated",
            "points",
        ],
        "properties": {
            "device_id": {"type": "string"},
            "metric": {"type": "string"},
            "unit": {"type": "string"},
            "start": TIME,
            "end": TIME,
            "bucket": {"type": "integer", "nullable": True},
            "aggregate": {"type": "string", "nullable": True},
            "source": {
                "type": "string",
                "enum": ["raw", "raw_buckets", "rollup_1m", "rollup_1h"],
            },
            "truncated": {"type": "boolean"},
            "points": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["time", "value"],
                    "properties": {"time": TIME, "value": {"type": "number", "nullable": True}},
                },
            },
        },
    },
}


def document(server_url: str) -> dict[str, Any]:
    device_get_errors = _errors(400, 401, 404)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "fieldhub API",
            "version": "1",
            "description": (
                "Devices, telemetry, commands, alerts and their rules, the alert webhook and "
                "data imports of your organisation. Authenticate "
                "with an API token (`fieldhub token create EMAIL`) as `Authorization: Bearer "
                '<token>`. Every error has the body `{"error": {"code", "message"}}`.'
            ),
        },
        "servers": [{"url": server_url}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
        },
        "paths": {
            "/devices": {
                "get": {
                    "operationId": "listDevices",
                    "summary": "Devices, with online state and last seen time",
                    "parameters": [
                        _query("q", {"type": "string"}, "Search in id and display name."),
                        _query("label", {"type": "string"}, "key=value[,key=value]"),
                        _query("status", {"type": "string", "enum": ["online", "offline"]}, ""),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, ""),
                        _query("offset", {"type": "integer", "minimum": 0}, ""),
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["devices", "total", "limit", "offset"],
                                "properties": {
                                    "devices": {"type": "array", "items": _ref("Device")},
                                    "total": {"type": "integer"},
                                    "limit": {"type": "integer"},
                                    "offset": {"type": "integer"},
                                },
                            },
                            "A page of devices.",
                        ),
                        **_errors(400, 401),
                    },
                }
            },
            "/devices/{device_id}": {
                "get": {
                    "operationId": "getDevice",
                    "parameters": [DEVICE_ID],
                    "responses": {
                        "200": _json(_ref("Device"), "The device and its latest values."),
                        **device_get_errors,
                    },
                }
            },
            "/devices/{device_id}/latest": {
                "get": {
                    "operationId": "getLatest",
                    "parameters": [DEVICE_ID],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["device_id", "values"],
                                "properties": {
                                    "device_id": {"type": "string"},
                                    "values": {"type": "array", "items": _ref("LatestValue")},
                                },
                            },
                            "The latest value of each metric (and unit).",
                        ),
                        **device_get_errors,
                    },
                }
            },
            "/devices/{device_id}/telemetry": {
                "get": {
                    "operationId": "getTelemetry",
                    "summary": "Readings of one metric over a range, raw or bucketed",
                    "parameters": [
                        DEVICE_ID,
                        {**_query("metric", {"type": "string"}, ""), "required": True},
                        _query(
                            "unit",
                            {"type": "string", "maxLength": 32},
                            'The series\' unit, as in the latest values (default "": none). '
                            "Readings of one metric in different units are separate series.",
                        ),
                        _query("start", TIME, "Default: one hour before end."),
                        _query("end", TIME, "Default: now."),
                        _query(
                            "bucket",
                            {"type": "integer", "minimum": 1, "maximum": 31622400},
                            "Bucket width in seconds; omit for raw readings.",
                        ),
                        _query(
                            "agg",
                            {"type": "string", "enum": ["min", "max", "avg", "count", "last"]},
                            "Aggregate of each bucket (default avg).",
                        ),
                    ],
                    "responses": {
                        "200": _json(_ref("Telemetry"), "Points, oldest first."),
                        **device_get_errors,
                    },
                }
            },
            "/devices/{device_id}/commands": {
                "get": {
                    "operationId": "listCommands",
                    "parameters": [
                        DEVICE_ID,
                        _query("status", COMMAND_STATUS, ""),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, ""),
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["commands"],
                                "properties": {
                                    "commands": {"type": "array", "items": _ref("Command")}
                                },
                            },
                            "Commands of the device, newest first.",
                        ),
                        **device_get_errors,
                    },
                },
                "post": {
                    "operationId": "sendCommand",
                    "parameters": [DEVICE_ID],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("NewCommand")}},
                    },
                    "responses": {
                        "201": _json(_ref("Command"), "The command, queued."),
                        **_errors(400, 401, 403, 404, 422),
                    },
                },
            },
            "/devices/{device_id}/twin": {
                "get": {
                    "operationId": "getTwin",
                    "summary": "Desired and reported state, and their delta",
                    "parameters": [DEVICE_ID],
                    "responses": {
                        "200": _json(
                            _ref("Twin"),
                            "The twin; its ETag is the desired version, for If-Match.",
                        ),
                        **device_get_errors,
                    },
                },
                "patch": {
                    "operationId": "patchTwin",
                    "summary": "Change desired state with a JSON merge patch",
                    "parameters": [
                        DEVICE_ID,
                        {
                            "name": "If-Match",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": 'Only if the desired state is at this version: "3".',
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("TwinPatch")}},
                    },
                    "responses": {
                        "200": _json(_ref("Twin"), "The twin after the change."),
                        **_errors(400, 401, 403, 404, 412, 422),
                    },
                },
            },
            "/devices/{device_id}/twin/history": {
                "get": {
                    "operationId": "twinHistory",
                    "summary": "Who changed desired state and when, newest first",
                    "parameters": [
                        DEVICE_ID,
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, ""),
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["changes"],
                                "properties": {
                                    "changes": {"type": "array", "items": _ref("TwinChange")}
                                },
                            },
                            "One entry per desired version.",
                        ),
                        **device_get_errors,
                    },
                },
            },
            "/devices/{device_id}/gateway": {
                "put": {
                    "operationId": "attachGateway",
                    "summary": "Let a gateway device act for this device (admins)",
                    "parameters": [DEVICE_ID],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["gateway_id"],
                                    "properties": {"gateway_id": {"type": "string"}},
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(_ref("Device"), "The device, attached."),
                        **_errors(400, 401, 403, 404, 422),
                    },
                },
                "delete": {
                    "operationId": "detachGateway",
                    "summary": "Take the device away from its gateway (admins)",
                    "parameters": [DEVICE_ID],
                    "responses": {
                        "204": {"description": "Detached (or it had no gateway)."},
                        **_errors(400, 401, 403, 404),
                    },
                },
            },
            "/commands/{command_id}": {
                "get": {
                    "operationId": "getCommand",
                    "parameters": [COMMAND_ID],
                    "responses": {
                        "200": _json(_ref("Command"), "The command with its timeline."),
                        **_errors(401, 404),
                    },
                }
            },
            "/commands/{command_id}/cancel": {
                "post": {
                    "operationId": "cancelCommand",
                    "parameters": [COMMAND_ID],
                    "responses": {
                        "200": _json(_ref("Command"), "The command, cancelled."),
                        **_errors(401, 403, 404, 409),
                    },
                }
            },
            "/alerts": {
                "get": {
                    "operationId": "listAlerts",
                    "parameters": [
                        _query(
                            "state",
                            {"type": "string", "enum": ["active", "acknowledged", "cleared"]},
                            "",
                        ),
                        _query("device_id", {"type": "string"}, ""),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, ""),
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["alerts"],
                                "properties": {"alerts": {"type": "array", "items": _ref("Alert")}},
                            },
                            "Alerts, newest first.",
                        ),
                        **_errors(400, 401, 404),
                    },
                }
            },
            "/alerts/{alert_id}": {
                "get": {
                    "operationId": "getAlert",
                    "parameters": [_path_int("alert_id")],
                    "responses": {
                        "200": _json(_ref("Alert"), "One alert."),
                        **_errors(400, 401, 404),
                    },
                }
            },
            "/alerts/{alert_id}/acknowledge": {
                "post": {
                    "operationId": "acknowledgeAlert",
                    "summary": "Acknowledge an active alert (member and above)",
                    "parameters": [_path_int("alert_id")],
                    "responses": {
                        "200": _json(_ref("Alert"), "The alert, acknowledged."),
                        **_errors(401, 403, 404, 409),
                    },
                }
            },
            "/alert-rules": {
                "get": {
                    "operationId": "listAlertRules",
                    "summary": "Alert rules of the organisation (admin and above)",
                    "parameters": [ORG_QUERY],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["rules"],
                                "properties": {
                                    "rules": {"type": "array", "items": _ref("AlertRule")}
                                },
                            },
                            "The rules, oldest first.",
                        ),
                        **_errors(400, 401, 403, 404),
                    },
                },
                "post": {
                    "operationId": "createAlertRule",
                    "summary": "Create an alert rule (admin and above)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("NewAlertRule")}},
                    },
                    "responses": {
                        "201": _json(_ref("AlertRule"), "The rule, created."),
                        **_errors(400, 401, 403, 404, 422),
                    },
                },
            },
            "/alert-rules/{rule_id}": {
                "get": {
                    "operationId": "getAlertRule",
                    "parameters": [_path_int("rule_id")],
                    "responses": {
                        "200": _json(_ref("AlertRule"), "One rule."),
                        **_errors(401, 403, 404),
                    },
                },
                "put": {
                    "operationId": "updateAlertRule",
                    "summary": "Replace an alert rule (admin and above)",
                    "parameters": [_path_int("rule_id")],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("NewAlertRule")}},
                    },
                    "responses": {
                        "200": _json(_ref("AlertRule"), "The rule, saved."),
                        **_errors(400, 401, 403, 404, 422),
                    },
                },
                "delete": {
                    "operationId": "deleteAlertRule",
                    "summary": "Delete an alert rule and its alerts (admin and above)",
                    "parameters": [_path_int("rule_id")],
                    "responses": {
                        "204": {"description": "Deleted."},
                        **_errors(401, 403, 404),
                    },
                },
            },
            "/webhook": {
                "get": {
                    "operationId": "getWebhook",
                    "summary": "Where the organisation's alerts are POSTed (admin and above)",
                    "parameters": [ORG_QUERY],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["webhook"],
                                "properties": {"webhook": {**_ref("Webhook"), "nullable": True}},
                            },
                            "The webhook, or null when none is set.",
                        ),
                        **_errors(400, 401, 403, 404),
                    },
                },
                "put": {
                    "operationId": "setWebhook",
                    "summary": "Set the webhook URL; answers a new signing secret, shown only once",
                    "description": "The URL must be http(s) and its host must resolve to public "
                    "addresses only: loopback, private, link-local, shared (CGNAT), multicast, "
                    "reserved and cloud metadata addresses are refused (422) unless the "
                    "operator allows them with FIELDHUB_WEBHOOK_ALLOWED_NETWORKS.",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["url"],
                                    "properties": {
                                        "url": {"type": "string", "format": "uri"},
                                        "enabled": {"type": "boolean"},
                                        "org": {
                                            "type": "string",
                                            "description": "Operators only: the organisation.",
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["url", "enabled", "secret"],
                                "properties": {
                                    "url": {"type": "string"},
                                    "enabled": {"type": "boolean"},
                                    "secret": {
                                        "type": "string",
                                        "description": "whsec_<base64 key>: the Standard "
                                        "Webhooks secret that verifies webhook-signature.",
                                    },
                                },
                            },
                            "The webhook and its signing secret.",
                        ),
                        **_errors(400, 401, 403, 404, 422),
                    },
                },
                "delete": {
                    "operationId": "deleteWebhook",
                    "parameters": [ORG_QUERY],
                    "responses": {
                        "204": {"description": "Removed (or there was none)."},
                        **_errors(400, 401, 403, 404),
                    },
                },
            },
            "/webhook/deliveries": {
                "get": {
                    "operationId": "listWebhookDeliveries",
                    "summary": "The delivery log, newest first (admin and above)",
                    "parameters": [
                        ORG_QUERY,
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, ""),
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["deliveries"],
                                "properties": {
                                    "deliveries": {"type": "array", "items": _ref("Delivery")}
                                },
                            },
                            "Deliveries with every attempt.",
                        ),
                        **_errors(400, 401, 403, 404),
                    },
                }
            },
            "/imports": {
                "get": {
                    "operationId": "listImports",
                    "parameters": [
                        ORG_QUERY,
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, ""),
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["imports"],
                                "properties": {
                                    "imports": {"type": "array", "items": _ref("Import")}
                                },
                            },
                            "Imports, newest first.",
                        ),
                        **_errors(400, 401, 404),
                    },
                },
                "post": {
                    "operationId": "createImport",
                    "summary": "Upload a CSV, NDJSON or SenML file to import (member and above)",
                    "description": (
                        "The file is queued and imported by the analysis worker; follow "
                        "GET /imports/{import_id} for progress and the bad lines."
                    ),
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["file"],
                                    "properties": {
                                        "file": {"type": "string", "format": "binary"},
                                        "device_id": {
                                            "type": "string",
                                            "description": "The device of every line; omit "
                                            "when the file has a device_id column.",
                                        },
                                        "format": {
                                            "type": "string",
                                            "enum": ["csv", "ndjson", "senml"],
                                            "description": "Default: from the file name.",
                                        },
                                        "org": {
                                            "type": "string",
                                            "description": "Operators only: the organisation.",
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _json(_ref("Import"), "The import, queued."),
                        **_errors(400, 401, 403, 404, 413, 422),
                    },
                },
            },
            "/imports/{import_id}": {
                "get": {
                    "operationId": "getImport",
                    "parameters": [IMPORT_ID],
                    "responses": {
                        "200": _json(_ref("Import"), "The import with its progress."),
                        **_errors(401, 404),
                    },
                }
            },
        },
    }
