"""Access to device-side modules that the host tools share with the firmware."""

from __future__ import annotations

import sys

from jbdgw import REPO


def firmware_config():
    """firmware/config.py: the one config rule set, used on the board and by the host."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from firmware import config

    return config
