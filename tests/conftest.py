"""For every tier but unit (the directories under tests/): under ``CI=true`` a skipped test
fails with its reason (tests/preconditions.py), and the run ends with how many tests passed,
failed and were skipped in each tier."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import pytest

from tests.preconditions import in_ci, is_not_applicable

TESTS = Path(__file__).resolve().parent
SKIP_PREFIX = "Skipped: "
CI_REMEDY = ("under CI=true a missing precondition fails instead of skipping (run CI as "
             "root; `make test` installs the packages every tier needs)")


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return f"{reason.removeprefix(SKIP_PREFIX)}: {CI_REMEDY}"


# the tiers whose preconditions (root, host tools, the lab, image tooling) CI must meet; the
# unit tier needs none of them, so a skip there is a test's own decision and stays a skip
UNCONDITIONAL_TIERS = frozenset({"unit"})


def _tier(nodeid: str) -> str:
    parts = nodeid.split("::", 1)[0].split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "tests" else parts[0]


def _must_run(nodeid: str) -> bool:
    return in_ci() and _tier(nodeid) not in UNCONDITIONAL_TIERS


def _fail_instead_of_skip(report: pytest.TestReport, error: BaseException | None) -> None:
    if (report.skipped and not hasattr(report, "wasxfail") and _must_run(report.nodeid)
            and not is_not_applicable(error)):
        report.longrepr = _reason(report)
        report.outcome = "failed"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
        item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _fail_instead_of_skip(report, call.excinfo.value if call.excinfo else None)
    return report


# --- what ran, per tier -----------------------------------------------------------------------

RANK = ("passed", "skipped", "failed")


def tiers() -> list[str]:
    """The directories under tests/ that hold tests: unit, netns, node, image, licence, …"""
    return sorted(d.name for d in TESTS.iterdir() if d.is_dir() and any(d.rglob("test_*.py")))


class TierSummary:
    """Counts each test once (failed beats skipped beats passed over its setup, call and
    teardown) under the tier it lives in; printed at the end of the run.

    A module skipped while it is collected (``allow_module_level``, ``importorskip``) has
    no tests to fail: under CI=true it counts as one failure of its tier, is listed with
    its reason, and the run's exit status is 1 (a collection error would stop the other
    tiers from running)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.outcomes: dict[str, str] = {}
        self.skipped_modules: list[tuple[str, str]] = []

    def tier_of(self, nodeid: str) -> str:
        path = (self.config.rootpath / nodeid.split("::", 1)[0]).resolve()
        if not path.is_relative_to(TESTS):
            return "other"
        parts = path.relative_to(TESTS).parts
        return parts[0] if len(parts) > 1 else "tests"

    def selected(self) -> list[str]:
        """The tiers the run's arguments cover (every tier for ``pytest tests``)."""
        chosen = set()
        for arg in self.config.args:
            target = (self.config.invocation_params.dir / arg.split("::", 1)[0]).resolve()
            chosen.update(t for t in tiers() if (TESTS / t).is_relative_to(target)
                          or target.is_relative_to(TESTS / t))
        return sorted(chosen)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        outcome = "skipped" if report.skipped else report.outcome
        previous = self.outcomes.get(report.nodeid, "passed")
        self.outcomes[report.nodeid] = max(previous, outcome, key=RANK.index)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped and _must_run(report.nodeid):
            self.skipped_modules.append((report.nodeid, _reason(report)))
            self.outcomes[report.nodeid] = "failed"
        elif report.skipped:
            self.outcomes[report.nodeid] = "skipped"

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.skipped_modules and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        for nodeid, reason in self.skipped_modules:
            terminalreporter.write_line(f"FAILED {nodeid} (skipped at collection): {reason}",
                                        red=True)
        counts = {t: dict.fromkeys(RANK, 0) for t in self.selected()}
        for nodeid, outcome in self.outcomes.items():
            counts.setdefault(self.tier_of(nodeid), dict.fromkeys(RANK, 0))[outcome] += 1
        if not counts:
            return
        terminalreporter.write_sep("-", "tests per tier" + (
            " (CI=true: a skipped precondition is a failure)" if in_ci() else ""))
        width = max(len(t) for t in counts)
        for tier, c in sorted(counts.items()):
            terminalreporter.write_line(f"{tier:<{width}}  {c['passed']:5d} passed  "
                                        f"{c['failed']:5d} failed  {c['skipped']:5d} skipped")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(TierSummary(config), "voxnode-tier-summary")
