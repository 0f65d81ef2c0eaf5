"""lib/jbd gives the same results on the MicroPython unix port as on CPython."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import FRAMES, REPO, micropython_bin, mpy_cross_bin

DUMP = REPO / "host_tests" / "corpus_dump.py"


def run_dump(argv: list[str], env: dict) -> list[dict]:
    out = subprocess.run(
        argv + [str(DUMP), str(FRAMES)], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_corpus_decodes_identically_on_micropython_and_cpython():
    lib = str(REPO / "lib")
    cpy = run_dump([sys.executable], {**os.environ, "PYTHONPATH": lib})
    mpy = run_dump(
        [micropython_bin(), "-X", "heapsize=1M"], {**os.environ, "MICROPYPATH": lib}
    )
    assert len(cpy) == 73
    assert mpy == cpy  # value for value, including error classes and messages


def device_files() -> list[Path]:
    files = [REPO / "boot.py", REPO / "main.py"]
    for folder in ("lib", "firmware"):
        files += sorted((REPO / folder).rglob("*.py"))
    return files


def test_every_device_file_compiles_with_mpy_cross(tmp_path):
    files = device_files()
    assert len(files) >= 5
    failures = []
    for f in files:
        out = subprocess.run(
            [mpy_cross_bin(), "-o", str(tmp_path / "out.mpy"), str(f)],
            capture_output=True, text=True, timeout=30,
        )
        if out.returncode:
            failures.append(f"{f.relative_to(REPO)}: {out.stderr.strip()}")
    assert not failures, "\n".join(failures)
