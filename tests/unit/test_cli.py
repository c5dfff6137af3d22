"""The CLI's contract without an agent: usage errors, unreachable agent, local validation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agent.cli.main import main

DATA = Path(__file__).parent / "data"


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_help_lists_no_lab_command(capsys: pytest.CaptureFixture[str]) -> None:
    """The development lab is not part of a node: it is `voxnode-lab`, never `voxnode lab`."""
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    commands = out.split("positional arguments:", 1)[1].split("options:", 1)[0]
    listed = set(re.findall(r"^    (\S+)", commands, flags=re.M))
    assert {"status", "config", "ha", "license"} <= listed, listed
    assert "lab" not in listed, commands
    with pytest.raises(SystemExit) as lab:
        main(["lab", "status"])
    assert lab.value.code == 2
    assert "invalid choice: 'lab'" in capsys.readouterr().err


def test_bad_option_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["mode", "set", "cloudy"])
    assert info.value.code == 2


def test_unreachable_agent_names_the_socket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = tmp_path / "none.sock"
    assert main(["--socket", str(sock), "status"]) == 5
    err = capsys.readouterr().err
    assert f"cannot reach the agent at {sock}: No such file or directory" in err
    assert "Traceback" not in err


def test_unreachable_agent_json(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXNODE_SOCKET", str(tmp_path / "env.sock"))
    assert main(["--json", "status"]) == 5
    data = json.loads(capsys.readouterr().out)
    assert data["error"]["code"] == "agent_unreachable"
    assert str(tmp_path / "env.sock") in data["error"]["message"]


def test_validate_good_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "validate", str(DATA / "full.yaml")]) == 0
    assert "valid" in capsys.readouterr().out


def test_validate_bad_file_lists_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema_version: 1\nnetwork:\n  hostname: pbx1\n  interfaces: {}\n  x: 1\n")
    assert main(["config", "validate", str(bad)]) == 3
    err = capsys.readouterr().err
    assert "network.x: unknown key" in err
    assert "network.interfaces: at least one interface is required" in err


def test_validate_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["config", "validate", str(missing)]) == 3
    assert f"{missing}: No such file or directory" in capsys.readouterr().err


def test_network_set_needs_key_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--socket", str(tmp_path / "s"), "network", "set", "hostname"]) == 3
    assert "hostname: expected KEY=VALUE" in capsys.readouterr().err


def test_json_flag_is_accepted_after_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--socket", str(tmp_path / "s"), "status", "--json"]) == 5
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "agent_unreachable"
    assert main(["config", "validate", str(DATA / "full.yaml"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["valid"] is True
