"""The derived settings of requirements §3, row by row, and their operator wording."""

from __future__ import annotations

import dataclasses

import pytest

from agent.mode.table import (
    ModeSettings,
    PasswordSecurity,
    ProvisioningSecurity,
    SipTransport,
    SmartWorking,
    describe,
    differences,
    settings_for,
)
from agent.state.model import WorkingMode

# requirements §3, transcribed column by column (and checked against the Italian seed).
STANDARD = ModeSettings(
    user_password_security=PasswordSecurity.NOT_SECURE,
    sip_password_security=PasswordSecurity.NOT_SECURE,
    phone_provisioning_security=ProvisioningSecurity.BASIC,
    sip_transport=SipTransport.UDP,
    ice_nat_traversal=False,
    peer_to_peer_media=True,
    turn_stun_server=False,
    smart_working=SmartWorking.PER_USER,
)
PURE_CLOUD = ModeSettings(
    user_password_security=PasswordSecurity.SECURE,
    sip_password_security=PasswordSecurity.SECURE,
    phone_provisioning_security=ProvisioningSecurity.SECURE_RPS,
    sip_transport=SipTransport.TLS,
    ice_nat_traversal=True,
    peer_to_peer_media=False,
    turn_stun_server=True,
    smart_working=SmartWorking.ALL_DEVICES,
)

STANDARD_ROWS = [
    ("User password security", "not secure"),
    ("SIP password security", "not secure"),
    ("Phone provisioning security", "basic"),
    ("SIP transport for extensions", "UDP"),
    ("ICE NAT traversal (supported Yealink)", "no"),
    ("Peer-to-peer media", "yes"),
    ("Co-resident TURN/STUN server", "off"),
    ("Smart working (WebRTC, mobile app)", "per user (needs MCS and a licence)"),
]
PURE_CLOUD_ROWS = [
    ("User password security", "secure"),
    ("SIP password security", "secure"),
    ("Phone provisioning security", "secure, RPS enabled"),
    ("SIP transport for extensions", "TLS"),
    ("ICE NAT traversal (supported Yealink)", "yes"),
    ("Peer-to-peer media", "no"),
    ("Co-resident TURN/STUN server", "on"),
    ("Smart working (WebRTC, mobile app)", "on for all WebRTC and mobile app devices"),
]


def test_the_table_has_exactly_the_eight_rows_of_requirements() -> None:
    assert [f.name for f in dataclasses.fields(ModeSettings)] == [
        "user_password_security",
        "sip_password_security",
        "phone_provisioning_security",
        "sip_transport",
        "ice_nat_traversal",
        "peer_to_peer_media",
        "turn_stun_server",
        "smart_working",
    ]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [(WorkingMode.STANDARD, STANDARD), (WorkingMode.PURE_CLOUD, PURE_CLOUD)],
)
def test_settings_for_each_mode(mode: WorkingMode, expected: ModeSettings) -> None:
    assert settings_for(mode) == expected


def test_settings_are_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings_for(WorkingMode.STANDARD).turn_stun_server = True  # type: ignore[misc]


@pytest.mark.parametrize(
    ("mode", "rows"),
    [(WorkingMode.STANDARD, STANDARD_ROWS), (WorkingMode.PURE_CLOUD, PURE_CLOUD_ROWS)],
)
def test_describe_is_the_operator_table(mode: WorkingMode, rows: list[tuple[str, str]]) -> None:
    assert describe(mode) == rows


def test_every_row_differs_between_the_modes_in_both_directions() -> None:
    forward = differences(WorkingMode.STANDARD, WorkingMode.PURE_CLOUD)
    backward = differences(WorkingMode.PURE_CLOUD, WorkingMode.STANDARD)
    assert forward == [
        (label, a, b) for (label, a), (_, b) in zip(STANDARD_ROWS, PURE_CLOUD_ROWS, strict=True)
    ]
    assert backward == [(label, b, a) for label, a, b in forward]
    assert ("SIP transport for extensions", "UDP", "TLS") in forward


@pytest.mark.parametrize("mode", list(WorkingMode))
def test_no_differences_within_one_mode(mode: WorkingMode) -> None:
    assert differences(mode, mode) == []


def test_to_dict_is_json_ready() -> None:
    assert settings_for(WorkingMode.PURE_CLOUD).to_dict() == {
        "user_password_security": "secure",
        "sip_password_security": "secure",
        "phone_provisioning_security": "secure-rps",
        "sip_transport": "tls",
        "ice_nat_traversal": True,
        "peer_to_peer_media": False,
        "turn_stun_server": True,
        "smart_working": "all-devices",
    }
