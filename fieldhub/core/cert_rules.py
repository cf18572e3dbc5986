"""What fieldhub's device CA signs: pure checks of a certificate request, applied by
fieldhub.core.device_ca to what `openssl req -text` says about it.

Decisions (docs/devices.md, "Certificate devices"):
- The subject must have exactly one CN, equal to the device id: the broker and the TLS front
  take the CN as the device's identity, so a request for another id (or for two) is refused.
- Keys: RSA of 2048 to 8192 bits, or EC on P-256 or P-384, what every TLS 1.2 stack (the
  broker's listener is TLS 1.2+) and device TLS libraries (mbedTLS, wolfSSL, BearSSL) can use
  for client authentication. Smaller RSA is breakable; other curves and Ed25519 are not
  offered by the constrained stacks, so a device with one could not log in anyway."""

from __future__ import annotations

import dataclasses
import datetime
import re

RSA_BITS = (2048, 8192)
EC_CURVES = {"prime256v1": "P-256", "secp384r1": "P-384"}

_RDN_SPLIT = re.compile(r"(?<!\\),")
_RSA = re.compile(r"Public Key Algorithm: rsaEncryption")
_EC = re.compile(r"Public Key Algorithm: id-ecPublicKey")
_BITS = re.compile(r"Public-Key: \((\d+) bit\)")
_CURVE = re.compile(r"ASN1 OID: (\S+)")


class CertificateRequestError(ValueError):
    """A certificate request fieldhub will not sign; the message says why."""


def subject_cns(subject_rfc2253: str) -> list[str]:
    """The CN values of an RFC 2253 subject (`CN=dev-1,O=acme`)."""
    return [
        rdn.strip()[3:]
        for rdn in _RDN_SPLIT.split(subject_rfc2253)
        if rdn.strip()[:3].upper() == "CN="
    ]


def check_subject(subject_rfc2253: str, device_id: str) -> None:
    names = subject_cns(subject_rfc2253)
    if names != [device_id]:
        found = ", ".join(repr(n) for n in names) or "none"
        raise CertificateRequestError(
            f"the request's subject must have one CN, the device id {device_id!r} (found {found})"
        )


def check_key(request_text: str) -> str:
    """The key's description ("RSA 2048", "EC P-256") if fieldhub signs it."""
    bits_match = _BITS.search(request_text)
    bits = int(bits_match.group(1)) if bits_match else 0
    if _RSA.search(request_text):
        if not RSA_BITS[0] <= bits <= RSA_BITS[1]:
            raise CertificateRequestError(
                f"an RSA key must have {RSA_BITS[0]} to {RSA_BITS[1]} bits, not {bits}"
            )
        return f"RSA {bits}"
    if _EC.search(request_text):
        curve_match = _CURVE.search(request_text)
        curve = curve_match.group(1) if curve_match else "unknown"
        if curve not in EC_CURVES:
            raise CertificateRequestError(f"an EC key must be on P-256 or P-384, not {curve}")
        return f"EC {EC_CURVES[curve]}"
    raise CertificateRequestError("the key must be RSA (2048+ bits) or EC (P-256, P-384)")


# RFC 5280 reason codes a fieldhub CRL uses: a rotation supersedes, a delete ends the device,
# a disable holds (reversible: the entry leaves the CRL when the device is enabled again).
REASONS = ("superseded", "cessationOfOperation", "certificateHold")


@dataclasses.dataclass(frozen=True)
class Revocation:
    serial: str  # lowercase hex
    device_id: str
    not_after: datetime.datetime
    revoked_at: datetime.datetime
    reason: str


def index_line(entry: Revocation) -> str:
    """The entry as a line of `openssl ca`'s index.txt, from which it makes the CRL."""
    if entry.reason not in REASONS:
        raise ValueError(f"not a CRL reason fieldhub uses: {entry.reason!r}")
    serial = entry.serial.upper()
    serial = "0" * (len(serial) % 2) + serial  # openssl reads whole bytes
    return (
        f"R\t{_asn1_time(entry.not_after)}\t{_asn1_time(entry.revoked_at)},{entry.reason}"
        f"\t{serial}\tunknown\t/CN={entry.device_id}\n"
    )


def crl_entries_text(entries: list[Revocation]) -> str:
    """What the CRL must say, independent of when it was made: a CRL is re-made only when
    this changes (or its nextUpdate comes near), not on every registry change. Each line also
    names the device, whose connection auth-sync ends once the CRL is in force
    (fieldhub.broker.auth_sync.cut_off_revoked)."""
    return "".join(
        f"{e.serial} {e.reason} {e.device_id}\n" for e in sorted(entries, key=lambda e: e.serial)
    )


def newly_listed(listed: str, cut: str) -> list[str]:
    """The devices of entries in `listed` (crl_entries_text) that `cut` (an earlier one whose
    connections were ended) lacks: revoked or held since, each named once."""
    done = set(cut.splitlines())
    found: list[str] = []
    for line in listed.splitlines():
        if line not in done:
            device_id = line.rpartition(" ")[2]
            if device_id and device_id not in found:
                found.append(device_id)
    return found


def _asn1_time(moment: datetime.datetime) -> str:
    """UTCTime, YYMMDDHHMMSSZ (RFC 5280 uses it up to 2049)."""
    return moment.astimezone(datetime.UTC).strftime("%y%m%d%H%M%SZ")
