"""testinfra suite for an installed node (see test_appliance.py for the targets).

Registers the ``lab://NODE`` backend and skips the suite unless ``--hosts`` names its
targets: without it testinfra would check the machine pytest runs on. That skip is not a
missing precondition, so it stays a skip under ``CI=true`` (``make test`` runs these checks
against the lab nodes through tests/node/test_infra_lab.py).
"""

from __future__ import annotations

import pytest

from tests.infra.labbackend import register
from tests.preconditions import not_applicable

register()


@pytest.fixture(autouse=True)
def _needs_hosts(request: pytest.FixtureRequest) -> None:
    if request.config.getoption("hosts", None) is None:
        not_applicable("give the node to check: --hosts=lab://node1 or --hosts=ssh://root@HOST")
