"""Settings from layered sources, highest first: magic options, ``AZPAR_*`` environment
variables, ``./azpar.toml``, the user's config file, the system file an administrator
puts under ``{sys.prefix}/etc/azpar/``, and the defaults (the local backend).

Only plain settings live here; secrets never do unless a user saves one on purpose.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULTS: dict[str, Any] = {"backend": "local", "workers": None, "profile": None}
_ENV_PREFIX = "AZPAR_"
_INT_KEYS = {"workers"}


class ConfigError(ValueError):
    """A setting is malformed; the message names the file or variable and the key."""


@dataclass
class Settings:
    values: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)  # key -> where it came from

    def __getitem__(self, key: str) -> Any:
        return self.values.get(key)


def system_config_path() -> Path:
    return Path(sys.prefix) / "etc" / "azpar" / "config.toml"


def user_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "azpar" / "config.toml"


_parsed: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}


def _read_toml(path: Path) -> dict[str, Any]:
    """A config file's content, re-read only when the file changes (settings are looked
    up on every run, and an edit between two cells must still take effect)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read the azpar config file {path}: {exc}") from None
    stamp = (st.st_mtime_ns, st.st_size)
    cached = _parsed.get(path)
    if cached and cached[0] == stamp:
        return cached[1]
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the azpar config file {path}: {exc}") from None
    _parsed[path] = (stamp, data)
    return data


def _coerce(key: str, value: Any, where: str) -> Any:
    if key in _INT_KEYS and value is not None:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {key} must be a whole number, got {value!r}") from None
        if number < 1:
            raise ConfigError(f"{where}: {key} must be at least 1, got {number}")
        return number
    return value


def load_settings(overrides: Mapping[str, Any] | None = None, *, cwd: str | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    layers: list[tuple[str, Mapping[str, Any]]] = [
        ("defaults", DEFAULTS),
        (str(system_config_path()), _read_toml(system_config_path())),
        (str(user_config_path()), _read_toml(user_config_path())),
        (str(Path(cwd or ".") / "azpar.toml"), _read_toml(Path(cwd or ".") / "azpar.toml")),
        ("environment", {k[len(_ENV_PREFIX):].lower(): v for k, v in environ.items()
                         if k.startswith(_ENV_PREFIX) and k[len(_ENV_PREFIX):].lower() in DEFAULTS}),
        ("magic options", {k: v for k, v in (overrides or {}).items() if v is not None}),
    ]
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for where, layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict):
                continue  # profile tables are read by the backends that use them
            values[key] = _coerce(key, value, where)
            sources[key] = where
    return Settings(values, sources)
