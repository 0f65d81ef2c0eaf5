"""The flash backlog (firmware/backlog.py) on MicroPython, compared with CPython."""

import json
import os
import subprocess
import sys

from conftest import REPO, micropython_bin


def run(interpreter: list[str], env_key: str, cwd) -> dict:
    extra = ":.frozen" if env_key == "MICROPYPATH" else ":" + str(REPO / "host_tests" / "shims")
    env = {**os.environ, env_key: str(REPO) + extra}
    out = subprocess.run(interpreter + [str(REPO / "host_tests" / "mp_backlog_check.py")],
                         capture_output=True, text=True, env=env, cwd=cwd, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def test_backlog_resumes_after_the_last_acknowledged_message(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "c").mkdir()
    mpy = run([micropython_bin()], "MICROPYPATH", tmp_path / "m")
    cpy = run([sys.executable], "PYTHONPATH", tmp_path / "c")
    assert mpy == cpy
    assert mpy["dropped"] == 0 and mpy["count"] == 3
    assert mpy["first_pass"] == [1, 2]
    assert mpy["resumed"] == [2, 3] and mpy["finished"]
    assert mpy["after_torn"] == [1, 2, 3, 4, 5]
    assert mpy["bad_offset"] == 0 and mpy["cleared"] == 0
