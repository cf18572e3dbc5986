"""The one way the bridge's dispatchers publish to devices, as a type: commands
(fieldhub.bridge.commands) and twin documents (fieldhub.bridge.twin) both take it, so it lives
below both of them."""

from __future__ import annotations

from collections.abc import Callable

# (topic, payload, retain, message_expiry_s); blocks until PUBACK, raises on failure.
Publish = Callable[[str, bytes, bool, int | None], None]
