"""Host-side tools for the JBD BMS gateway (the `jbdgw` command)."""

from pathlib import Path

#: The repository root (tools/jbdgw/__init__.py -> ../..).
REPO = Path(__file__).resolve().parents[2]
#: MicroPython stand-ins for the ESP32-only modules, used by the simulation.
MPSIM = REPO / "tools" / "mpsim"
