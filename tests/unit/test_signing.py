"""Webhook signatures: what a receiver's `verify_signature` accepts and refuses."""

from __future__ import annotations

import hashlib
import hmac

from infra import signing
from infra.signing import signature_header
from robaudit.client import verify_signature

SECRET = "whsec_test"
BODY = b'{"event":"audit.succeeded"}'


def test_the_header_is_hmac_sha256_over_timestamp_dot_body() -> None:
    header = signature_header(SECRET, BODY, 1_800_000_000)
    expected = hmac.new(SECRET.encode(), b"1800000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1800000000,v1={expected}"
    assert verify_signature(SECRET, BODY, header, tolerance_s=1e12)


def test_old_tampered_or_malformed_signatures_are_refused() -> None:
    now = 1_800_000_000
    fresh = signature_header(SECRET, BODY, now)
    assert verify_signature(SECRET, BODY, fresh, tolerance_s=10**12)
    # A replay of a delivery long past: refused after the tolerance (300 s by default).
    assert signing.verify_signature(
        SECRET, BODY, signature_header(SECRET, BODY, now - 299), now=now
    )
    assert not signing.verify_signature(
        SECRET, BODY, signature_header(SECRET, BODY, now - 301), now=now
    )
    assert not verify_signature(
        SECRET, BODY.replace(b"succeeded", b"failed"), fresh, tolerance_s=1e12
    )
    t, v1 = fresh.split(",")
    for header in ("", "garbage", v1, t, f"t=abc,{v1}", f"{t},{t},{v1}", f"{t},v1=00"):
        assert not verify_signature(SECRET, BODY, header, tolerance_s=1e12), header
    # Several v1 values (a receiver rotating secrets may be sent both): any one may match.
    assert verify_signature(SECRET, BODY, f"{t},v1=00,{v1}", tolerance_s=1e12)
