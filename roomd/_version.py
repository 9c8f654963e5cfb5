"""roomd's version, in one place (pyproject.toml reads the same number)."""

VERSION = "0.1.0"
