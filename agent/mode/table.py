"""The settings a working mode implies (requirements §3), as pure data.

The operator picks one thing — the working mode — and the node derives the rest from
this table. Renderers (pjsip, coturn), the application layer (through
``working-mode.json``) and ``voxnode mode show`` all read it from here, so the table
exists once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from agent.state.model import WorkingMode


class PasswordSecurity(StrEnum):
    NOT_SECURE = "not-secure"
    SECURE = "secure"


class ProvisioningSecurity(StrEnum):
    BASIC = "basic"
    SECURE_RPS = "secure-rps"  # secure provisioning, Yealink RPS (redirect service) enabled


class SipTransport(StrEnum):
    UDP = "udp"
    TLS = "tls"


class SmartWorking(StrEnum):
    PER_USER = "per-user"  # enabled user by user; needs an MCS link and a licence
    ALL_DEVICES = "all-devices"  # on for every WebRTC client and mobile app device


@dataclass(frozen=True)
class ModeSettings:
    """One column of the §3 table: one field per row, in the table's order."""

    user_password_security: PasswordSecurity
    sip_password_security: PasswordSecurity
    phone_provisioning_security: ProvisioningSecurity
    sip_transport: SipTransport  # for extensions; trunks keep their own transport
    ice_nat_traversal: bool  # for the Yealink models that support it
    peer_to_peer_media: bool
    turn_stun_server: bool  # the co-resident one (coturn on this node)
    smart_working: SmartWorking

    def to_dict(self) -> dict[str, str | bool]:
        """The JSON form the application layer reads (keys are the field names)."""
        return {
            "user_password_security": self.user_password_security.value,
            "sip_password_security": self.sip_password_security.value,
            "phone_provisioning_security": self.phone_provisioning_security.value,
            "sip_transport": self.sip_transport.value,
            "ice_nat_traversal": self.ice_nat_traversal,
            "peer_to_peer_media": self.peer_to_peer_media,
            "turn_stun_server": self.turn_stun_server,
            "smart_working": self.smart_working.value,
        }


_SETTINGS = {
    WorkingMode.STANDARD: ModeSettings(
        user_password_security=PasswordSecurity.NOT_SECURE,
        sip_password_security=PasswordSecurity.NOT_SECURE,
        phone_provisioning_security=ProvisioningSecurity.BASIC,
        sip_transport=SipTransport.UDP,
        ice_nat_traversal=False,
        peer_to_peer_media=True,
        turn_stun_server=False,
        smart_working=SmartWorking.PER_USER,
    ),
    WorkingMode.PURE_CLOUD: ModeSettings(
        user_password_security=PasswordSecurity.SECURE,
        sip_password_security=PasswordSecurity.SECURE,
        phone_provisioning_security=ProvisioningSecurity.SECURE_RPS,
        sip_transport=SipTransport.TLS,
        ice_nat_traversal=True,
        peer_to_peer_media=False,
        turn_stun_server=True,
        smart_working=SmartWorking.ALL_DEVICES,
    ),
}


def settings_for(mode: WorkingMode) -> ModeSettings:
    return _SETTINGS[mode]


# --- operator wording ----------------------------------------------------------------------

MODE_TITLES = {
    WorkingMode.STANDARD: "Standard",
    WorkingMode.PURE_CLOUD: "Pure Cloud (NAT 1:1)",
}

LABEL_USER_PASSWORD = "User password security"
LABEL_SIP_PASSWORD = "SIP password security"
LABEL_PROVISIONING = "Phone provisioning security"
LABEL_SIP_TRANSPORT = "SIP transport for extensions"
LABEL_ICE = "ICE NAT traversal (supported Yealink)"
LABEL_P2P = "Peer-to-peer media"
LABEL_TURN = "Co-resident TURN/STUN server"
LABEL_SMART_WORKING = "Smart working (WebRTC, mobile app)"

_PASSWORD_TEXT = {PasswordSecurity.NOT_SECURE: "not secure", PasswordSecurity.SECURE: "secure"}
_PROVISIONING_TEXT = {
    ProvisioningSecurity.BASIC: "basic",
    ProvisioningSecurity.SECURE_RPS: "secure, RPS enabled",
}
_SMART_WORKING_TEXT = {
    SmartWorking.PER_USER: "per user (needs MCS and a licence)",
    SmartWorking.ALL_DEVICES: "on for all WebRTC and mobile app devices",
}


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _rows(s: ModeSettings) -> list[tuple[str, str]]:
    return [
        (LABEL_USER_PASSWORD, _PASSWORD_TEXT[s.user_password_security]),
        (LABEL_SIP_PASSWORD, _PASSWORD_TEXT[s.sip_password_security]),
        (LABEL_PROVISIONING, _PROVISIONING_TEXT[s.phone_provisioning_security]),
        (LABEL_SIP_TRANSPORT, s.sip_transport.value.upper()),
        (LABEL_ICE, _yes_no(s.ice_nat_traversal)),
        (LABEL_P2P, _yes_no(s.peer_to_peer_media)),
        (LABEL_TURN, "on" if s.turn_stun_server else "off"),
        (LABEL_SMART_WORKING, _SMART_WORKING_TEXT[s.smart_working]),
    ]


def describe(mode: WorkingMode) -> list[tuple[str, str]]:
    """(label, value) rows for ``voxnode mode show``, one per derived setting.

    The mode itself is not a row: the CLI prints it above the table (``MODE_TITLES``).
    """
    return _rows(settings_for(mode))


@dataclass(frozen=True)
class SettingChange:
    """One derived setting a mode switch changes: its key (``ModeSettings`` field, the key
    in working-mode.json), its values, and the operator wording of both."""

    setting: str
    old: str | bool
    new: str | bool
    label: str
    old_text: str
    new_text: str


def setting_changes(old: WorkingMode, new: WorkingMode) -> list[SettingChange]:
    """Every derived setting that differs between ``old`` and ``new``, in table order."""
    before, after = settings_for(old), settings_for(new)
    rows = zip(before.to_dict().items(), after.to_dict().values(), _rows(before), _rows(after),
               strict=True)
    return [
        SettingChange(key, old_value, new_value, label, old_text, new_text)
        for (key, old_value), new_value, (label, old_text), (_, new_text) in rows
        if old_text != new_text
    ]


def differences(old: WorkingMode, new: WorkingMode) -> list[tuple[str, str, str]]:
    """(label, old value, new value) for every derived setting that differs, in table order."""
    return [(c.label, c.old_text, c.new_text) for c in setting_changes(old, new)]
