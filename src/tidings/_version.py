"""The version of tidings, read by the package, the server and the build (pyproject.toml)."""

__version__ = "0.1.0"
