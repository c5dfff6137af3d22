"""What the CLI prints of text that came from elsewhere (a comment, a server's error, a
hostname): shown as it is, never read as markup, never a traceback."""

from __future__ import annotations

import pytest

from agent.cli import output
from agent.errors import InvalidInput, Problem

HOSTILE = "[/] [bold red]X[/] [link=http://x]y \\[/"


def test_table_cells_are_literal(capsys: pytest.CaptureFixture[str]) -> None:
    output.table(["revision", "comment"], [[7, HOSTILE]])
    output.kv_table([("comment", HOSTILE), ("licence", output.styled("[bold]ACTIVE[/]"))])
    shown = capsys.readouterr().out
    assert shown.count("[/] [bold red]X[/] [link=http://x]y") == 2
    assert "ACTIVE" in shown and "[bold]" not in shown  # deliberate markup still styles


def test_errors_and_plans_show_foreign_text_literally(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    output.error(InvalidInput(f"bad {HOSTILE}", problems=[Problem("x", HOSTILE)],
                              remedy=HOSTILE))
    text = capsys.readouterr().err
    assert text.count("[/] [bold red]X[/]") == 3
    output.outcome({
        "plan": {"fields": [], "base_revision": 1, "subsystems": [{
            "subsystem": "network", "steps": [{"text": HOSTILE}],
            "warnings": [{"text": HOSTILE}], "acknowledge": [{"text": HOSTILE}]}]},
        "dry_run": False, "changes": {"network": [
            {"action": "write", "target": HOSTILE, "detail": HOSTILE}]},
        "revision": {"revision": 2}, "confirm_deadline": None,
    })
    shown = capsys.readouterr().out
    assert shown.count("[/] [bold red]X[/]") == 5


def test_a_print_of_broken_markup_falls_back_to_the_text(capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    output.out.print(f"[bold]comment:[/] {HOSTILE}")
    assert "[/] [bold red]X" in capsys.readouterr().out
