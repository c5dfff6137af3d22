"""The service catalogue: the shipped ones load, bad ones are refused with exact problems."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.errors import InvalidInput
from agent.services.catalogue import (
    Condition,
    RefreshHow,
    Role,
    load_catalogue,
    validate_catalogue,
)
from agent.state.model import WorkingMode


def test_appliance_catalogue() -> None:
    cat = load_catalogue("appliance")
    by_name = {e.name: e for e in cat.units}
    assert cat.catalogue == "appliance"
    assert [e.name for e in cat.in_start_order()] == [
        "nginx", "database", "pbx-engine", "webapi", "webclientproxy", "webcustomerproxy",
        "chat", "turn", "mcs-vpn",
    ]
    assert by_name["pbx-engine"].unit == "asterisk.service"
    assert by_name["pbx-engine"].licence == ("PBX",)
    assert [e.name for e in cat.units if e.base] == ["nginx"]
    assert by_name["nginx"].roles == [Role.MASTER, Role.SLAVE, Role.OFF, Role.STANDALONE]
    assert by_name["nginx"].refresh is RefreshHow.RELOAD
    assert by_name["turn"].condition is Condition.TURN_STUN_SERVER
    assert by_name["mcs-vpn"].modes == [WorkingMode.STANDARD]
    assert by_name["database"].timeout == 300 and by_name["webapi"].timeout == 90


def test_lab_catalogue_runs_kamailio_as_a_base_pbx_engine() -> None:
    cat = load_catalogue("lab")
    by_name = {e.name: e for e in cat.units}
    assert cat.catalogue == "lab"
    assert by_name["pbx-engine"].unit == "kamailio.service"
    assert [e.name for e in cat.in_start_order() if e.base] == ["nginx", "pbx-engine"]
    assert by_name["database"].licence == ("PBX",)


def test_catalogue_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "cat.yaml"
    path.write_text(
        "catalogue: mine\nunits:\n  - {name: web, unit: nginx.service, description: web,"
        " licence: base, roles: [standalone], order: 1}\n"
    )
    cat = load_catalogue(str(path))
    assert cat.catalogue == "mine" and cat.units[0].modes == list(WorkingMode)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        load_catalogue(str(tmp_path / "none.yaml"))
    assert info.value.message == f"cannot read service catalogue {tmp_path / 'none.yaml'}"
    assert [str(p) for p in info.value.problems] == [
        f"{tmp_path / 'none.yaml'}: No such file or directory"
    ]


def test_yaml_syntax_error_is_located(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("catalogue: x\nunits: [\n")
    with pytest.raises(InvalidInput) as info:
        load_catalogue(str(path))
    assert str(info.value.problems[0]).startswith(f"{path}:3:1: ")


GOOD: dict[str, Any] = {
    "name": "pbx-engine", "unit": "kamailio.service", "description": "PBX engine",
    "licence": "base", "roles": ["standalone"], "order": 30,
}


def problems(data: Any) -> list[str]:
    with pytest.raises(InvalidInput) as info:
        validate_catalogue(data, "t.yaml")
    assert info.value.message.startswith("service catalogue t.yaml ")
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"bogus": 1}, "units[0].bogus: unknown key (allowed: name, unit, description, licence, "
         "roles, modes, condition, order, timeout, refresh)"),
        ({"name": "PBX Engine"}, "units[0].name: 'PBX Engine' is not a logical name (lower "
         "case, digits, '-')"),
        ({"unit": "kamailio"}, "units[0].unit: 'kamailio' is not a systemd unit name like "
         "nginx.service"),
        ({"description": ""}, "units[0].description: must not be empty"),
        ({"licence": "none"}, "units[0].licence: must be 'base' (runs without a licence) or a "
         "list of licence modules that are all needed, like [PBX]"),
        ({"licence": []}, "units[0].licence: must be 'base' (runs without a licence) or a "
         "list of licence modules that are all needed, like [PBX]"),
        ({"licence": ["pbx"]}, "units[0].licence: 'pbx' is not a licence module name (upper "
         "case, like PBX)"),
        ({"licence": ["PBX", "PBX"]}, "units[0].licence: lists a module twice"),
        ({"roles": ["primary"]}, "units[0].roles[0]: 'primary' is not allowed (allowed: "
         "master, slave, off or standalone)"),
        ({"roles": [False]}, "units[0].roles[0]: false is not allowed (allowed: master, slave, "
         "off or standalone; YAML reads unquoted off/on/yes/no as false/true: quote them)"),
        ({"roles": []}, "units[0].roles: must not be empty"),
        ({"modes": ["cloud"]}, "units[0].modes[0]: 'cloud' is not allowed (allowed: standard "
         "or pure-cloud)"),
        ({"condition": "always"}, "units[0].condition: 'always' is not allowed (allowed: "
         "turn-stun-server or mcs-client-configured)"),
        ({"order": "10"}, "units[0].order: must be a whole number"),
        ({"order": 1000}, "units[0].order: 1000 is above the maximum 999"),
        ({"timeout": 0}, "units[0].timeout: 0 is below the minimum 1"),
        ({"refresh": "kill"}, "units[0].refresh: 'kill' is not allowed (allowed: restart or "
         "reload)"),
        ({"condition": "mcs-client-configured"}, "units[0].modes: the MCS client exists in "
         "standard mode only; list modes: [standard]"),
    ],
)
def test_bad_entry(change: dict[str, Any], expected: str) -> None:
    assert problems({"catalogue": "t", "units": [GOOD | change]}) == [expected]


def test_every_problem_at_once() -> None:
    entry = {k: v for k, v in GOOD.items() if k != "order"} | {"roles": ["x"]}
    assert problems({"catalogue": "t", "units": [entry], "extra": 1}) == [
        "extra: unknown key (allowed: catalogue, units)",
        "units[0].order: required",
        "units[0].roles[0]: 'x' is not allowed (allowed: master, slave, off or standalone)",
    ]


def test_duplicates() -> None:
    second = GOOD | {"order": 40}
    third = GOOD | {"name": "other"}
    assert problems({"catalogue": "t", "units": [GOOD, second, third]}) == [
        "units[1].name: 'pbx-engine' is already units[0]",
        "units[1].unit: 'kamailio.service' is already units[0]",
        "units[2].unit: 'kamailio.service' is already units[0]",
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (None, "expected the keys catalogue and units"),
        ({"catalogue": "t"}, "units: required"),
        ({"catalogue": "t", "units": []}, "units: must not be empty"),
        ({"catalogue": "t", "units": ["nginx"]}, "units[0]: must be a mapping (key: value)"),
    ],
)
def test_bad_shape(data: Any, expected: str) -> None:
    assert problems(data) == [expected]
