"""The service catalogue: which systemd units a node runs, and why (or why not).

Owns the catalogue's schema (strict: unknown keys rejected, every problem reported at once
as ``path: message``), loading the shipped catalogues (``appliance``, ``lab``) or a file,
the node roles, and ``decide``: the pure rule that turns a catalogue, the working mode and
the node's facts (licence, role, MCS client) into one ``UnitDecision`` per unit, with an
operator sentence saying why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError
from pydantic_core import PydanticCustomError

from agent.errors import InvalidInput, Problem
from agent.mode.table import MODE_TITLES, settings_for
from agent.paths import MCS_CLIENT_CONF
from agent.ports.licence import LicenceView
from agent.state.document import format_path, parse_yaml
from agent.state.model import WorkingMode

SHIPPED = ("appliance", "lab")
BASE = "base"
_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.\\@-]+\.(service|socket|target|timer|path)$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
_MODULE_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,39}$")


class Role(StrEnum):
    """The node's place in a pair; ``standalone`` until failover is set up."""

    MASTER = "master"
    SLAVE = "slave"
    OFF = "off"  # "services off": the pair keeps this node out of service
    STANDALONE = "standalone"


class Condition(StrEnum):
    """Facts beyond licence, role and mode that a unit needs; the subsystem evaluates them."""

    TURN_STUN_SERVER = "turn-stun-server"  # the mode's co-resident TURN/STUN server is on
    MCS_CLIENT_CONFIGURED = "mcs-client-configured"  # the operator uploaded the MCS config


class RefreshHow(StrEnum):
    """How `services restart-all` refreshes a running unit."""

    RESTART = "restart"
    RELOAD = "reload"  # e.g. nginx: a reload keeps the console's connections open


def _parse_licence(value: Any) -> tuple[str, ...]:
    if value == BASE:
        return ()
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        bad = [v for v in value if not _MODULE_RE.match(v)]
        if bad:
            raise PydanticCustomError(
                "voxnode", "'{value}' is not a licence module name (upper case, like PBX)",
                {"value": bad[0]},
            )
        if len(set(value)) != len(value):
            raise PydanticCustomError("voxnode", "lists a module twice", {})
        return tuple(value)
    raise PydanticCustomError(
        "voxnode", "must be 'base' (runs without a licence) or a list of licence modules "
        "that are all needed, like [PBX]", {},
    )


def _pattern(regex: re.Pattern[str], what: str) -> Any:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not regex.match(value):
            raise PydanticCustomError("voxnode", "'{value}' is not {what}",
                                      {"value": value, "what": what})
        return value
    return PlainValidator(check)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Entry(_Strict):
    """One unit of the catalogue."""

    name: Annotated[str, _pattern(_NAME_RE, "a logical name (lower case, digits, '-')")]
    unit: Annotated[str, _pattern(_UNIT_RE, "a systemd unit name like nginx.service")]
    description: Annotated[str, Field(strict=True, min_length=1, max_length=120)]
    licence: Annotated[tuple[str, ...], PlainValidator(_parse_licence)]
    roles: Annotated[list[Role], Field(min_length=1)]
    modes: Annotated[list[WorkingMode], Field(min_length=1)] = list(WorkingMode)
    condition: Condition | None = None
    order: Annotated[int, Field(strict=True, ge=0, le=999)]
    timeout: Annotated[int, Field(strict=True, ge=1, le=900)] = 90  # seconds for one start/stop job
    refresh: RefreshHow = RefreshHow.RESTART

    @property
    def base(self) -> bool:
        return not self.licence


class Catalogue(_Strict):
    catalogue: Annotated[str, Field(strict=True, min_length=1, max_length=40)]
    units: Annotated[list[Entry], Field(min_length=1)]

    def in_start_order(self) -> list[Entry]:
        return sorted(self.units, key=lambda e: (e.order, e.name))


_MESSAGES = {
    "missing": "required",
    "extra_forbidden": "unknown key",
    "int_type": "must be a whole number",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "model_type": "must be a mapping (key: value)",
    "too_short": "must not be empty",
    "string_too_short": "must not be empty",
    "string_too_long": "is too long (at most {max_length} characters)",
    "enum": "{input!r} is not allowed (allowed: {expected})",
    "greater_than_equal": "{input} is below the minimum {ge}",
    "less_than_equal": "{input} is above the maximum {le}",
}


def _problem(err: Any) -> Problem:
    loc = tuple(err["loc"])
    kind = err["type"]
    template = _MESSAGES.get(kind)
    if kind == "extra_forbidden":
        owner = Entry if len(loc) == 3 and loc[0] == "units" else Catalogue
        return Problem(format_path(loc), f"unknown key (allowed: {', '.join(owner.model_fields)})")
    if template is None:
        return Problem(format_path(loc), str(err["msg"]))
    ctx = dict(err.get("ctx") or {})
    ctx["expected"] = str(ctx.get("expected", "")).replace("'", "")
    if kind == "enum" and isinstance(err.get("input"), bool):
        return Problem(format_path(loc), f"{str(err['input']).lower()} is not allowed (allowed: "
                       f"{ctx['expected']}; YAML reads unquoted off/on/yes/no as false/true: "
                       "quote them)")
    return Problem(format_path(loc), template.format(input=err.get("input"), **ctx))


def validate_catalogue(data: Any, source: str) -> Catalogue:
    """A parsed mapping → Catalogue, or InvalidInput listing every problem."""
    if not isinstance(data, dict):
        raise InvalidInput(f"service catalogue {source} is not a mapping",
                           problems=[Problem("", "expected the keys catalogue and units")])
    try:
        catalogue = Catalogue.model_validate(data)
    except ValidationError as exc:
        problems = sorted({_problem(e) for e in exc.errors()})
    else:
        problems = _cross_checks(catalogue)
    if problems:
        count = "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
        raise InvalidInput(f"service catalogue {source} has {count}", problems=problems,
                           remedy="Correct the catalogue; the agent does not start without one.")
    return catalogue


def _cross_checks(catalogue: Catalogue) -> list[Problem]:
    problems = []
    first: dict[tuple[str, str], int] = {}
    for index, entry in enumerate(catalogue.units):
        for key in ("name", "unit"):
            value = getattr(entry, key)
            if (key, value) in first:
                problems.append(Problem(f"units[{index}].{key}",
                                        f"'{value}' is already units[{first[key, value]}]"))
            first.setdefault((key, value), index)
        if entry.condition is Condition.MCS_CLIENT_CONFIGURED and (
            WorkingMode.PURE_CLOUD in entry.modes
        ):
            problems.append(Problem(f"units[{index}].modes", "the MCS client exists in "
                                    "standard mode only; list modes: [standard]"))
    return problems


def load_catalogue(spec: str) -> Catalogue:
    """``appliance`` or ``lab`` (shipped with the agent), or the path of a YAML file."""
    if spec in SHIPPED:
        source = f"catalogue-{spec}.yaml"
        text = resources.files("agent").joinpath("data", source).read_text()
    else:
        source = spec
        try:
            text = Path(spec).read_text()
        except OSError as exc:
            raise InvalidInput(
                f"cannot read service catalogue {spec}",
                problems=[Problem(spec, exc.strerror or str(exc))],
                remedy=f"Give --catalogue {' or '.join(SHIPPED)}, or a readable YAML file.",
            ) from None
    return validate_catalogue(parse_yaml(text, source), source)


# --- decisions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    """What the decisions depend on besides the document."""

    licence: LicenceView
    role: Role
    mcs_client_configured: bool
    mcs_client_stopped: bool = False  # the operator's STOP (voxnode mcs stop)


@dataclass(frozen=True)
class UnitDecision:
    entry: Entry
    wanted: bool
    reason: str  # operator sentence(s); several reasons are joined with "; "

    @property
    def unit(self) -> str:
        return self.entry.unit


def _roles_text(roles: list[Role]) -> str:
    names = [r.value for r in Role if r in roles]
    if len(names) == 1:
        return f"the {names[0]} only" if names[0] != "off" else "nodes whose services are off"
    return " and ".join([", ".join(names[:-1]), names[-1]]) + " nodes only"


def decide(catalogue: Catalogue, mode: WorkingMode, facts: Facts) -> list[UnitDecision]:
    """Pure: for every unit in start order, whether it runs on this node and why."""
    return [_decide(entry, mode, facts) for entry in catalogue.in_start_order()]


def _decide(entry: Entry, mode: WorkingMode, facts: Facts) -> UnitDecision:
    against: list[str] = []
    if facts.role not in entry.roles:
        against.append(f"runs on {_roles_text(entry.roles)}; this node is {facts.role.value}")
    if mode not in entry.modes:
        allowed = ", ".join(MODE_TITLES[m] for m in entry.modes)
        against.append(f"{allowed} mode only; the working mode is {MODE_TITLES[mode]}")
    if entry.condition is Condition.TURN_STUN_SERVER and not settings_for(mode).turn_stun_server:
        against.append(f"the co-resident TURN/STUN server is off in {MODE_TITLES[mode]} mode "
                       "(pure-cloud only)")
    if entry.condition is Condition.MCS_CLIENT_CONFIGURED and not facts.mcs_client_configured:
        against.append(f"the MCS client is not configured ({MCS_CLIENT_CONF} is missing: "
                       "upload the VPN certificate from MCS)")
    elif entry.condition is Condition.MCS_CLIENT_CONFIGURED and facts.mcs_client_stopped:
        against.append("stopped by the operator (`voxnode mcs start` starts it again)")
    missing = [m for m in entry.licence if not facts.licence.has(m)]
    if missing:
        needs = f"needs the licence module{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
        if facts.licence.active:
            held = ", ".join(sorted(facts.licence.modules)) or "none"
            against.append(f"{needs}; the active licence does not include it "
                           f"(licensed modules: {held})")
        else:
            against.append(f"{needs}; {facts.licence.reason}")
    if against:
        return UnitDecision(entry, False, "; ".join(against))
    why = "base service: runs without a licence" if entry.base else (
        f"licensed ({', '.join(entry.licence)})")
    if entry.condition is Condition.TURN_STUN_SERVER:
        why += f"; the co-resident TURN/STUN server is on in {MODE_TITLES[mode]} mode"
    elif entry.condition is Condition.MCS_CLIENT_CONFIGURED:
        why += "; the MCS client is configured"
    return UnitDecision(entry, True, why + f"; this node is {facts.role.value}")

