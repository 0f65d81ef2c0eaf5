"""lib/jbd gives the same results on the MicroPython unix port as on CPython."""

import subprocess
from pathlib import Path

from conftest import FRAMES, REPO, mpy_cross_bin, run_on_both

DUMP = REPO / "host_tests" / "corpus_dump.py"


def test_corpus_decodes_identically_on_micropython_and_cpython():
    # run_on_both compares the two value for value, including error classes and messages.
    lines = run_on_both(DUMP, FRAMES, heapsize="1M")
    assert len(lines) == 73


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
