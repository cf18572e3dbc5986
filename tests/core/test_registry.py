"""Validation of the registry's names and labels, and of bulk-import rows (no servers)."""

from __future__ import annotations

import pytest

from fieldhub.core import passwords, registry
from fieldhub.core.registry import RegistryError


@pytest.mark.parametrize("device_id", ["a", "sensor-01", "x_y-z", "0" * 64])
def test_valid_device_ids_are_accepted(device_id: str) -> None:
    assert registry.check_device_id(device_id) == device_id


@pytest.mark.parametrize(
    ("device_id", "message"),
    [
        ("", "must not be empty"),
        ("a" * 65, "65 characters long; the limit is 64"),
        ("dev+1", "'+' (an MQTT wildcard)"),
        ("dev#", "'#' (an MQTT wildcard)"),
        ("site/dev", "'/' (the MQTT topic level separator)"),
        ("dev 1", "whitespace ' '"),
        ("dev\t1", "whitespace '\\t'"),
        ("dev\n", "whitespace '\\n'"),
        ("Dev", "'D' (uppercase)"),
        ("dev.1", "'.'"),
        ("dév", "'é'"),
    ],
)
def test_bad_device_ids_are_refused_saying_why(device_id: str, message: str) -> None:
    with pytest.raises(RegistryError) as caught:
        registry.check_device_id(device_id)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value).replace("\\n", "")


def test_every_offending_character_is_named_once() -> None:
    with pytest.raises(RegistryError, match=r"contains '#' \(an MQTT wildcard\), '\+'"):
        registry.check_device_id("a+b+c#")


@pytest.mark.parametrize(
    ("username", "message"),
    [
        ("bridge", "must start with 'svc.'"),
        ("svc.", "must not be empty"),
        ("svc.a/b", "'/' (the MQTT topic level separator)"),
        ("svc.+", "MQTT wildcard"),
        ("svc.a b", "whitespace"),
        ("svc." + "a" * 61, "the limit is 60"),
    ],
)
def test_bad_service_account_names_are_refused(username: str, message: str) -> None:
    with pytest.raises(RegistryError) as caught:
        registry.check_service_account_name(username)
    assert message in str(caught.value)


def test_service_account_name_accepted() -> None:
    assert registry.check_service_account_name("svc.bridge") == "svc.bridge"


def test_labels_parse_and_strip() -> None:
    assert registry.parse_labels(["site=berlin", " floor = 3 ", "empty="]) == {
        "site": "berlin",
        "floor": "3",
        "empty": "",
    }


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["novalue"], "must look like key=value"),
        (["=x"], "label key ''"),
        (["bad key=x"], "label key 'bad key'"),
        (["k=" + "v" * 129], "at most 128 characters"),
        ([f"k{i}=v" for i in range(33)], "at most 32 labels"),
    ],
)
def test_bad_labels_are_refused(pairs: list[str], message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        registry.parse_labels(pairs)


def test_import_rows_keep_good_rows_and_report_bad_ones_by_line() -> None:
    rows = [
        (1, ["device_id", "name", "labels"]),
        (2, ["sensor-1", "Boiler", "site=berlin;floor=3"]),
        (3, ["Sensor/2", "", ""]),
        (4, []),
        (5, ["sensor-3"]),
        (6, ["sensor-1", "again"]),
        (7, ["sensor-4", "", "nolabel"]),
        (8, ["sensor-5", "a", "b", "c"]),
    ]
    good, errors = registry.parse_device_rows(rows)
    assert [(line, spec.device_id) for line, spec in good] == [(2, "sensor-1"), (5, "sensor-3")]
    assert good[0][1].labels == {"site": "berlin", "floor": "3"}
    assert good[0][1].display_name == "Boiler"
    assert [e.line for e in errors] == [3, 6, 7, 8]
    assert "'/'" in errors[0].reason
    assert "appears again (first on line 2)" in errors[1].reason
    assert "key=value" in errors[2].reason
    assert "4 columns" in errors[3].reason


def test_header_is_only_skipped_on_the_first_row() -> None:
    good, errors = registry.parse_device_rows([(1, ["a"]), (2, ["device_id"])])
    assert [spec.device_id for _, spec in good] == ["a", "device_id"]
    assert errors == []


def test_secrets_are_long_random_and_hashed_in_mosquittos_format() -> None:
    secret = passwords.generate_secret()
    assert len(secret) >= 22  # 128 bits in base64url
    assert secret != passwords.generate_secret()
    stored = passwords.hash_secret(secret)
    assert stored.startswith(f"$7${passwords.ITERATIONS}$")
    assert secret not in stored
    assert passwords.verify_secret(secret, stored)
    assert not passwords.verify_secret(secret + "x", stored)


def test_parallel_hashing_keeps_order() -> None:
    secrets = [f"secret-{i}" for i in range(passwords.PARALLEL_THRESHOLD + 10)]
    seen: list[int] = []
    hashes = passwords.hash_secrets_parallel(secrets, processes=2, progress=seen.append)
    assert sum(seen) == len(secrets)
    assert all(passwords.verify_secret(s, h) for s, h in zip(secrets, hashes, strict=True))


@pytest.mark.parametrize("rule", [*registry.BRIDGE_ACL, *registry.LOADGEN_ACL, "deny #"])
def test_the_backends_own_acl_rules_are_valid(rule: str) -> None:
    assert registry.check_acl_rule(rule) == rule


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("publish devices/x", "must start with one of read, write, readwrite, deny"),
        ("read", "1-512 characters"),
        ("read devices/+/telemetry\nuser svc.evil", "without whitespace"),
        ("read a b", "without whitespace"),
        ("read devices/a+/x", "whole topic level"),
        ("read devices/#/x", "'#' must be the last"),
    ],
)
def test_bad_acl_rules_are_refused(rule: str, message: str) -> None:
    with pytest.raises(RegistryError) as caught:
        registry.check_acl_rule(rule)
    assert message in str(caught.value)
