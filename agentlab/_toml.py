"""TOML reading from the standard library (tomllib, Python 3.11+) or tomli on 3.10."""

try:
    import tomllib as _toml
except ModuleNotFoundError:  # Python 3.10
    import tomli as _toml  # type: ignore[no-redef]

loads = _toml.loads
load = _toml.load
TOMLDecodeError = _toml.TOMLDecodeError
