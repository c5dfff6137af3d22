"""tests/conftest.py's hooks, run by a real pytest on a small tree of tiers in tmp_path:
under CI=true a skip for a missing precondition (``pytest.skip`` in a test or a fixture, a
``skipif`` mark, a module skipped at collection) fails with its reason, a
``not_applicable`` skip stays a skip, and the run ends with passed/failed/skipped per tier.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

TIERS = {
    "unit/test_pure.py": """
import pytest
def test_one(): pass
def test_two(): pass
def test_skips_by_itself(): pytest.skip("the unit tier has no preconditions: its skips stay")
""",
    "netns/test_root.py": """
import pytest

@pytest.fixture(scope="session")
def namespace():
    pytest.skip("needs root (network namespaces)")

def test_in_a_namespace(namespace): pass

@pytest.mark.skipif(True, reason="needs nftables (nft)")
def test_with_nft(): pass

def test_pure(): pass
""",
    "image/test_tools.py": """
import pytest
pytest.skip("host tools missing: xorriso (run `make image-apt`)", allow_module_level=True)
def test_never(): pass
""",
    "infra/test_hosts.py": """
from tests.preconditions import not_applicable
def test_a_host(): not_applicable("give the node to check: --hosts=lab://node1")
""",
    "node/test_fails.py": """
import pytest
def test_a_failure(): assert False
def test_skip_in_the_body(): pytest.skip("openvpn is not installed on the host")
""",
}


def run_tree(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    tests = tmp_path / "tests"
    tests.mkdir(exist_ok=True)
    for name in ("__init__.py", "conftest.py", "preconditions.py"):
        shutil.copy2(TESTS / name, tests / name)
    for rel, text in TIERS.items():
        path = tests / rel
        path.parent.mkdir(exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(text)
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -ra\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTHONPATH")}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False, env=env)


def tier_lines(output: str) -> dict[str, tuple[int, int, int]]:
    found = re.findall(r"^(\w+)\s+(\d+) passed\s+(\d+) failed\s+(\d+) skipped$", output, re.M)
    return {t: (int(p), int(f), int(s)) for t, p, f, s in found}


def test_without_ci_missing_preconditions_skip(tmp_path: Path) -> None:
    done = run_tree(tmp_path, None)
    assert done.returncode == 1, done.stdout + done.stderr  # node's test_a_failure
    assert "tests per tier\n" not in done.stdout
    assert re.search(r"-+ tests per tier -+\n", done.stdout), done.stdout
    assert tier_lines(done.stdout) == {"unit": (2, 0, 1), "netns": (1, 0, 2),
                                       "image": (0, 0, 1), "infra": (0, 0, 1),
                                       "node": (0, 1, 1)}
    assert "SKIPPED [1] tests/netns/test_root.py" in done.stdout


@pytest.mark.parametrize("ci", ["true", "TRUE", "1"])
def test_under_ci_a_missing_precondition_fails_with_its_reason(tmp_path: Path,
                                                                ci: str) -> None:
    done = run_tree(tmp_path, ci)
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "tests per tier (CI=true: a skipped precondition is a failure)" in out
    assert tier_lines(out) == {"unit": (2, 0, 1), "netns": (1, 2, 0), "image": (0, 1, 0),
                               "infra": (0, 0, 1), "node": (0, 2, 0)}
    remedy = "under CI=true a missing precondition fails instead of skipping"
    for reason in ("needs root (network namespaces)", "needs nftables (nft)",
                   "host tools missing: xorriso (run `make image-apt`)",
                   "openvpn is not installed on the host"):
        assert f"{reason}: {remedy}" in out, reason
    assert "FAILED tests/image/test_tools.py (skipped at collection): host tools" in out
    assert ("SKIPPED [1] tests/infra/test_hosts.py:3: NotApplicable: give the node to check: "
            "--hosts=lab://node1") in out
    assert "Traceback" not in out


def test_ci_false_is_not_ci(tmp_path: Path) -> None:
    done = run_tree(tmp_path, "false")
    assert tier_lines(done.stdout)["netns"] == (1, 0, 2), done.stdout
