"""Turning text or JSON into a validated ``DesiredState`` — the one boundary for input.

Every problem of a document is collected and reported at once as ``path: message``:
YAML syntax, unknown keys, bad values, then the rules that relate several fields.
"""

from __future__ import annotations

import ipaddress
import types
import typing
from collections.abc import Mapping
from typing import Any, Union

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from agent.errors import InvalidInput, Problem
from agent.state.migrations import migrate
from agent.state.model import DesiredState, WorkingMode
from ha.config import check_ha_rules
from ha.replication.config import check_replication_rules

MAX_DOCUMENT_CHARS = 1 << 20  # a real document is a few kilobytes
MAX_DEPTH = 32  # the model nests 6 levels deep


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one,
    anchors and aliases (nobody needs them in this document, and a few hundred bytes of
    nested aliases expand to billions of nodes), and nesting deeper than ``MAX_DEPTH``."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases (&name, *name) are not accepted in a voxnode "
                "document: write the value out", event.start_mark)
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            kind = "a list" if isinstance(key_node, yaml.SequenceNode) else "a mapping"
            raise yaml.constructor.ConstructorError(
                None, None, f"a key is {kind}; keys are plain names", key_node.start_mark
            )
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}'", key_node.start_mark
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, source: str = "<input>") -> Any:
    """Parse YAML text; a syntax error becomes one problem located by line and column."""
    if len(text) > MAX_DOCUMENT_CHARS:
        raise InvalidInput(
            f"{source} is too large",
            problems=[Problem(source, f"{len(text)} characters; a document has at most "
                                      f"{MAX_DOCUMENT_CHARS} (1 MiB)")])
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        what = exc.problem or str(exc)
        if exc.context and exc.problem:
            what = f"{exc.context}, {exc.problem}"
        raise InvalidInput(
            f"{source} is not valid YAML", problems=[Problem(where, what)]
        ) from None
    except yaml.YAMLError as exc:
        raise InvalidInput(
            f"{source} is not valid YAML", problems=[Problem(source, str(exc))]
        ) from None


def load_document(text: str, source: str = "<input>") -> DesiredState:
    """YAML (or JSON, a subset of YAML) text → validated state."""
    return validate_document(parse_yaml(text, source))


def validate_document(data: Any) -> DesiredState:
    """A plain mapping → migrated, validated ``DesiredState``, or InvalidInput with all problems."""
    if not isinstance(data, Mapping):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise InvalidInput(
            "the document is not a mapping",
            problems=[Problem("", f"the document is {kind}; expected a mapping of sections")],
        )
    data = migrate(data)
    try:
        state = DesiredState.model_validate(data)
    except ValidationError as exc:
        problems = sorted({_translate(err) for err in exc.errors()})
        raise InvalidInput(
            f"the document has {_count(problems)}",
            problems=problems,
            remedy="Correct the listed problems and try again; nothing was changed. The rules "
            "that relate several fields (subnets, gateway, mode) are checked once these pass.",
        ) from None
    problems = check_rules(state)
    if problems:
        raise InvalidInput(f"the document has {_count(problems)}", problems=problems)
    return state


def _count(problems: list[Problem]) -> str:
    return "1 problem" if len(problems) == 1 else f"{len(problems)} problems"


# --- pydantic errors → operator sentences -------------------------------------------------


def format_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types inside Optional/Union/Annotated."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """Walk the model classes along ``loc`` to find the model that owns the last key."""
    current: Any = DesiredState
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
            continue
        # a container: dict[str, X] or list[X]; skip the key/index, descend into X
        candidates = [t for t in _unwrap(current) if typing.get_origin(t) in (dict, list)]
        if not candidates:
            return None
        current = typing.get_args(candidates[0])[-1]
        for inner in _unwrap(current):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                current = inner
    while not (isinstance(current, type) and issubclass(current, BaseModel)):
        inner = [
            t for t in _unwrap(current) if isinstance(t, type) and issubclass(t, BaseModel)
        ]
        if not inner:
            return None
        current = inner[0]
    return current


_SIMPLE_MESSAGES = {
    "missing": "required",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "list_type": "must be a list",
    "dict_type": "must be a mapping (key: value)",
    "model_type": "must be a mapping (key: value)",
    "model_attributes_type": "must be a mapping (key: value)",
    "string_type": "must be a string",
}


def _translate(err: ErrorDetails) -> Problem:
    loc = tuple(err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if loc and loc[-1] == "[key]":
        # the key of a mapping is itself invalid (e.g. an interface name)
        return Problem(format_path(loc[:-1]), f"bad key: {err['msg']}")
    path = format_path(loc)
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1])
        allowed = ", ".join(owner.model_fields) if owner else ""
        return Problem(path, f"unknown key (allowed: {allowed})" if allowed else "unknown key")
    if kind in _SIMPLE_MESSAGES:
        return Problem(path, _SIMPLE_MESSAGES[kind])
    if kind == "enum" and loc == ("ha", "profile"):
        return Problem(path, f"'{err['input']}' is not a profile (allowed: standard, fast)")
    if kind == "enum" and loc == ("mode",):
        allowed = ", ".join(m.value for m in WorkingMode)
        given = err["input"]
        if isinstance(given, bool):
            return Problem(
                path,
                f"{str(given).lower()} is not a working mode (allowed: {allowed}; YAML reads "
                "unquoted on/off/yes/no as true/false)",
            )
        return Problem(path, f"'{given}' is not a working mode (allowed: {allowed})")
    if kind == "enum":
        allowed = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        given = err["input"]
        shown = f"'{given[:100]}'" if isinstance(given, str) else f"a {type(given).__name__}"
        return Problem(path, f"{shown} is not allowed (allowed: {allowed})")
    if kind in ("greater_than_equal", "less_than_equal"):
        return Problem(path, f"{err['input']} is out of range ({_range_text(path)})")
    if kind == "too_short" and path == "network.interfaces":
        return Problem(path, "at least one interface is required")
    if kind == "too_long":
        return Problem(path, f"at most {ctx.get('max_length')} entries")
    if kind == "literal_error":
        return Problem(path, f"must be {ctx.get('expected')}")
    return Problem(path, str(err["msg"]))


_RANGES = {
    ".mtu": "576-9216",
    ".bandwidth_kb": "1-10000000 KiB/s",
    ".max_lag_s": "0.1-3600 seconds",
    ".database.port": "1-65535",
    ".heartbeat_port": "1-65535",
    ".arbiter.port": "1-65535",
}


def _range_text(path: str) -> str:
    for suffix, text in _RANGES.items():
        if path.endswith(suffix):
            return text
    return "see the documentation"


# --- rules across fields ------------------------------------------------------------------


def check_rules(state: DesiredState) -> list[Problem]:
    """Problems that only show when several fields are looked at together."""
    net = state.network
    problems: list[Problem] = []

    if state.mode is WorkingMode.PURE_CLOUD:
        if net.domain is None:
            problems.append(
                Problem(
                    "network.domain",
                    "required in pure-cloud mode (the public DNS name that resolves to "
                    "network.public_ip)",
                )
            )
        if net.public_ip is None:
            problems.append(
                Problem(
                    "network.public_ip",
                    "required in pure-cloud mode (the static public address, NAT 1:1)",
                )
            )

    seen_ip: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, str] = {}
    subnet_owner: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, str] = {}
    for ifname, iface in net.interfaces.items():
        for i, addr in enumerate(iface.addresses):
            path = f"network.interfaces.{ifname}.addresses[{i}]"
            if addr.ip in seen_ip:
                problems.append(Problem(path, f"{addr.ip} is already used by {seen_ip[addr.ip]}"))
                continue
            seen_ip[addr.ip] = path
            owner = subnet_owner.setdefault(addr.network, ifname)
            if owner != ifname:
                problems.append(
                    Problem(
                        path,
                        f"subnet {addr.network} is also on interface {owner}; a subnet "
                        "may be on one interface only",
                    )
                )
    if not any(i.addresses or i.dhcp for i in net.interfaces.values()):
        problems.append(
            Problem(
                "network.interfaces",
                "no interface has an address or DHCP; the node would be unreachable",
            )
        )

    if net.gateway is not None:
        on_link = [
            (ifname, addr.network)
            for ifname, iface in net.interfaces.items()
            for addr in iface.addresses
            if net.gateway in addr.network
        ]
        static = [
            f"{addr.network} on {ifname}"
            for ifname, iface in net.interfaces.items()
            for addr in iface.addresses
        ]
        if net.gateway in seen_ip:
            problems.append(
                Problem(
                    "network.gateway",
                    f"{net.gateway} is this node's own address ({seen_ip[net.gateway]})",
                )
            )
        elif not static:
            problems.append(
                Problem(
                    "network.gateway",
                    "set, but no interface has a static address; with DHCP the gateway "
                    "comes from the DHCP server (remove it)",
                )
            )
        elif not on_link:
            problems.append(
                Problem(
                    "network.gateway",
                    f"{net.gateway} is outside every interface subnet ({', '.join(static)})",
                )
            )
    problems.extend(check_ha_rules(state))
    problems.extend(check_replication_rules(state))
    return problems


def gateway_interface(state: DesiredState) -> str | None:
    """The interface whose static subnet holds the gateway (rules guarantee at most one)."""
    gw = state.network.gateway
    if gw is None:
        return None
    for ifname, iface in state.network.interfaces.items():
        if any(gw in addr.network for addr in iface.addresses):
            return ifname
    return None
