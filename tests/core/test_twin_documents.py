"""The pure twin rules: merge patches, delta, limits, reports and the stale rule."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldhub.core.twin_documents import (
    MAX_DEPTH,
    MAX_DOCUMENT_BYTES,
    Document,
    Report,
    TwinDocumentError,
    Versions,
    check_document,
    check_patch,
    delta,
    json_equal,
    judge_report,
    merge_patch,
    message,
    parse_report,
    patch_between,
    seq_after,
)


# -- RFC 7396, appendix A: every example of the specification ---------------------------------
@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ({"a": "foo"}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch_follows_rfc_7396(
    target: dict[str, Any], patch: dict[str, Any], result: dict[str, Any]
) -> None:
    before = orjson.dumps(target)
    assert merge_patch(target, patch) == result
    assert orjson.dumps(target) == before  # the target is not changed


json_leaf = st.one_of(
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
)
json_docs = st.recursive(
    st.dictionaries(st.text(min_size=1, max_size=3), json_leaf, max_size=4),
    lambda children: st.dictionaries(
        st.text(min_size=1, max_size=3), st.one_of(json_leaf, children), max_size=4
    ),
    max_leaves=12,
)


@given(json_docs, json_docs)
def test_applying_the_delta_brings_reported_in_sync(
    desired: dict[str, Any], reported: dict[str, Any]
) -> None:
    difference = delta(desired, reported)
    assert delta(desired, merge_patch(reported, difference)) == {}
    # Nothing in sync is repeated: every key of the delta is one that differs.
    for key, value in difference.items():
        if isinstance(value, dict) and isinstance(reported.get(key), dict):
            assert value  # an object in sync is left out, not sent empty
        else:
            assert key not in reported or not json_equal(reported[key], desired[key])


@given(json_docs, json_docs)
def test_the_patch_between_two_documents_turns_one_into_the_other(
    old: dict[str, Any], new: dict[str, Any]
) -> None:
    assert json_equal(merge_patch(old, patch_between(old, new)), new)
    assert patch_between(new, new) == {}


def test_patch_between_names_only_what_changed() -> None:
    old: Document = {"a": 1, "net": {"ssid": "x", "pw": "y"}, "gone": True}
    new: Document = {"a": 1, "net": {"ssid": "z", "pw": "y"}, "added": [1]}
    assert patch_between(old, new) == {"gone": None, "net": {"ssid": "z"}, "added": [1]}


def test_delta_is_recursive_and_ignores_keys_only_reported() -> None:
    desired: Document = {"led": "on", "net": {"ssid": "a", "channel": 6}, "tags": [1, 2]}
    reported: Document = {
        "led": "on",
        "net": {"ssid": "b", "channel": 6},
        "tags": [1, 2],
        "fw": "1.2",
    }
    assert delta(desired, reported) == {"net": {"ssid": "a"}}
    assert delta(desired, {**reported, "net": {"ssid": "a", "channel": 6}}) == {}
    assert delta({"tags": [1, 2]}, {"tags": [2, 1]}) == {"tags": [1, 2]}


def test_json_equality_tells_booleans_from_numbers() -> None:
    assert json_equal(1, 1.0)
    assert not json_equal(True, 1)
    assert not json_equal(0, False)
    assert delta({"on": True}, {"on": 1}) == {"on": True}
    assert not json_equal({"a": [True]}, {"a": [1]})
    assert not json_equal("1", 1)


@pytest.mark.parametrize(
    ("patch", "problem"),
    [
        ([1], "must be a JSON object, not an array"),
        ("x", "must be a JSON object, not a string"),
        (None, "must be a JSON object, not null"),
        ({"": 1}, "keys are 1-128 characters"),
        ({"k" * 129: 1}, "keys are 1-128 characters"),
        ({"a\x00": 1}, "keys are 1-128 characters without NUL"),
        ({"a": "x\x00y"}, "NUL character"),
        ({"a": [{"b": "\x00"}]}, "patch.a[0].b holds a NUL"),
        ({"a": float("nan")}, "no NaN or infinite"),
        ({"a": float("inf")}, "no NaN or infinite"),
        # jsonb would give these back as hundreds of digits no JSON parser reads.
        ({"a": [6.9e210]}, "numbers lie within"),
        ({"a": -(2**63) - 1}, "numbers lie within"),
        ({"a": 2**63}, "numbers lie within"),
        ({"a": {1, 2}}, "which JSON cannot hold"),
        ({"big": "x" * MAX_DOCUMENT_BYTES}, f"the limit is {MAX_DOCUMENT_BYTES}"),
    ],
)
def test_bad_patches_are_refused_saying_why(patch: object, problem: str) -> None:
    with pytest.raises(TwinDocumentError, match=problem.replace("[", r"\[").replace(".", r"\.")):
        check_patch(patch)


def test_depth_is_limited_to_eight_levels() -> None:
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(MAX_DEPTH - 1):
        deep = {"x": deep}
    assert check_patch(deep) == deep
    with pytest.raises(TwinDocumentError, match="deeper than 8 levels"):
        check_patch({"x": deep})


def test_a_merge_that_outgrows_the_limit_is_refused() -> None:
    half = {"a": "x" * (MAX_DOCUMENT_BYTES // 2)}
    merged = merge_patch(half, {"b": "y" * (MAX_DOCUMENT_BYTES // 2)})
    with pytest.raises(TwinDocumentError, match="reported document would be"):
        check_document(merged, "reported")


# -- reports ------------------------------------------------------------------------------------
def test_a_report_is_version_state_and_optional_seq() -> None:
    assert parse_report(b'{"version": 3, "state": {"led": "on", "x": null}}') == Report(
        3, None, {"led": "on", "x": None}
    )
    assert parse_report(b'{"version": 0, "seq": 17, "state": {}, "fw": "own"}') == Report(0, 17, {})


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "must be an object"),
        (b'{"state": {}}', "version must be an integer from 0 .*, not null"),
        (b'{"version": -1, "state": {}}', "version must be an integer"),
        (b'{"version": 1.5, "state": {}}', "version must be an integer"),
        (b'{"version": true, "state": {}}', "not a boolean"),
        (b'{"version": 1}', "no state"),
        (b'{"version": 1, "state": [1]}', "state must be a JSON object"),
        (b'{"version": 1, "state": {"a": "\\u0000"}}', "NUL"),
        (b'{"version": 1, "seq": "3", "state": {}}', "seq must be an integer"),
        (b'{"version": 1, "state": {"a": NaN}}', "not JSON"),
        (b'{"version": 1, "state": {"a": "' + b"x" * MAX_DOCUMENT_BYTES + b'"}}', "limit"),
    ],
)
def test_malformed_reports_are_refused(payload: bytes, problem: str) -> None:
    with pytest.raises(TwinDocumentError, match=problem):
        parse_report(payload)


def _report(version: int, seq: int | None = None) -> Report:
    return Report(version, seq, {"k": version})


@pytest.mark.parametrize(
    ("stored", "report", "stale"),
    [
        (Versions(5, 5, None), _report(5), None),
        (Versions(5, 3, None), _report(4), None),  # catching up
        (Versions(5, 3, None), _report(2), "arrived after one of version 3"),
        (Versions(5, 3, None), _report(6), "desired document is at version 5"),
        (Versions(0, 0, None), _report(0), None),  # a device that reports before any desired
        (Versions(5, 5, 10), _report(5, 11), None),
        (Versions(5, 5, 10), _report(5, 10), None),  # the same report again: a no-op
        (Versions(5, 5, 10), _report(5, 9), "seq 9 of version 5 arrived after seq 10"),
        (Versions(5, 5, 10), _report(5), None),  # without seq: receive order
        (Versions(5, 4, 10), _report(5, 1), None),  # seq is compared within a version only
        (Versions(5, 5, None), _report(5, 1), None),
    ],
)
def test_the_stale_rule(stored: Versions, report: Report, stale: str | None) -> None:
    why = judge_report(stored, report)
    if stale is None:
        assert why is None
    else:
        assert why is not None
        assert stale in why


def test_two_reports_of_one_version_in_the_wrong_order_keep_the_later_one() -> None:
    """Two bridges received A then B in the other order: B applies, A is refused as stale,
    and the stored seq makes the decision hold for any later copy of A too."""
    a, b = Report(4, 100, {"mode": "eco"}), Report(4, 101, {"mode": "boost"})
    stored = Versions(4, 3, None)
    assert judge_report(stored, b) is None
    after_b = Versions(4, 4, seq_after(stored, b))
    assert judge_report(after_b, a) is not None
    assert seq_after(after_b, Report(4, None, {})) == 101
    assert seq_after(after_b, Report(4, 7, {})) == 7
    assert seq_after(Versions(5, 4, 101), Report(5, None, {})) is None


def test_messages_carry_version_and_state() -> None:
    assert orjson.loads(message(7, {"a": {"b": 1}})) == {"version": 7, "state": {"a": {"b": 1}}}
