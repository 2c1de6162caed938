"""Profile editing without widgets: what the config form and ``%azpar config NAME
field=value`` share (load a profile or start a new one, parse typed values, decide what
to write, describe a profile as text).

Secret fields hold the NAME of an environment variable; this module only ever asks
whether that variable is set, never reads its value, so no view built on it can show one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import config

_PROFILE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what config.save_profile accepts


def valid_name(name: str) -> bool:
    return bool(_PROFILE_NAME.match(name))


def default_values() -> dict[str, Any]:
    return {
        k: (list(f.default) if isinstance(f.default, list) else f.default) for k, f in config.PROFILE_FIELDS.items()
    }


def load(
    name: str, *, cwd: str | None = None, environ: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, str], str | None]:
    """(values, sources, problem): the profile as the configuration layer reads it; a name
    no file has yet starts from the defaults (problem None); an unreadable file gives the
    defaults and the reason."""
    defaults = default_values(), {k: "defaults" for k in config.PROFILE_FIELDS}
    try:
        if name not in config.profile_names(cwd=cwd):
            return (*defaults, None)
        profile = config.load_profile(name, cwd=cwd, environ=environ)
    except config.ConfigError as exc:
        return (*defaults, str(exc))
    return dict(profile.values), dict(profile.sources), None


def locked(name: str) -> dict[str, str]:
    """Field -> the administrator's file, for the fields of profile ``name`` that users may
    not change (empty when nothing is locked, or the system file cannot be read: loading the
    profile reports that)."""
    try:
        policy = config.admin_policy()
    except config.ConfigError:
        return {}
    return {k: policy.path for k in config.PROFILE_FIELDS if policy.locks(name, k)}


def source_text(source: str, locked_by: str | None = None) -> str:
    """Where a value comes from, as shown next to it: the layer's name and its file."""
    layer = config.layer_name(source)
    text = source if layer == source else f"{layer}: {source}"
    return text + (", locked by the administrator" if locked_by else "")


def parse_value(field: str, text: str) -> Any:
    """A typed value for ``field`` from what a user typed (ValueError says why not)."""
    spec = config.PROFILE_FIELDS.get(field)
    if spec is None:
        named = "(not shown: it looks like a secret)" if config.looks_like_secret(field) else repr(field)
        meant = "" if config.looks_like_secret(field) else config.meant_field(field)
        raise ValueError(f"unknown profile field {named}{meant}; known fields: {', '.join(config.PROFILE_FIELDS)}")
    text = text.strip()
    if spec.kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{field} must be true or false, not {text!r}")
    if spec.kind in (int, float):
        try:
            return spec.kind(text)
        except ValueError:
            raise ValueError(f"{field} must be a {'whole ' if spec.kind is int else ''}number, not {text!r}") from None
    if spec.kind is list:
        return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]
    return text


def to_save(
    values: Mapping[str, Any], loaded: Mapping[str, Any], sources: Mapping[str, str], path: Path
) -> dict[str, Any]:
    """The fields to write into ``path``: those the user changed, plus those that file
    already held (save_profile replaces the profile's table there). Fields that come from
    an administrator's file, ./azpar.toml or the environment stay where they are."""
    here = str(path)
    return {
        k: v for k, v in values.items() if k in config.PROFILE_FIELDS and (v != loaded.get(k) or sources.get(k) == here)
    }


def secret_status(env_name: str, environ: Mapping[str, str] | None = None) -> str:
    """Whether the variable a secret field names is set here; never its value."""
    environ = os.environ if environ is None else environ
    if not env_name:
        return "no variable named"
    return f"{env_name} is set in the kernel's environment" if env_name in environ else f"{env_name} is not set"


def looks_like_secret(text: str) -> bool:
    """A value typed into a secret field that is a key, a password or a SAS token rather
    than a variable's name: the form drops it instead of keeping it in widget state (the
    rule is config's, so that validation messages never quote such a value either)."""
    return config.looks_like_secret(text)


def shown_secret_name(value: Any) -> str:
    """What a view shows of a secret field's value: the variable's name, or a placeholder
    when the value is not a plausible name (a key saved there by mistake stays unseen)."""
    text = "" if value is None else str(value)
    if not text or config.shown("storage_key_env", text).startswith("got "):
        return text
    return "(not a variable name: not shown, it may be the secret)"


def profile_text(
    name: str,
    values: Mapping[str, Any],
    sources: Mapping[str, str],
    problems: Mapping[str, str],
    environ: Mapping[str, str] | None = None,
) -> str:
    """The profile as aligned lines: field, value, the layer it came from (and whether the
    administrator locked it), what is wrong."""
    width = max(len(k) for k in config.PROFILE_FIELDS)
    locks = locked(name)
    lines = [f"profile {name}"]
    try:
        settings = config.load_settings()
    except config.ConfigError:
        settings = None
    if settings is not None and settings["profile"] == name:  # say where the default comes from too
        lines[0] += f" (the default profile, set in {source_text(settings.sources['profile'])})"
    for key, spec in config.PROFILE_FIELDS.items():
        value = values.get(key)
        shown = ", ".join(value) if isinstance(value, list) else ("" if value is None else str(value))
        extra = ""
        if spec.secret:  # the variable's name and whether it is set; never a key saved there by mistake
            shown = shown_secret_name(value)
            extra = f"  [{secret_status(shown, environ)}]" if shown == str(value or "") else ""
        source = source_text(sources.get(key, "defaults"), locks.get(key))
        line = f"  {key:<{width}}  {shown}{extra}  ({source})"
        if key in problems:
            line += f"\n  {'':<{width}}  ! {key} {problems[key]}"
        lines.append(line)
    return "\n".join(lines)
