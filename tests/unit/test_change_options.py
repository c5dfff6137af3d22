"""The options of a change are one model: the API parses it, the CLI's flags are generated
from it, the engine takes it; bad values are refused as ``path: what is wrong``."""

from __future__ import annotations

import argparse
import inspect
import json
import typing
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import PlainValidator

from agent.api.http import error_middleware, json_response, read_change
from agent.change_options import ChangeOptions, Flag
from agent.cli.change_flags import add_change_flags, change_options, flag_name
from agent.cli.main import build_parser, main
from agent.engine import Engine
from agent.errors import InvalidInput
from tests.unit.test_api import DOC, make_client

FIELDS = set(ChangeOptions.model_fields)
NOT_VALID = "the request options are not valid"
OUT_OF_RANGE = "the confirmation window is out of range"

# (case, options on the wire, message, problems as `path: what is wrong`)
BAD_OPTIONS: list[tuple[str, dict[str, Any], str, list[str]]] = [
    ("dry_run a string", {"dry_run": "yes"}, NOT_VALID, ["dry_run: must be true or false"]),
    ("dry_run null", {"dry_run": None}, NOT_VALID, ["dry_run: must be true or false"]),
    ("yes a number", {"yes": 1}, NOT_VALID, ["yes: must be true or false"]),
    ("window a string", {"confirm_within": "60"}, NOT_VALID,
     ["confirm_within: must be a number of seconds"]),
    ("window a bool", {"confirm_within": True}, NOT_VALID,
     ["confirm_within: must be a number of seconds"]),
    ("window zero", {"confirm_within": 0}, OUT_OF_RANGE,
     ["confirm_within: must be 1-3600 seconds"]),
    ("window under a second", {"confirm_within": 0.001}, OUT_OF_RANGE,
     ["confirm_within: must be 1-3600 seconds"]),
    ("window denormal", {"confirm_within": 1e-300}, OUT_OF_RANGE,
     ["confirm_within: must be 1-3600 seconds"]),
    ("window negative", {"confirm_within": -5}, OUT_OF_RANGE,
     ["confirm_within: must be 1-3600 seconds"]),
    ("window over an hour", {"confirm_within": 3600.5}, OUT_OF_RANGE,
     ["confirm_within: must be 1-3600 seconds"]),
    ("comment a number", {"comment": 5}, NOT_VALID, ["comment: must be a string"]),
    ("comment null", {"comment": None}, NOT_VALID, ["comment: must be a string"]),
    ("comment a megabyte", {"comment": "x" * 1_000_000}, NOT_VALID,
     ["comment: at most 500 characters, got 1000000"]),
    ("all at once", {"dry_run": "x", "yes": None, "confirm_within": 0, "comment": []},
     NOT_VALID, ["dry_run: must be true or false", "yes: must be true or false",
                 "confirm_within: must be 1-3600 seconds", "comment: must be a string"]),
]

# each endpoint that changes the desired state, with a body valid but for the options
CHANGES: list[tuple[str, dict[str, Any]]] = [
    ("/v1/config/apply", {"document": DOC}),
    ("/v1/config/rollback", {"revision": 1}),
    ("/v1/network", {"set": {"hostname": "pbx2"}}),
    ("/v1/mode", {"mode": "standard"}),
]

CLI_CHANGES = [["config", "apply", "x.yaml"], ["config", "rollback", "1"],
               ["network", "set", "hostname=pbx2"], ["mode", "set", "standard"]]


def _problem_lines(exc: InvalidInput) -> list[str]:
    return [str(p) for p in exc.problems]


# --- the model ------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "data", "message", "problems"), BAD_OPTIONS,
                         ids=[c[0] for c in BAD_OPTIONS])
def test_bad_options_are_refused_with_every_problem(
        case: str, data: dict[str, Any], message: str, problems: list[str]) -> None:
    with pytest.raises(InvalidInput) as info:
        ChangeOptions.parse(data)
    assert (info.value.message, _problem_lines(info.value)) == (message, problems)


def test_good_options_and_their_wire_form() -> None:
    assert ChangeOptions.parse({}) == ChangeOptions()
    options = ChangeOptions.parse({"dry_run": True, "confirm_within": 60, "comment": "c"})
    assert options.confirm_within == 60.0 and isinstance(options.confirm_within, float)
    assert ChangeOptions.parse({"confirm_within": None}).confirm_within is None
    assert ChangeOptions.parse({"confirm_within": 3600}).confirm_within == 3600
    assert ChangeOptions.parse({"confirm_within": 1}).confirm_within == 1.0
    assert options.to_wire() == {"dry_run": True, "yes": False, "confirm_within": 60.0,
                                 "comment": "c"}
    assert ChangeOptions().to_wire() == {"dry_run": False, "yes": False, "comment": ""}
    assert ChangeOptions.parse(options.to_wire()) == options
    with pytest.raises(ValueError, match="frozen"):
        options.dry_run = False  # type: ignore[misc]


# --- one definition: engine, API, CLI -------------------------------------------------------


def test_the_engine_takes_the_model_and_no_option_of_its_own() -> None:
    hints = typing.get_type_hints(Engine.apply)
    assert hints["options"] is ChangeOptions
    parameters = set(inspect.signature(Engine.apply).parameters)
    assert parameters == {"self", "new", "source", "options"}


def _subcommand(parser: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    for name in names:
        [choices] = [a.choices for a in parser._actions
                     if isinstance(a, argparse._SubParsersAction)]
        parser = choices[name]
    return parser


@pytest.mark.parametrize("argv", CLI_CHANGES, ids=[" ".join(a[:2]) for a in CLI_CHANGES])
def test_every_change_command_has_the_models_flags(argv: list[str]) -> None:
    parser = build_parser()
    command = _subcommand(parser, *argv[:2])
    flags = {a.dest: a for a in command._actions if a.dest in FIELDS}
    assert set(flags) == FIELDS
    for name, action in flags.items():
        [flag] = [m for m in ChangeOptions.model_fields[name].metadata if isinstance(m, Flag)]
        assert action.option_strings == [flag_name(name)] and action.help == flag.help
    args = parser.parse_args([*argv, "--dry-run", "--yes", "--confirm-within", "30",
                              "--comment", "why"])
    options = change_options(args)
    assert type(options) is ChangeOptions
    assert options == ChangeOptions(dry_run=True, yes=True, confirm_within=30, comment="why")
    assert change_options(parser.parse_args(argv)) == ChangeOptions()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    client = await make_client(tmp_path)
    assert (await client.post("/v1/config/apply", json={"document": DOC})).status == 200
    yield client
    await client.close()


@pytest.mark.parametrize(("path", "body"), CHANGES, ids=[c[0] for c in CHANGES])
async def test_every_change_endpoint_accepts_the_models_fields(
        api: TestClient[Any, Any], path: str, body: dict[str, Any]) -> None:
    resp = await api.post(path, json={**body, "zzz": 1})
    assert resp.status == 422
    [problem] = (await resp.json())["error"]["problems"]
    allowed = problem["message"].removeprefix("unknown field (allowed: ").removesuffix(")")
    assert set(allowed.split(", ")) >= FIELDS
    resp = await api.post(path, json={**body, **ChangeOptions(dry_run=True).to_wire()})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["dry_run"] is True


@pytest.mark.parametrize(("path", "body"), CHANGES, ids=[c[0] for c in CHANGES])
@pytest.mark.parametrize(("case", "data", "message", "problems"), BAD_OPTIONS[::3],
                         ids=[c[0] for c in BAD_OPTIONS[::3]])
async def test_bad_options_are_422_on_every_change_endpoint(
        api: TestClient[Any, Any], path: str, body: dict[str, Any],
        case: str, data: dict[str, Any], message: str, problems: list[str]) -> None:
    resp = await api.post(path, json={**body, **data})
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_input" and error["message"] == message
    assert [f"{p['path']}: {p['message']}" for p in error["problems"]] == problems


# --- a field added to the model is an option everywhere --------------------------------------


def _true_or_false(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


class WithForce(ChangeOptions):
    force: Annotated[bool, PlainValidator(_true_or_false), Flag("do it anyway")] = False


def test_a_new_field_is_a_cli_flag() -> None:
    parser = argparse.ArgumentParser()
    add_change_flags(parser, WithForce)
    assert "--force" in parser.format_help() and "do it anyway" in parser.format_help()
    options = change_options(parser.parse_args(["--force", "--dry-run"]), WithForce)
    assert isinstance(options, WithForce) and options.force and options.dry_run
    assert options.to_wire()["force"] is True


async def test_a_new_field_is_an_api_key() -> None:
    async def handler(request: web.Request) -> web.Response:
        data, options = await read_change(request, {"mode"}, WithForce)
        return json_response({"data": data, "options": options.to_wire()})

    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/change", handler)
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/change", json={"mode": "x", "force": True})
        assert (await resp.json())["options"]["force"] is True
        resp = await client.post("/change", json={"forc": True})
        [problem] = (await resp.json())["error"]["problems"]
        assert problem["message"] == ("unknown field (allowed: comment, confirm_within, "
                                      "dry_run, force, mode, yes)")


# --- bad flags: not a number is a usage error, out of range is invalid input ------------------

@pytest.mark.parametrize("argv", CLI_CHANGES, ids=[" ".join(a[:2]) for a in CLI_CHANGES])
def test_a_confirm_window_that_is_not_a_number_is_a_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--socket", str(tmp_path / "none.sock"), *argv, "--confirm-within", "abc"])
    assert info.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == (f"voxnode {' '.join(argv[:2])}: error: argument --confirm-within: "
                    "must be a number of seconds")


# (case, --confirm-within value)
OUT_OF_RANGE_FLAGS = [("zero", "0"), ("negative", "-1"), ("over an hour", "3601"),
                      ("not a number at all", "nan")]


@pytest.mark.parametrize("argv", CLI_CHANGES, ids=[" ".join(a[:2]) for a in CLI_CHANGES])
@pytest.mark.parametrize(("case", "value"), OUT_OF_RANGE_FLAGS,
                         ids=[c[0] for c in OUT_OF_RANGE_FLAGS])
def test_a_confirm_window_out_of_range_is_invalid_input(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        argv: list[str], case: str, value: str) -> None:
    """Exit 3 with the problem listed, as when the agent refused it (nothing is sent:
    the agent need not even run)."""
    document = tmp_path / "x.yaml"
    document.write_text("schema_version: 1\n")
    argv = [str(document) if a == "x.yaml" else a for a in argv]
    code = main(["--socket", str(tmp_path / "none.sock"), *argv, "--confirm-within", value])
    assert code == 3
    err = capsys.readouterr().err
    assert "confirm_within: must be 1-3600 seconds" in err and "Traceback" not in err, err


def test_good_flags_go_on_to_the_agent_as_the_models_wire_form(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["mode", "set", "standard", "--confirm-within", "5"])
    body = change_options(args).to_wire()
    assert json.loads(json.dumps(body)) == {"dry_run": False, "yes": False,
                                            "confirm_within": 5.0, "comment": ""}
    assert main(["--socket", str(tmp_path / "none.sock"), "mode", "set", "standard",
                 "--confirm-within", "5"]) == 5
    assert "cannot reach the agent" in capsys.readouterr().err
