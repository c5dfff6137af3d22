"""``python -m lab``: the same as ``voxnode-lab`` (it runs without the .venv too)."""

import sys

from lab.cli import main

sys.exit(main())
