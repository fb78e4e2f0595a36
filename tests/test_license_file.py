"""The license file, verified offline: each failure has its own code and message; and the pure
state machine on hand-made inputs (the end-to-end transitions are in test_licensing.py)."""

from __future__ import annotations

import base64
import json
from typing import Any

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxagent.license.file import MAX_LICENSE_BYTES, LicenseFile, check_license
from fluxagent.license.state import Contact, Receipt, applies, derive, seen_after
from fluxagent.testing.licenses import make_license
from fluxagent.wire import envelope

NOW = 1_760_000_000
DAY = 86400
VENDOR = nacl.signing.SigningKey(b"\x07" * 32)
KEYS = (bytes(VENDOR.verify_key), bytes(nacl.signing.SigningKey(b"\x08" * 32).verify_key))
DOMAIN = "billing.example.com"


def lic(**over: Any) -> bytes:
    args: dict[str, Any] = dict(license_id="FB-1", bound_domain=DOMAIN, issued_at=NOW - DAY, expires_at=NOW + DAY)
    args.update(over)
    return make_license(VENDOR, **args)


def signed(payload: dict[str, Any]) -> bytes:
    return envelope.sign_envelope(envelope.LICENSE_FILE_TYPE, envelope.canonical_json(payload), VENDOR)


def check(data: bytes | None, domain: str = DOMAIN) -> LicenseFile:
    return check_license(data, KEYS, domain, NOW)


def test_good_license_is_valid_with_its_dates_and_allocations() -> None:
    v = check(lic())
    assert (v.state, v.code, v.license_id, v.expires_at) == ("valid", "ok", "FB-1", NOW + DAY)
    assert v.allocations == {"servers": 500, "networks": 100}


def test_bound_domain_is_compared_as_a_canonical_hostname() -> None:
    assert check(lic(bound_domain="Billing.Example.COM."), "billing.example.com").state == "valid"
    assert check(lic(bound_domain="bücher.example"), "xn--bcher-kva.example").state == "valid"


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (None, "missing", "no license file"),
        (b"x" * (MAX_LICENSE_BYTES + 1), "too_large", "larger than"),
        (b"not json", "signature", "license signature: envelope is not JSON"),
        (make_license(nacl.signing.SigningKey.generate(), license_id="FB-1", bound_domain=DOMAIN,
                      issued_at=NOW - DAY, expires_at=NOW + DAY), "signature", "no trusted key verifies"),
        (lic(bound_domain="other.example.org"), "domain", "bound to 'other.example.org'"),
        (lic(bound_domain="not a host"), "payload", "not a valid host name"),
        (lic(issued_at=NOW + 2 * DAY, expires_at=NOW + 3 * DAY), "not_yet_valid", "in the future"),
        (lic(issued_at=NOW, expires_at=NOW - 1), "dates", "not after issued_at"),
        (lic(expires_at=NOW - 5), "expired", "expired 5 s ago"),
        (signed({"license_id": "FB-1", "bound_domain": DOMAIN, "issued_at": 1, "expires_at": "soon",
                 "allocations": {"servers": 1, "networks": 1}}), "dates", "integer issued_at/expires_at"),
        (signed({"license_id": "FB-1", "bound_domain": DOMAIN, "issued_at": 1, "expires_at": NOW + 9,
                 "allocations": {"servers": -1, "networks": 1}}), "allocations", "non-negative"),
        (signed({"license_id": "FB-1", "bound_domain": DOMAIN, "issued_at": 1, "expires_at": NOW + 9}),
         "allocations", "servers and networks"),
        (signed({"bound_domain": DOMAIN, "issued_at": 1, "expires_at": NOW + 9}), "payload", "license_id"),
    ],
)
def test_each_failure_has_its_own_code_and_message(data: bytes | None, code: str, words: str) -> None:
    v = check(data)
    assert v.code == code and words in v.reason
    assert v.state == {"missing": "unlicensed", "expired": "expired"}.get(code, "invalid")


def test_tampered_payload_fails_the_signature() -> None:
    env = json.loads(lic())
    payload = json.loads(base64.b64decode(env["payload"]))
    payload["expires_at"] += 365 * DAY
    env["payload"] = base64.b64encode(envelope.canonical_json(payload)).decode()
    v = check(json.dumps(env).encode())
    assert (v.state, v.code) == ("invalid", "signature")


def test_no_pinned_vendor_keys_means_the_license_cannot_be_verified() -> None:
    v = check_license(lic(), (), DOMAIN, NOW)
    assert (v.state, v.code) == ("invalid", "no_keys")


# ---- the pure machine ----

GOOD = check(lic(expires_at=NOW + 30 * DAY))


def receipt(state: str = "valid", at: float = NOW, **over: Any) -> Receipt:
    args: dict[str, Any] = dict(license_id="FB-1", expires_at=NOW + 30 * DAY, grace_until=NOW + 44 * DAY,
                                next_check_in=21600, server_ts=int(at), received_at=at)
    args.update(over)
    return Receipt(state, **args)


@pytest.mark.parametrize(
    ("rec", "contact", "now", "state"),
    [
        (None, Contact(), NOW, "valid"),
        (receipt(), Contact("delivered", NOW), NOW + DAY, "valid"),
        (receipt(), Contact("unreachable", NOW + DAY, NOW + DAY), NOW + 2 * DAY, "offline"),
        (receipt(), Contact("rejected", NOW + DAY, NOW + DAY), NOW + 2 * DAY, "offline"),
        (receipt(), Contact("unreachable", NOW + DAY, NOW + DAY), NOW + 15 * DAY, "grace"),
        (receipt(), Contact("delivered", NOW), NOW + 15 * DAY, "grace"),  # stale confirmation after a reboot
        (receipt(), Contact("delivered", NOW), NOW + 31 * DAY, "grace"),
        (receipt(), Contact("delivered", NOW), NOW + 45 * DAY, "expired"),
        (receipt("grace"), Contact("delivered", NOW), NOW + 40 * DAY, "grace"),
        (receipt("revoked"), Contact("delivered", NOW), NOW, "revoked"),
        (receipt("expired"), Contact("delivered", NOW), NOW, "expired"),
        (receipt("unlicensed"), Contact("delivered", NOW), NOW, "unlicensed"),
        (None, Contact("unreachable", NOW, NOW), NOW + 15 * DAY, "grace"),
    ],
)
def test_derive_transitions(rec: Receipt | None, contact: Contact, now: float, state: str) -> None:
    file = check_license(lic(expires_at=NOW + 30 * DAY), KEYS, DOMAIN, now)
    assert derive(file, rec, contact, now, 14 * DAY).state == state


def test_derive_reports_when_the_state_next_changes() -> None:
    st = derive(GOOD, receipt(), Contact("delivered", NOW), NOW + DAY, 14 * DAY)
    assert st.next_change == NOW + 14 * DAY


def test_clock_off_by_more_than_300_s_at_the_receipt_is_skew_and_less_is_not() -> None:
    assert derive(GOOD, receipt(skew=301.0), Contact(), NOW, 14 * DAY).clock_skew
    assert not derive(GOOD, receipt(skew=299.0), Contact(), NOW, 14 * DAY).clock_skew
    assert not derive(GOOD, receipt(skew=9999.0, source="import"), Contact(), NOW, 14 * DAY).clock_skew


# ---- properties of the machine ----

times = st.integers(NOW - 60 * DAY, NOW + 60 * DAY)
receipts = st.builds(
    Receipt, st.sampled_from(["valid", "grace", "expired", "revoked", "invalid", "unlicensed"]),
    st.sampled_from(["FB-1", "FB-2", None]), st.none() | times, st.none() | times, st.none(), times,
    times.map(float), st.floats(-1000, 1000), st.sampled_from(["online", "import"]),
    st.sampled_from(["FB-1", "FB-2", None]))
contacts = st.builds(Contact, st.sampled_from(["none", "delivered", "unreachable", "rejected"]),
                     st.none() | times.map(float), st.none() | times.map(float))
files = st.builds(lambda exp, issued: check_license(lic(issued_at=issued, expires_at=exp), KEYS, DOMAIN, NOW),
                  times, st.integers(NOW - 90 * DAY, NOW - 61 * DAY))


@settings(max_examples=150, deadline=None)
@given(files, st.none() | receipts, contacts, times, st.none() | times)
def test_setting_the_clock_back_never_changes_the_state_without_a_new_trusted_receipt(
        file: LicenseFile, rec: Receipt | None, contact: Contact, now: int, seen: int | None) -> None:
    # same inputs, only the clock differs: the state derived at the latest time seen holds when the
    # clock is set back, and so does the state derived once that time is recorded as seen_until
    top = max(now, seen or now, rec.server_ts if rec else now)
    later = derive(file, rec, contact, top, 14 * DAY, seen)
    assert derive(file, rec, contact, now, 14 * DAY, seen).state == later.state
    assert derive(file, rec, contact, now, 14 * DAY, later.effective_now).state == later.state


@settings(max_examples=150, deadline=None)
@given(st.none() | times, st.none() | receipts)
def test_seen_until_only_grows_unless_a_fresh_online_receipt_sets_it_to_the_server_time(
        seen: int | None, rec: Receipt | None) -> None:
    after = seen_after(seen, rec)
    if rec is not None and rec.source == "online":
        assert after == rec.server_ts  # the vendor's signed clock, in answer to the request just sent
    else:
        assert after == seen  # no receipt, or an imported one (it may be days old): nothing corrected


def test_a_fresh_receipt_after_a_run_with_the_clock_a_year_ahead_brings_valid_back() -> None:
    ahead = derive(GOOD, receipt(), Contact("delivered", NOW), NOW + 365 * DAY, 14 * DAY)
    assert ahead.state == "expired"
    spoiled = ahead.effective_now  # recorded as seen_until by that run
    fresh = receipt(at=NOW + 600)
    assert derive(GOOD, fresh, Contact("delivered", NOW + 600), NOW + 600, 14 * DAY, spoiled).state == "expired"
    corrected = seen_after(spoiled, fresh)
    assert derive(GOOD, fresh, Contact("delivered", NOW + 600), NOW + 600, 14 * DAY, corrected).state == "valid"
    imported = receipt(at=NOW + 600, source="import")
    assert derive(GOOD, imported, Contact(), NOW + 600, 14 * DAY, seen_after(spoiled, imported)).state == "expired"


@settings(max_examples=150, deadline=None)
@given(files, st.none() | receipts, contacts, times)
def test_valid_is_never_shown_past_the_expiry_that_decides_it(file: LicenseFile, rec: Receipt | None,
                                                              contact: Contact, now: int) -> None:
    s = derive(file, rec, contact, now, 14 * DAY)
    if s.state == "valid":
        end = rec.expires_at if rec is not None and applies(rec, file) else file.expires_at
        assert end is None or s.effective_now < end


@settings(max_examples=150, deadline=None)
@given(times, contacts, st.integers(1, 30 * DAY))
def test_server_granted_grace_holds_whatever_the_license_file_dates_say(now: int, contact: Contact,
                                                                        left: int) -> None:
    expired_file = check_license(lic(issued_at=now - 90 * DAY, expires_at=now - 1), KEYS, DOMAIN, now)
    rec = receipt("grace", at=now, expires_at=now - 1, grace_until=now + left)
    assert derive(expired_file, rec, contact, now, 14 * DAY).state == "grace"


# ---- one license-id pattern: what the license check accepts, the allowlist seals ----


def _sealable(license_id: str) -> bool:
    from fluxagent.errors import AllowlistError
    from fluxagent.wire import messages

    try:
        messages.seal(messages.build_license(DOMAIN, license_id, "valid", KEYS[0]), signing_key=VENDOR,
                      iid="7b3c2f9e-1d4a-4c8b-9e2f-0a1b2c3d4e5f", aud="licensing.example.net", seq=1,
                      now=NOW, nonce=b"\x01" * 16)
    except AllowlistError:
        return False
    return True


def test_license_id_the_wire_refuses_is_refused_by_the_license_check_naming_the_id_shape() -> None:
    v = check(lic(license_id="FB 2025/0001"))
    assert (v.state, v.code) == ("invalid", "payload")
    assert "license_id" in v.reason and "FB 2025/0001" not in v.reason
    assert not _sealable("FB 2025/0001")


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=70), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,70}", fullmatch=True)))
def test_a_license_id_passes_the_license_check_exactly_when_the_allowlist_seals_it(license_id: str) -> None:
    v = check(lic(license_id=license_id))
    if not license_id:
        assert v.code == "payload"
        return
    assert (v.state == "valid") == _sealable(license_id)


# ---- the license file has its own payload type, apart from the instance's license message ----

LICENSE_FILE_TYPE = "application/vnd.fluxagent.license-file.v1+json"
TRANSITION_END = 1_814_400_000  # 2027-07-01T00:00:00Z: old-type files issued before it still verify


def _of_type(ptype: str, **over: Any) -> bytes:
    payload: dict[str, Any] = {"license_id": "FB-1", "bound_domain": DOMAIN, "issued_at": NOW - DAY,
                               "expires_at": NOW + DAY, "allocations": {"servers": 500, "networks": 100}}
    payload.update(over)
    return envelope.sign_envelope(ptype, envelope.canonical_json(payload), VENDOR)


def test_license_files_are_issued_with_their_own_payload_type_not_the_license_messages() -> None:
    ptype = json.loads(lic())["payloadType"]
    assert ptype == LICENSE_FILE_TYPE != envelope.payload_type("license")
    assert check(_of_type(LICENSE_FILE_TYPE)).state == "valid"


def test_a_license_file_of_the_old_type_issued_before_the_transition_end_still_verifies() -> None:
    assert check(_of_type(envelope.payload_type("license"))).state == "valid"
    late = _of_type(envelope.payload_type("license"), issued_at=TRANSITION_END - 1, expires_at=TRANSITION_END + DAY)
    assert check_license(late, KEYS, DOMAIN, TRANSITION_END).state == "valid"


def test_a_license_file_of_the_old_type_issued_after_the_transition_end_is_refused() -> None:
    late = _of_type(envelope.payload_type("license"), issued_at=TRANSITION_END, expires_at=TRANSITION_END + DAY)
    v = check_license(late, KEYS, DOMAIN, TRANSITION_END + 60)
    assert (v.state, v.code) == ("invalid", "signature") and LICENSE_FILE_TYPE in v.reason


@pytest.mark.parametrize("kind", ["heartbeat", "receipt", "credentials", "answer"])
def test_a_vendor_signed_envelope_of_another_type_is_no_license_file(kind: str) -> None:
    assert check(_of_type(envelope.payload_type(kind))).code == "signature"
