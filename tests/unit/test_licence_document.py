"""The licence format: sign, verify, one altered byte, other keys, shapes, module text."""

from __future__ import annotations

import json

import pytest

from agent.licence.document import (
    Licence,
    LicenceDocumentError,
    Module,
    load_private_key,
    load_public_key,
    new_private_key,
    parse_modules,
    private_key_pem,
    public_key_pem,
    sign_licence,
    verify_licence,
)

KEY = new_private_key()
LICENCE = Licence("VX-AAAA-BBBB-CCCC", "ACME", "o@acme.example",
                  (Module("PBX"), Module("WEB_CLIENT_SMART", True, 10)), 1_700_000_000, None, 3,
                  "sha256:" + "0" * 64)


def test_round_trip_through_pem_keys() -> None:
    private = load_private_key(private_key_pem(KEY))
    public = load_public_key(public_key_pem(KEY.public_key()))
    assert verify_licence(sign_licence(LICENCE, private), public) == LICENCE
    assert LICENCE.limits == {"WEB_CLIENT_SMART": 10}


def test_every_single_byte_of_the_payload_counts() -> None:
    text = sign_licence(LICENCE, KEY).encode()
    start = text.index(b'"licence"')
    end = text.index(b'"signature"')
    for i in range(start + 12, end, 7):
        if text[i:i + 1] in b' \n,:{}[]"':
            continue
        altered = text[:i] + bytes([text[i] ^ 0x01]) + text[i + 1:]
        with pytest.raises(LicenceDocumentError):
            verify_licence(altered, KEY.public_key())


def test_another_vendor_key_is_refused() -> None:
    with pytest.raises(LicenceDocumentError) as err:
        verify_licence(sign_licence(LICENCE, new_private_key()), KEY.public_key())
    assert str(err.value) == ("the licence signature does not verify: the licence was altered "
                              "or was not issued by this vendor")


@pytest.mark.parametrize(("text", "message"), [
    ("not json", "the licence is not JSON (the file is damaged)"),
    ("[]", "the licence is not a JSON object (the file is damaged)"),
    ("{}", "the licence has no format_version (the file is damaged)"),
    ('{"format_version": 2}', "the licence has format_version 2, newer than this agent "
     "understands (1); update voxnode"),
    ('{"format_version": 1, "licence": {}}', "the licence has no 'licence' object or no "
     "'signature'"),
])
def test_damaged_files(text: str, message: str) -> None:
    with pytest.raises(LicenceDocumentError) as err:
        verify_licence(text, KEY.public_key())
    assert str(err.value) == message


def test_signed_but_malformed_payload_is_refused_cleanly() -> None:
    from agent.licence.document import canonical_json

    payload = {**LICENCE.payload(), "version": "three"}
    import base64
    text = json.dumps({"format_version": 1, "licence": payload, "signature": base64.b64encode(
        KEY.sign(canonical_json(payload))).decode()})
    with pytest.raises(LicenceDocumentError, match="field 'version' is missing or malformed"):
        verify_licence(text, KEY.public_key())


@pytest.mark.parametrize(("text", "message"), [
    ("pbx", "'pbx' is not a module name (upper case, digits and '_', like PBX)"),
    ("PBX,PBX", "module PBX is given twice"),
    ("WEB=x", "the limit of WEB must be a whole number from 0 to 1000000 (got 'x')"),
    ("", "give at least one module, like PBX or WEB_CLIENT_SMART=10"),
])
def test_module_text_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_modules(text)
    assert str(err.value) == message


def test_module_text() -> None:
    assert parse_modules("PBX, WEB_CLIENT_SMART=10") == (Module("PBX"),
                                                         Module("WEB_CLIENT_SMART", True, 10))
