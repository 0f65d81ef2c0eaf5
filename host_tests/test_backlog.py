"""The flash backlog (firmware/backlog.py) on MicroPython, compared with CPython."""

from conftest import REPO, run_on_both


def test_backlog_resumes_after_the_last_acknowledged_message(tmp_path):
    # Each interpreter gets its own folder: the backlog file is written in the current one.
    (out,) = run_on_both(REPO / "host_tests" / "mp_backlog_check.py", cwd=tmp_path)
    assert out["dropped"] == 0 and out["count"] == 3
    assert out["first_pass"] == [1, 2]
    assert out["resumed"] == [2, 3] and out["finished"]
    assert out["after_torn"] == [1, 2, 3, 4, 5]
    assert out["bad_offset"] == 0 and out["cleared"] == 0
