"""The subsystem contract kept: every plan is pure, and its items have documented codes.

Each subsystem's plan runs with ports that refuse any use (``Untouchable``) and with file,
socket and process calls raising (``forbid_io``), on hand-built observations, for the
transitions an operator makes. Its items' codes must be members of the subsystem's code
enum, unique across subsystems, and listed in the README.
"""

from __future__ import annotations

import json
import os
import socket
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

import pytest

from agent.engine import Engine
from agent.events import EventLog
from agent.ha.subsystem import HACode, HAObservation, HASubsystem
from agent.mode.plan import ModeCode
from agent.mode.subsystem import ModeSubsystem
from agent.network.plan import NetworkCode
from agent.network.subsystem import NetworkSubsystem
from agent.ports.licence import LicenceView
from agent.ports.systemd import UnitState
from agent.services.catalogue import Facts, Role, load_catalogue
from agent.services.plan import ServicesCode, ServicesObservation
from agent.services.subsystem import ServicesSubsystem
from agent.state.document import validate_document
from agent.state.model import DesiredState
from agent.state.store import Store
from agent.subsystems.base import PlanItem, SubsystemPlan
from ha.manager import HAManager
from tests.unit.purity import PlanDidIO, Untouchable, forbid_io

README = Path(__file__).resolve().parents[2] / "README.md"
CODES: dict[str, type[StrEnum]] = {
    "network": NetworkCode, "mode": ModeCode, "ha": HACode, "services": ServicesCode}


def doc(mode: str = "standard", ha: dict[str, Any] | None = None, **network: Any
        ) -> DesiredState:
    """A document; ``ha``: the pair's settings besides the defaults below (None: off)."""
    net: dict[str, Any] = {
        "hostname": "pbx1", "domain": "pbx.example.com", "public_ip": "203.0.113.10",
        "gateway": "10.0.0.1", "dns": ["10.0.0.2"],
        "interfaces": {"eth0": {"addresses": ["10.0.0.11/24"]}}} | network
    pair = {"enabled": True, "peer": "10.0.0.12", "shared_ips": [
        {"interface": "eth0", "address": "10.0.0.10/24", "primary": True}]}
    return validate_document({"schema_version": 1, "network": net, "mode": mode,
                              "ha": pair | ha if ha is not None else {"enabled": False}})


TRANSITIONS = [
    (None, doc()),
    (doc(), doc("pure-cloud")),
    (doc("pure-cloud"), doc()),
    (doc("pure-cloud"), doc("pure-cloud", public_ip="203.0.113.20", dns=[])),
    (doc(), doc(gateway=None, interfaces={"eth0": {"addresses": ["10.0.0.12/24"],
                                                   "mtu": 9000}})),
    (doc(), doc(ha={})),
    (doc(ha={}), doc(ha={"profile": "fast"})),
    (doc(ha={}), doc()),
]
FACTS = Facts(LicenceView(True, frozenset({"PBX", "PURE_CLOUD"}), "test"), Role.STANDALONE,
              True)
SERVICES_SEEN = [
    ServicesObservation(None, None),
    ServicesObservation(FACTS, None),
    ServicesObservation(FACTS, {u.unit: UnitState(u.unit, "loaded", "active", "running",
                                                  "success", "enabled")
                                for u in load_catalogue("lab").units}),
]


def untouchable_subsystems() -> list[tuple[Any, list[Any]]]:
    """Every subsystem the agent runs, on ports a plan must not use, with observations."""
    return [
        (NetworkSubsystem(Untouchable("netlink"), Untouchable("files"),
                          Untouchable("hostname")), [None]),
        (ModeSubsystem(Untouchable("files"), Untouchable("licence")), [None]),
        (HASubsystem(cast(HAManager, Untouchable("failover manager"))),
         [HAObservation(True), HAObservation(False)]),
        (ServicesSubsystem(Untouchable("systemd"), load_catalogue("lab"),
                           Untouchable("licence"), Untouchable("role source"),
                           files=Untouchable("files")), SERVICES_SEEN),
    ]


def items(plan: SubsystemPlan) -> list[PlanItem]:
    return [*plan.steps, *plan.warnings, *plan.acknowledge]


def all_plans() -> list[tuple[str, SubsystemPlan]]:
    plans = []
    for sub, observations in untouchable_subsystems():
        for old, new in TRANSITIONS:
            for observed in observations:
                with forbid_io():
                    plans.append((sub.name, sub.plan(old, new, observed)))
    return plans


def test_every_plan_is_pure_and_every_item_is_json() -> None:
    plans = all_plans()
    assert {name for name, _ in plans} == set(CODES)
    seen: dict[str, set[str]] = {name: set() for name in CODES}
    for name, plan in plans:
        assert plan.subsystem == name
        json.dumps(plan.to_dict())  # params are JSON scalars
        for entry in items(plan):
            assert entry.code in set(CODES[name]), f"{name}: {entry.code} is not a {name} code"
            seen[name].add(entry.code)
    # the transitions above reach most codes of every subsystem
    assert all(len(codes) >= 3 for codes in seen.values()), seen


def test_codes_are_kebab_case_and_unique_across_subsystems() -> None:
    owner: dict[str, str] = {}
    for name, codes in CODES.items():
        for code in codes:
            PlanItem(code, "checked by the constructor")
            assert code.value not in owner, f"{code} is a code of {owner[code]} and {name}"
            owner[code.value] = name


def test_the_readme_lists_every_code() -> None:
    text = README.read_text()
    missing = [f"{name}: {code}" for name, codes in CODES.items() for code in codes
               if f"`{code.value}`" not in text]
    assert not missing, f"codes the README does not document: {', '.join(missing)}"


def test_a_plan_item_refuses_a_bad_code_or_a_param_that_is_not_a_scalar() -> None:
    with pytest.raises(ValueError, match="not kebab-case"):
        PlanItem("Address_Add", "text")
    with pytest.raises(ValueError, match="params address are not JSON scalars"):
        PlanItem("address-add", "text", {"address": cast(Any, ["10.0.0.1"])})
    with pytest.raises(ValueError, match="has no text"):
        PlanItem("address-add", "")


# --- the guard itself ---------------------------------------------------------------------------


def test_the_guard_catches_file_socket_and_port_use(tmp_path: Path) -> None:
    planted = tmp_path / "file"
    planted.write_text("x")
    attempts = [
        lambda: open(planted),  # noqa: SIM115
        planted.read_bytes,
        planted.exists,
        lambda: list(tmp_path.glob("*")),
        lambda: os.listdir(tmp_path),
        lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
    ]
    with forbid_io():
        for attempt in attempts:
            with pytest.raises(PlanDidIO):
                attempt()
    assert planted.read_text() == "x"  # and everything works again afterwards
    with pytest.raises(PlanDidIO, match=r"the plan used the systemd \(unit_states\)"):
        _ = Untouchable("systemd").unit_states


def test_the_guard_catches_a_plan_that_reads_the_machine(tmp_path: Path) -> None:
    """The shape the contract forbids: a plan that looks at a file itself."""

    class Peeking:
        def plan(self) -> bool:
            return (tmp_path / "etc" / "mcs.conf").exists()

    with forbid_io(), pytest.raises(PlanDidIO, match=r"os\.stat"):
        Peeking().plan()


def test_the_agents_subsystems_own_distinct_keys(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    engine = Engine(store, [sub for sub, _ in untouchable_subsystems()], EventLog())
    assert {s.name: s.owns for s in engine.subsystems} == {
        "network": ("network",), "mode": ("mode",), "ha": ("ha",), "services": ()}
