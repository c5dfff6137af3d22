"""The services plan from hand-built observations (facts and unit states), and observe()."""

from __future__ import annotations

from pathlib import Path

from agent.paths import MCS_CLIENT_CONF
from agent.ports.licence import LicenceView, StaticLicence
from agent.ports.systemd import UnitState
from agent.services.catalogue import Facts, Role, load_catalogue
from agent.services.plan import ServicesObservation
from agent.services.subsystem import ServicesSubsystem
from agent.state.model import DesiredState
from agent.subsystems.base import SubsystemPlan, texts
from tests.unit.purity import Untouchable, forbid_io
from tests.unit.test_services_subsystem import LAB_UNITS, PURE_CLOUD, STANDARD, Node

PBX = Facts(LicenceView(True, frozenset({"PBX"}), "test licence"), Role.STANDALONE, False)
TURN_REASON = ("licensed (PBX); the co-resident TURN/STUN server is on in Pure Cloud (NAT 1:1) "
               "mode; this node is standalone")


def unit(name: str, active: bool = False, installed: bool = True) -> UnitState:
    return UnitState(name, "loaded" if installed else "not-found",
                     "active" if active else "inactive", "running" if active else "dead",
                     "success", "disabled" if installed else "")


def units(*running: str, missing: tuple[str, ...] = ()) -> dict[str, UnitState]:
    return {u: unit(u, u in running, u not in missing) for u in LAB_UNITS}


def plan(old: DesiredState | None, new: DesiredState, observed: ServicesObservation
         ) -> SubsystemPlan:
    """A subsystem whose ports refuse any use, with no I/O allowed: the plan works on the
    observation alone (nothing from an earlier check() or observe())."""
    sub = ServicesSubsystem(Untouchable("systemd"), load_catalogue("lab"),
                            Untouchable("licence"), Untouchable("role source"),
                            files=Untouchable("files"))
    with forbid_io():
        return sub.plan(old, new, observed)


def test_units_that_differ_from_what_systemd_shows_move() -> None:
    observed = ServicesObservation(PBX, units("nginx.service", "mariadb.service",
                                              "kamailio.service"))
    result = plan(STANDARD, PURE_CLOUD, observed)
    [step] = result.steps
    assert step.to_dict() == {
        "code": "unit-start",
        "params": {"name": "turn", "unit": "coturn.service", "reason": TURN_REASON},
        "text": f"start turn (coturn.service): {TURN_REASON}",
    }
    assert result.warnings == ()


def test_a_unit_that_stops_warns_what_becomes_unavailable() -> None:
    observed = ServicesObservation(PBX, units("nginx.service", "mariadb.service",
                                              "kamailio.service", "coturn.service"))
    result = plan(PURE_CLOUD, STANDARD, observed)
    assert [s.code for s in result.steps] == ["unit-stop"]
    [warning] = result.warnings
    assert warning.to_dict() == {
        "code": "service-unavailable",
        "params": {"name": "turn", "unit": "coturn.service",
                   "description": "co-resident TURN/STUN server"},
        "text": "turn stops: co-resident TURN/STUN server is unavailable",
    }


def test_a_unit_drifted_by_hand_is_in_the_plan_of_an_unchanged_document() -> None:
    # nothing changes in the document, but nginx was stopped by hand
    result = plan(STANDARD, STANDARD, ServicesObservation(PBX, units(
        "mariadb.service", "kamailio.service")))
    assert [(s.code, s.params["unit"]) for s in result.steps] == [
        ("unit-start", "nginx.service")]
    # and a unit that is not installed and not wanted moves nothing
    assert plan(STANDARD, STANDARD, ServicesObservation(PBX, units(
        "nginx.service", "mariadb.service", "kamailio.service",
        missing=("coturn.service",)))).empty


def test_without_unit_states_the_document_change_decides() -> None:
    result = plan(STANDARD, PURE_CLOUD, ServicesObservation(PBX, None))
    assert texts(result.steps) == (f"start turn (coturn.service): {TURN_REASON}",)
    assert [s.code for s in plan(None, STANDARD, ServicesObservation(PBX, None)).steps] == [
        "unit-start"] * 3


def test_without_facts_the_plan_says_the_catalogue_is_followed() -> None:
    [step] = plan(STANDARD, PURE_CLOUD, ServicesObservation(None, None)).steps
    assert (step.code, step.text, step.params) == (
        "units-follow-catalogue", "start and stop units as the catalogue says", {})


async def test_observe_reads_the_facts_and_every_catalogue_unit(tmp_path: Path) -> None:
    node = Node(tmp_path, licence=StaticLicence(frozenset({"SMART_WORKING"})))
    node.files.path(MCS_CLIENT_CONF).parent.mkdir(parents=True)
    node.files.path(MCS_CLIENT_CONF).write_text("client\n")
    seen = await node.services.observe(STANDARD)
    assert seen.facts is not None and seen.facts.mcs_client_configured
    assert seen.facts.licence.modules == frozenset({"SMART_WORKING"})
    assert seen.units is not None and sorted(seen.units) == sorted(LAB_UNITS)


async def test_observe_without_a_licence_answer_leaves_the_facts_out(tmp_path: Path) -> None:
    class Silent:
        async def current(self) -> LicenceView:
            raise TimeoutError

    node = Node(tmp_path, licence=Silent())
    assert await node.services.observe(STANDARD) == ServicesObservation(None, None)
