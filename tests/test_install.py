"""Installing and running roomd: the Makefile's two set-up paths (the daemon needs python3 only;
the tests add their extras and the node packages), the README's commands, ``make
install-system`` into a scratch tree (then used by another uid, with the clone gone), and
``systemd-analyze verify`` of the shipped units when systemd is installed."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from other_user import AS_OTHER_USER, python_for_other_user

ROOT = Path(__file__).resolve().parent.parent
UNITS = ("roomd.service", "roomd@.service", "roomd.socket")

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def make_dry_run(target: str) -> str:
    """The commands ``make TARGET`` would run from scratch (-B: as if nothing were built)."""
    done = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_make
def test_make_serve_needs_python3_only():
    commands = make_dry_run("serve")
    assert "-m venv .venv" in commands and "pip install" in commands
    assert ".venv/bin/roomd serve" in commands
    assert "npm" not in commands and "[test]" not in commands and "node" not in commands


@needs_make
def test_make_test_installs_the_test_extras_and_the_node_packages():
    commands = make_dry_run("test")
    assert "pip install" in commands and ".[test]" in commands
    assert "npm ci" in commands and "-m pytest" in commands


def test_readme_set_up_and_ci():
    readme = (ROOT / "README.md").read_text()
    set_up = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = [line.strip() for line in set_up.splitlines() if line.startswith("    make")]
    assert [c.split()[:2] for c in commands] == [["make", "serve"], ["make", "test"]], set_up
    assert ". .venv/bin/activate" in readme  # how plain `roomd` gets on PATH
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line and not line.startswith("#")]
    assert ci[-1] == "make test"
    # pip < 23.3 does not normalise "asyncio_client"; the hyphen works with every pip
    assert "python-socketio[asyncio-client]" in readme and "asyncio_client" not in readme


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="roomd-install-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _venv_python() -> str:
    """An interpreter with venv and ensurepip: preferably one another uid can run."""
    return python_for_other_user() if os.geteuid() == 0 and python_for_other_user() else (
        os.path.realpath(getattr(sys, "_base_executable", sys.executable)))


@needs_make
def test_install_system_layout_and_units(scratch):
    source = scratch / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "node_modules", "build", "*.egg-info", "__pycache__", ".pytest_cache",
        ".hypothesis", ".mypy_cache", ".ruff_cache"))
    prefix, home = scratch / "usr" / "local", scratch / "opt" / "roomd"
    conf, units = scratch / "etc" / "roomd", scratch / "etc" / "systemd" / "system"
    done = subprocess.run(
        ["make", "install-system", f"PYTHON={_venv_python()}", f"PREFIX={prefix}",
         f"ROOMD_HOME={home}", f"CONFDIR={conf}", f"UNITDIR={units}"],
        cwd=source, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    shutil.rmtree(source)  # a copy, not an editable install: nothing points into the clone

    roomd = prefix / "bin" / "roomd"
    assert roomd.is_symlink() and roomd.resolve() == (home / "bin" / "roomd").resolve()
    assert (prefix / "share" / "man" / "man1" / "roomd.1").read_text() == (
        ROOT / "man" / "roomd.1").read_text()
    assert (prefix / "share" / "man" / "man5" / "roomd.toml.5").is_file()
    assert (conf / "roomd.toml").read_text() == (ROOT / "dist" / "roomd.toml").read_text()
    service = (units / "roomd.service").read_text()
    assert f"ExecStart={roomd} serve --config {conf}/roomd.toml\n" in service
    template = (units / "roomd@.service").read_text()
    assert f"ExecStart={roomd} serve --config {conf}/%i.toml --instance %i\n" in template
    assert "ListenStream=127.0.0.1:3000\n" in (units / "roomd.socket").read_text()
    for path in (home / "bin" / "roomd", *home.rglob("roomd_cli/__init__.py")):
        assert path.stat().st_mode & stat.S_IROTH, path  # the unit's dynamic user reads it

    check = [str(roomd), "config", "check", str(conf / "roomd.toml")]
    if os.geteuid() == 0 and python_for_other_user() == _venv_python():
        check = [*AS_OTHER_USER, *check]  # as a user without a home, like DynamicUser=yes
    done = subprocess.run(check, capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0 and "port = 3000" in done.stdout, done.stderr
    done = subprocess.run([str(roomd), "unit-file", "roomd@.service"], capture_output=True,
                          text=True, timeout=60)  # the package data made it into the copy
    assert (done.returncode, done.stdout) == (0, (ROOT / "dist" / "roomd@.service").read_text())

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: units not verified")
    env = dict(os.environ, MANPATH=str(prefix / "share" / "man"))  # Documentation=man:...
    done = subprocess.run(
        ["systemd-analyze", "verify", "roomd.service", "roomd.socket", "roomd@eu1.service"],
        cwd=units, env=env, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
def test_systemd_analyze_finds_a_missing_executable(scratch):
    """The check above can fail: the unit as shipped names /usr/local/bin/roomd."""
    for unit in UNITS:
        text = (ROOT / "dist" / unit).read_text()
        (scratch / unit).write_text(text.replace("/usr/local/bin/roomd", str(scratch / "nope")))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", "roomd.service"],
                          cwd=scratch, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "is not executable" in done.stderr, done.stderr
