"""Small edits of the current document (`network set KEY=VALUE`, `mode set`).

Pure functions: they take the committed document as a plain mapping and return a new one;
validation of the result is done by the normal pipeline, so an edit can never produce a
state that `config apply` would refuse.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from agent.errors import InvalidInput, Problem

Document = dict[str, Any]

NETWORK_SCALARS = ("hostname", "domain", "public_ip", "gateway")
NETWORK_LISTS = ("dns", "search", "ntp")
INTERFACE_KEYS = ("addresses", "dhcp", "mtu")
UNSETTABLE = ("domain", "public_ip", "gateway", *NETWORK_LISTS)

SETTINGS_HELP = (
    "hostname, domain, public_ip, gateway, dns, search, ntp, "
    "interfaces.IF.addresses, interfaces.IF.dhcp, interfaces.IF.mtu"
)

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _as_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _as_bool(key: str, value: Any, problems: list[Problem]) -> Any:
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        problems.append(Problem(key, f"'{value}' is not true or false"))
    return value


def _as_int(key: str, value: Any, problems: list[Problem]) -> Any:
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            problems.append(Problem(key, f"'{value}' is not a whole number"))
    return value


def edit_network(
    document: Mapping[str, Any], set_values: Mapping[str, Any], unset: list[str]
) -> Document:
    """Apply ``set_values`` (setting → value; strings are parsed) and ``unset`` to ``network``.

    Setting ``interfaces.IF.*`` for an interface not yet configured adds it; unsetting
    ``interfaces.IF`` removes it. Unknown settings are problems, all reported at once.
    """
    doc = copy.deepcopy(dict(document))
    net = doc.setdefault("network", {})
    interfaces = net.setdefault("interfaces", {})
    problems: list[Problem] = []
    if not set_values and not unset:
        raise InvalidInput(
            "nothing to change", problems=[Problem("", f"give KEY=VALUE ({SETTINGS_HELP})")]
        )
    for key, value in set_values.items():
        parts = key.split(".")
        if key in NETWORK_SCALARS:
            net[key] = value.strip() if isinstance(value, str) else value
        elif key in NETWORK_LISTS:
            net[key] = _as_list(value)
        elif len(parts) == 3 and parts[0] == "interfaces" and parts[2] in INTERFACE_KEYS:
            iface = interfaces.setdefault(parts[1], {})
            if parts[2] == "addresses":
                iface["addresses"] = _as_list(value)
            elif parts[2] == "dhcp":
                iface["dhcp"] = _as_bool(key, value, problems)
            else:
                iface["mtu"] = _as_int(key, value, problems)
        else:
            problems.append(Problem(key, f"unknown setting (allowed: {SETTINGS_HELP})"))
    for key in unset:
        parts = key.split(".")
        if key in UNSETTABLE:
            net.pop(key, None)
        elif len(parts) == 2 and parts[0] == "interfaces":
            if interfaces.pop(parts[1], None) is None:
                problems.append(Problem(key, f"interface {parts[1]} is not configured"))
        elif key == f"interfaces.{parts[1] if len(parts) > 1 else ''}.mtu" and len(parts) == 3:
            interfaces.get(parts[1], {}).pop("mtu", None)
        else:
            problems.append(
                Problem(
                    key,
                    "cannot be unset (unsettable: domain, public_ip, gateway, dns, search, "
                    "ntp, interfaces.IF, interfaces.IF.mtu)",
                )
            )
    if problems:
        raise InvalidInput("the settings are not valid", problems=problems)
    return doc


def edit_mode(document: Mapping[str, Any], mode: str) -> Document:
    doc = copy.deepcopy(dict(document))
    doc["mode"] = mode
    return doc
