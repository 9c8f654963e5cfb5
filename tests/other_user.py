"""Run something as another user (uid/gid 65534, "nobody") in a test.

The other user may not be able to read this clone: a clone in a private home
directory (mode 0700) hides the venv, its interpreter and its packages. So a
test that runs code as another user brings what that code needs:

- :func:`python_for_other_user` finds a Python (3.11+) the other user can run:
  this venv's base interpreter or the system's ``python3``, each tried as that
  user; None when there is none (the test skips, saying why).
- :func:`readable_packages` copies the named packages (``roomd``, ``click``...)
  into a fresh world-readable directory under /tmp, for ``PYTHONPATH``.

Everything runs through ``setpriv`` (util-linux), so the tests need root;
:data:`needs_root` skips them otherwise.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

OTHER_UID = 65534
AS_OTHER_USER = ["setpriv", "--reuid", str(OTHER_UID), "--regid", str(OTHER_UID),
                 "--clear-groups"]

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to act as another uid")


@functools.cache
def python_for_other_user() -> str | None:
    """A Python 3.11+ interpreter the other user can run, or None."""
    candidates = [os.path.realpath(sys.executable), getattr(sys, "_base_executable", ""),
                  "/usr/bin/python3", shutil.which("python3") or ""]
    check = "import sys; sys.exit(sys.version_info < (3, 11))"
    for python in dict.fromkeys(c for c in candidates if c):
        try:
            done = subprocess.run([*AS_OTHER_USER, python, "-I", "-c", check], cwd="/",
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return python
    return None


def require_python_for_other_user() -> str:
    python = python_for_other_user()
    if python is None:
        pytest.skip(f"no Python 3.11+ that uid {OTHER_UID} can run")
    return python


@contextmanager
def readable_packages(*names: str) -> Iterator[Path]:
    """A world-readable temp directory holding copies of the packages ``names``."""
    directory = Path(tempfile.mkdtemp(prefix="roomd-other-user-", dir="/tmp"))
    try:
        for name in names:
            source = Path(importlib.import_module(name).__file__ or "").parent
            shutil.copytree(source, directory / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for root, _dirs, files in os.walk(directory):
            os.chmod(root, 0o755)
            for file in files:
                os.chmod(os.path.join(root, file), 0o644)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
