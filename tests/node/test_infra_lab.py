"""The installed-node testinfra suite (tests/infra/test_appliance.py) against both lab
nodes, so `make test` runs it: every check of that module, once per node, through the
``lab://`` backend (the same as ``pytest tests/infra --hosts=lab://node1,lab://node2``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import testinfra

from tests.infra import test_appliance as appliance
from tests.infra.labbackend import register

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("lab_up")]

register()

CHECKS: dict[str, Callable[[Any], None]] = {
    name.removeprefix("test_"): getattr(appliance, name)
    for name in sorted(dir(appliance)) if name.startswith("test_")
}


def test_the_suite_has_its_checks() -> None:
    assert len(CHECKS) >= 9


@pytest.mark.parametrize("node", ["node1", "node2"])
@pytest.mark.parametrize("check", sorted(CHECKS))
def test_node_passes_appliance_check(node: str, check: str) -> None:
    CHECKS[check](testinfra.get_host(f"lab://{node}"))
