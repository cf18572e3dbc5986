"""What Mosquitto 2.0.11 accepts in a password file and an ACL file: pure checks, no I/O.

Why this matters (measured, /work/research/mosquitto/REPORT.md question 6): when any
listener's ACL file fails to parse at SIGHUP, Mosquitto stops registering the ACL check for that
listener and every later one, and no check means *allow*: devices could then publish as other
devices and read every command. A missing password file fails closed but disconnects every
client of its listener. So the broker auth sync checks each file with these rules before it
lets the broker read it, and an operator's acl.d file is checked with the same line rules.

The rules mirror `aclfile__parse`, `pwfile__parse` and `unpwd__decode_passwords` in
src/security_default.c and `mosquitto_sub_topic_check` in lib/util_topic.c of 2.0.11 (Debian's
2.0.11-1.2+deb12u2 source). Some are surprising and are what break hand-written files:

- a comment is a line whose *first character* is `#`; an indented `  # note` is an invalid line;
- tokens are separated by spaces only: `topic<TAB>read x` is an invalid line;
- `topic read` (no filter) is read as "readwrite on the topic `read`", silently; refused here;
- a topic filter with `+` or `#` inside a level, `#` before the last level, more than 200 `/`
  or more than 65,535 characters makes the whole file invalid.

Password file lines that do not decode are dropped by the broker one by one (that account
cannot log in) rather than failing the file; fieldhub writes only `$7$` hashes, so any such
line is a bug and is reported too."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable

ACL_ACCESS = ("read", "write", "readwrite", "deny")
TOPIC_HIERARCHY_LIMIT = 200  # src/mosquitto_broker_internal.h
MAX_TOPIC_LENGTH = 65535
SALT_BYTES = 12
HASH_BYTES = 64  # SHA-512


def topic_filter_problem(topic: str) -> str | None:
    """Why Mosquitto's `mosquitto_sub_topic_check` refuses `topic`, or None if it accepts it."""
    if not topic:
        return "empty topic filter"
    if len(topic.encode()) > MAX_TOPIC_LENGTH:
        return f"topic filter longer than {MAX_TOPIC_LENGTH} bytes"
    levels = topic.split("/")
    if len(levels) - 1 > TOPIC_HIERARCHY_LIMIT:
        return f"topic filter with more than {TOPIC_HIERARCHY_LIMIT} levels"
    for index, level in enumerate(levels):
        if "+" in level and level != "+":
            return f"'+' must be a whole topic level in {topic!r}"
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return f"'#' must be the whole last topic level in {topic!r}"
    return None


def acl_line_problem(line: str) -> str | None:
    """Why Mosquitto would refuse one line of an ACL file (without its newline), or None.

    A refused line makes Mosquitto refuse the whole file."""
    line = line.rstrip()  # Mosquitto trims trailing whitespace first
    if not line or line.startswith("#"):
        return None
    if any(c.isspace() and c != " " for c in line):
        return "tokens must be separated by spaces (Mosquitto does not split on tabs)"
    directive, _, rest = line.lstrip(" ").partition(" ")
    if directive.startswith("#"):
        return "a comment must start in the first column"
    if directive in ("topic", "pattern"):
        access, _, topic = rest.lstrip(" ").partition(" ")
        topic = topic.strip(" ")
        if not access:
            return f"'{directive}' without a topic filter"
        if not topic:
            # Mosquitto reads a lone word as the topic with readwrite access; fieldhub always
            # writes the access, so a missing one is a mistake, not a wish for readwrite.
            return f"'{directive}' needs an access ({', '.join(ACL_ACCESS)}) and a topic filter"
        if access not in ACL_ACCESS:
            return f"access {access!r} must be one of {', '.join(ACL_ACCESS)}"
        return topic_filter_problem(topic)
    if directive == "user":
        return None if rest.strip(" ") else "'user' without a username"
    return f"{directive!r} is not 'topic', 'pattern' or 'user'"


def acl_file_problems(text: str) -> list[str]:
    """Every line of `text` Mosquitto 2.0.11 would refuse, as 'line N: why'."""
    return _line_problems(text, acl_line_problem)


def password_line_problem(line: str) -> str | None:
    """Why one line of a password file would not give a working `$7$` account, or None."""
    if not line.strip() or line.startswith("#"):
        return None
    username, sep, password_hash = line.partition(":")
    if not sep:
        return "no ':' between the username and the hash (Mosquitto skips the line)"
    if not username.strip():
        return "empty username"
    if ":" in password_hash:
        return "more than one ':' (Mosquitto would cut the hash at the second)"
    parts = password_hash.strip().split("$")
    # "$7$<iterations>$<salt>$<hash>" splits into ['', '7', iterations, salt, hash].
    if len(parts) != 5 or parts[0] or parts[1] != "7":
        return "the hash is not in Mosquitto's $7$ (PBKDF2-SHA512) format"
    if not parts[2].isdigit() or int(parts[2]) < 1:
        return "the hash's iteration count is not a positive number"
    if _decoded_length(parts[3]) != SALT_BYTES:
        return f"the hash's salt does not decode to {SALT_BYTES} bytes"
    if _decoded_length(parts[4]) != HASH_BYTES:
        return f"the hash does not decode to {HASH_BYTES} bytes"
    return None


# A whole file of well-formed `user:$7$...` lines, as fieldhub writes them: 12-byte salts are 16
# base64 characters, 64-byte hashes 88. One regex pass over a 100,000-device file (12.7 MB) took
# 0.06 s here, checking it line by line 0.26 s; the line-by-line check only runs to say which
# line is wrong.
WELL_FORMED_PASSWORD_FILE = re.compile(
    r"(?:[^:#\n\0\s][^:\n\0]*:\$7\$[1-9][0-9]*\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==\n)*"
)


def password_file_problems(text: str) -> list[str]:
    if WELL_FORMED_PASSWORD_FILE.fullmatch(text):
        return []
    return _line_problems(text, password_line_problem)


def _line_problems(text: str, line_problem: Callable[[str], str | None]) -> list[str]:
    problems = []
    for number, line in enumerate(text.split("\n"), start=1):
        problem = "contains a NUL byte" if "\0" in line else line_problem(line)
        if problem:
            problems.append(f"line {number}: {problem}")
    return problems


def _decoded_length(text: str) -> int:
    try:
        return len(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        return -1
