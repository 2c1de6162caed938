"""Settings from layered sources, highest first: magic options, the IPython configuration
(``%config AzparMagics.workers = 4``, ipython_config.py: the magics' traits), ``AZPAR_*``
environment variables, ``./azpar.toml``, the user's config file, the system file an
administrator puts under ``{sys.prefix}/etc/azpar/``, and the defaults (the local backend).

Only plain settings live here; secrets never do unless a user saves one on purpose.

The system file may hold an ``[admin]`` table (see ``AdminPolicy``): the fields of its
profiles users may not change (``locked``, or the complement of ``user_overridable``) and
whether users may define profiles of their own. A lower layer that sets a locked field is
refused with a message naming both files, never silently ignored.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    import tomlkit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

logger = logging.getLogger(__name__)

# max_items: how many items a loop's iterable may yield (engine.materialize); raise it in a config
# file (max_items = 50_000_000) or with AZPAR_MAX_ITEMS.
# cache_max_bytes: bytes of stored job records the --cache index may point at (oldest jobs leave it first).
DEFAULTS: dict[str, Any] = {
    "backend": "local",
    "workers": None,
    "profile": None,
    "max_items": 10_000_000,
    "cache_max_bytes": 2 * 1024**3,
}
PROFILES_TABLE = "profiles"
IPYTHON_LAYER = "IPython configuration"  # %config AzparMagics.KEY / c.AzparMagics.KEY in ipython_config.py
_ENV_PREFIX = "AZPAR_"
_ENV_NAMES = tuple((key, _ENV_PREFIX + key.upper()) for key in DEFAULTS)  # (setting, its variable)
_INT_KEYS = {"workers", "max_items", "cache_max_bytes"}


@dataclass
class Settings:
    values: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)  # key -> where it came from

    def __getitem__(self, key: str) -> Any:
        return self.values.get(key)


def system_config_path() -> Path:
    return _system_config_path(sys.prefix)


def user_config_path() -> Path:
    return _user_config_path(os.environ.get("XDG_CONFIG_HOME"), os.environ.get("HOME"))


# Settings are read on every run: the paths are built once per prefix and home, not parsed by
# pathlib each time (issue 16).
@functools.lru_cache(maxsize=8)
def _system_config_path(prefix: str) -> Path:
    return Path(prefix) / "etc" / "azpar" / "config.toml"


@functools.lru_cache(maxsize=8)
def _user_config_path(config_home: str | None, home: str | None) -> Path:
    base = config_home or os.path.join(os.path.expanduser("~"), ".config")
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
    logger.debug("read the config file %s", path)
    return data


def source_label(key: str, where: str) -> str:
    """Where setting ``key`` was set, as an error names it: the environment's layer by its variable
    ("environment: workers must be ..." named none), any other layer as it is (a file's path)."""
    return f"environment variable {_ENV_PREFIX}{key.upper()}" if where == "environment" else where


def _coerce(key: str, value: Any, where: str) -> Any:
    where = source_label(key, where)
    if key in _INT_KEYS and value is not None:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {key} must be a whole number, got {value!r}") from None
        if number < 1:
            raise ConfigError(f"{where}: {key} must be at least 1, got {number}")
        return number
    return value


_ipython_settings: dict[str, Any] = {}  # the IPython layer: the magics keep it equal to their traits


def set_ipython_settings(values: Mapping[str, Any]) -> None:
    """Replace the IPython layer (above the environment, below a cell's options) with ``values`` (None: unset)."""
    _ipython_settings.clear()
    _ipython_settings.update({k: v for k, v in values.items() if v is not None})


def coerce_setting(key: str, value: Any, where: str) -> Any:
    """``value`` as the setting ``key`` holds it, or ConfigError saying why not (workers: a whole number >= 1)."""
    return _coerce(key, value, where)


def check_unlocked(key: str, where: str) -> None:
    """ConfigError when the administrator's system file sets the top-level setting ``key`` and locks it."""
    policy = admin_policy()
    admin = _read_toml(system_config_path())
    if policy.locks(None, key) and key in admin and not isinstance(admin[key], dict):
        raise ConfigError(_locked_message(where, key, None, policy, admin[key]))


def load_settings(
    overrides: Mapping[str, Any] | None = None, *, cwd: str | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """The settings every layer gives, highest last (see the module docstring).

    Read on every run, so an edited file or variable takes effect at the next cell; the files'
    and the environment's layers are merged again only when one of them may have changed (a
    stat per file and a look at the ``AZPAR_*`` variables): the full read was a quarter of a
    warm two-iteration cell (issue 16)."""
    values, sources, policy = _file_and_environment_layers(cwd, os.environ if environ is None else environ)
    values, sources = dict(values), dict(sources)
    _apply_layers(
        values,
        sources,
        policy,
        [
            (IPYTHON_LAYER, dict(_ipython_settings)),
            ("magic options", {k: v for k, v in (overrides or {}).items() if v is not None}),
        ],
    )
    return Settings(values, sources)


def _apply_layers(
    values: dict[str, Any], sources: dict[str, str], policy: AdminPolicy, layers: list[tuple[str, Mapping[str, Any]]]
) -> None:
    for where, layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict):
                continue  # profile tables are read by the backends that use them
            if key in policy.locked and key in values and sources.get(key) == policy.path:
                raise ConfigError(_locked_message(source_label(key, where), key, None, policy, values[key]))
            values[key] = _coerce(key, value, where)
            sources[key] = where


_layers_seen: tuple[tuple, tuple[dict[str, Any], dict[str, str], AdminPolicy]] | None = None


def _file_and_environment_layers(
    cwd: str | None, environ: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str], AdminPolicy]:
    """The defaults, the three files and the ``AZPAR_*`` variables merged (not to be changed by
    the caller), with the administrator's policy; remembered while the files' identities and
    the variables stay the same."""
    global _layers_seen
    paths = (str(system_config_path()), str(user_config_path()), os.path.join(cwd or ".", "azpar.toml"))
    # The settings' own names looked up, not every variable scanned (~5 us less each cell, issue 16).
    variables = {key: value for key, name in _ENV_NAMES if (value := environ.get(name)) is not None}
    try:
        here = os.getcwd() if cwd is None else cwd
    except OSError:  # the folder was removed: ./azpar.toml is then not found, as before
        here = None
    stamp = (
        here,
        tuple(variables.items()),
        *(_identity(path) for path in paths),
    )
    if _layers_seen is not None and _layers_seen[0] == stamp:
        return _layers_seen[1]
    policy = admin_policy()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    _apply_layers(
        values,
        sources,
        policy,
        [
            ("defaults", DEFAULTS),
            *((str(Path(path)), _read_toml(Path(path))) for path in paths),
            ("environment", variables),
        ],
    )
    _layers_seen = (stamp, (values, sources, policy))
    return values, sources, policy


def _identity(path: str) -> tuple:
    """What tells a file's versions apart without reading it: its path, and (when it exists) its
    modification time, size and inode."""
    try:
        st = os.stat(path)
    except OSError:
        return (path,)
    return (path, st.st_mtime_ns, st.st_size, st.st_ino)


# ---------------------------------------------------------------------------------------
# What the administrator allows (the [admin] table of the system file)
# ---------------------------------------------------------------------------------------

ADMIN_TABLE = "admin"


@dataclass(frozen=True)
class AdminPolicy:
    """The system file's ``[admin]`` table:

    - ``locked = [...]``: fields of the system file's profiles (and top-level settings such
      as ``profile`` or ``backend``) that no other layer may set; ``"*"`` locks them all.
    - ``user_overridable = [...]``: the other way round, the only fields users may set.
    - ``allow_user_profiles = false``: only the system file's profiles may be used.
    """

    path: str
    locked: frozenset[str] = frozenset()
    allow_user_profiles: bool = True
    system_profiles: frozenset[str] = frozenset()

    def locks(self, profile: str | None, key: str) -> bool:
        """Whether ``key`` of ``profile`` (None: a top-level setting) is the administrator's alone."""
        if key not in self.locked:
            return False
        return profile is None or profile in self.system_profiles


def admin_policy() -> AdminPolicy:
    path = system_config_path()
    data = _read_toml(path)
    where = str(path)
    table = data.get(ADMIN_TABLE) or {}
    profiles = data.get(PROFILES_TABLE) or {}
    system_profiles = (
        frozenset(k for k, v in profiles.items() if isinstance(v, dict)) if isinstance(profiles, dict) else frozenset()
    )
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [{ADMIN_TABLE}] must be a table")
    unknown = set(table) - {"locked", "user_overridable", "allow_user_profiles"}
    if unknown:
        raise ConfigError(
            f"{where}: [{ADMIN_TABLE}] has unknown keys {', '.join(sorted(unknown))}; known: locked, "
            "user_overridable, allow_user_profiles"
        )
    known = set(PROFILE_FIELDS) | set(DEFAULTS)

    def names(key: str) -> set[str]:
        value = table.get(key, [])
        if value == "*":
            return set(known)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f'{where}: [{ADMIN_TABLE}] {key} must be a list of field names (or "*")')
        bad = sorted(set(value) - known)
        if bad:
            raise ConfigError(f"{where}: [{ADMIN_TABLE}] {key} names unknown fields {', '.join(bad)}")
        return set(value)

    if "locked" in table and "user_overridable" in table:
        raise ConfigError(f"{where}: [{ADMIN_TABLE}] takes locked or user_overridable, not both")
    locked = (
        names("locked")
        if "locked" in table
        else (known - names("user_overridable") if "user_overridable" in table else set())
    )
    allow = table.get("allow_user_profiles", True)
    if not isinstance(allow, bool):
        raise ConfigError(f"{where}: [{ADMIN_TABLE}] allow_user_profiles must be true or false")
    return AdminPolicy(where, frozenset(locked), allow, system_profiles)


def _locked_message(where: str, key: str, profile: str | None, policy: AdminPolicy, admin_value: Any) -> str:
    what = f"{key} of profile {profile!r}" if profile else f"the setting {key}"
    if where.startswith("environment variable "):
        fix = f"unset {where[len('environment variable ') :]}"
    elif where == IPYTHON_LAYER:
        fix = f"unset it (%config AzparMagics.{key} = None, or remove c.AzparMagics.{key} from ipython_config.py)"
    elif where in ("environment", "magic options"):
        fix = f"do not set it in the {where}"
    else:
        fix = f"remove {key} from {where}"
    return (
        f"{where} sets {what}, which the administrator has locked in {policy.path} ([{ADMIN_TABLE}]); "
        f"{fix} (the administrator's value: {shown(key, admin_value).removeprefix('got ')})."
    )


def layer_name(source: str) -> str:
    """A short name for where a value came from, for ``%azpar config`` and the form:
    system / user / project (./azpar.toml) / environment / magic options / defaults."""
    if source == str(system_config_path()):
        return "system"
    if source == str(user_config_path()):
        return "user"
    if source.endswith("azpar.toml"):
        return "project"
    if source.startswith("environment"):
        return "environment"
    return source


# ---------------------------------------------------------------------------------------
# Profiles: named tables ``[profiles.NAME]`` in any config layer (DESIGN section 8), holding
# the Azure fields of DESIGN section 5. Layers merge field by field, so an administrator's
# system file can hold the accounts and a user's file only the pool size.
# ---------------------------------------------------------------------------------------

AUTH_MODES = ("default", "cli", "managed-identity", "service-principal", "shared-key")
AUTOSCALE_FORMULAS = ("QUEUE", "QUEUE_AND_RUNNING", "WORKDAY", "WEEKEND", "MAX_CPU")


@dataclass(frozen=True)
class ProfileField:
    name: str
    kind: type  # str, int, float, bool or list (of str)
    default: Any
    help: str
    secret: bool = False  # names an environment variable holding a secret, never the secret


def _kernel_python_image() -> str:
    return f"python:{sys.version_info[0]}.{sys.version_info[1]}-slim"


PROFILE_FIELDS: dict[str, ProfileField] = {
    f.name: f
    for f in (
        ProfileField("backend", str, "azure", "azure, or local for a profile that only sizes the local pool"),
        ProfileField("batch_account_url", str, "", "https://ACCOUNT.REGION.batch.azure.com"),
        ProfileField("batch_account_name", str, "", "Batch account name (default: the URL's first label)"),
        ProfileField("storage_account_url", str, "", "https://ACCOUNT.blob.core.windows.net"),
        ProfileField("auth", str, "default", "default, cli, managed-identity, service-principal or shared-key"),
        ProfileField("managed_identity_client_id", str, "", "client id of a user-assigned identity (optional)"),
        ProfileField(
            "batch_key_env",
            str,
            "AZPAR_BATCH_KEY",
            "environment variable holding the Batch account key (auth = shared-key)",
            secret=True,
        ),
        ProfileField(
            "storage_key_env",
            str,
            "AZPAR_STORAGE_KEY",
            "environment variable holding the Storage account key (auth = shared-key)",
            secret=True,
        ),
        ProfileField("pool_id", str, "azpar", "pool to attach to, created from this profile when missing"),
        ProfileField("create_pool", bool, True, "create the pool when it does not exist"),
        ProfileField("vm_size", str, "Standard_D2s_v3", "Azure VM size, e.g. Standard_D4s_v3"),
        ProfileField("dedicated_nodes", int, 0, "dedicated nodes (fixed size)"),
        ProfileField("spot_nodes", int, 2, "spot nodes (fixed size)"),
        ProfileField(
            "autoscale", str, "", f"autoscale formula instead of fixed sizes: {', '.join(AUTOSCALE_FORMULAS)}"
        ),
        ProfileField("min_nodes", int, 0, "autoscale: fewest nodes"),
        ProfileField("max_nodes", int, 10, "autoscale: most nodes"),
        ProfileField(
            "idle_timeout",
            int,
            0,
            "minutes without tasks after which a pool azpar created shrinks to 0 nodes (0: never); Batch "
            "evaluates this every 5 minutes, so it happens up to 6 minutes later",
        ),
        ProfileField(
            "dedicated_fallback",
            int,
            0,
            "dedicated nodes added to a pool azpar created when a job's spot nodes are preempted or not granted "
            "for spot_wait minutes (0: never)",
        ),
        ProfileField("spot_wait", float, 5.0, "minutes a job waits for missing spot nodes before dedicated_fallback"),
        ProfileField("task_slots_per_node", int, 1, "tasks running at once on one node"),
        ProfileField("image", str, "microsoft-dsvm:ubuntu-hpc:2204", "VM image publisher:offer:sku[:version]"),
        ProfileField("node_agent_sku", str, "batch.node.ubuntu 22.04", "node agent SKU matching the image"),
        ProfileField("container_image", str, _kernel_python_image(), "container image tasks run in (needs a tag)"),
        ProfileField("packages", list, [], "pip requirements installed on every node"),
        ProfileField(
            "auto_packages",
            bool,
            True,
            "install on the nodes the kernel's versions of the distributions a cell uses, once per node per "
            "set (false: an image with everything baked in; then they are only checked)",
        ),
        ProfileField("pip_options", list, [], "extra pip options, e.g. an index URL"),
        ProfileField("start_commands", list, [], "shell commands run once per node before the install"),
        ProfileField("subnet_id", str, "", "virtual network subnet resource id (optional)"),
        ProfileField("registry_server", str, "", "container registry server (optional)"),
        ProfileField("registry_username", str, "", "container registry user"),
        ProfileField(
            "registry_password_env",
            str,
            "AZPAR_REGISTRY_PASSWORD",
            "environment variable holding the registry password",
            secret=True,
        ),
        ProfileField("poll_interval", float, 2.0, "seconds between progress polls"),
        ProfileField(
            "job_timeout",
            float,
            86400.0,
            "seconds a job may run (Batch maxWallClockTime); staging SAS tokens expire with it",
        ),
        ProfileField("keep", bool, False, "keep the Batch job and its containers after a successful run"),
        ProfileField("price_per_node_hour", float, 0.0, "price of a dedicated node hour (0: the Azure list price)"),
        ProfileField("spot_price_per_node_hour", float, 0.0, "price of a spot node hour (0: the Azure list price)"),
        ProfileField("max_cost_per_job", float, 0.0, "cancel a job whose estimated cost passes this (0: no cap)"),
        ProfileField("region", str, "", "Azure region of the Batch account, for prices (default: from its URL)"),
    )
}

_VM_SIZE = re.compile(r"^(Standard|Basic)_[A-Za-z0-9]+(_[A-Za-z0-9]+)*$")
_BATCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SUBNET = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Network/"
    r"virtualNetworks/[^/]+/subnets/[^/]+$",
    re.IGNORECASE,
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class Profile:
    """One named profile after layering: ``values`` has every field, ``sources`` says
    which layer set each one ("defaults" when none did)."""

    name: str
    values: dict[str, Any]
    sources: dict[str, str]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def digest(self) -> str:
        """Identity of the settings a pool depends on (the engine keeps one per digest)."""
        return hashlib.sha256(json.dumps(self.values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_layers(cwd: str | None) -> list[tuple[str, Mapping[str, Any]]]:
    """(path, raw table) of each configuration file, lowest first: system, user, ``cwd``'s azpar.toml."""
    local = Path(cwd or ".") / "azpar.toml"
    return [(str(path), _read_toml(path)) for path in (system_config_path(), user_config_path(), local)]


def profile_names(*, cwd: str | None = None) -> list[str]:
    names: set[str] = set()
    for _where, layer in config_layers(cwd):
        table = layer.get(PROFILES_TABLE)
        if isinstance(table, dict):
            names.update(k for k, v in table.items() if isinstance(v, dict))
    return sorted(names)


def meant_field(key: str) -> str:
    """`` (did you mean 'batch_account_url'?)`` for a misspelt profile field, else "": the list of
    every field that follows it is long, and a typo is the usual cause."""
    return did_you_mean(key.lower(), PROFILE_FIELDS, quoted=True)


def looks_like_secret(text: str) -> bool:
    """A value that is a key, a password or a SAS token rather than a variable's name.

    Names are short-ish identifiers, usually with underscores (AZPAR_BATCH_KEY); keys are
    long, and either contain characters no name has (base64's + / =, a SAS token's & and
    %) or mix upper case, lower case and digits without a single underscore."""
    text = text.strip()
    if len(text) >= 16 and not _ENV_NAME.match(text):
        return True
    mixed = any(c.islower() for c in text) and any(c.isupper() for c in text) and any(c.isdigit() for c in text)
    return len(text) >= 24 and mixed and "_" not in text


def shown(key: str, value: Any) -> str:
    """How a message may quote the value of field ``key``: as typed for plain fields; for a
    field that names a secret's variable, only when it is a plausible variable name. A value
    that fails there may be the key itself, and an error message lands in the saved notebook."""
    spec = PROFILE_FIELDS.get(key)
    if spec is None or not spec.secret:
        return f"got {value!r}"
    if isinstance(value, str) and _ENV_NAME.match(value.strip()) and not looks_like_secret(value):
        return f"got {value.strip()!r}"
    return "the value given is not shown, as it may be the secret"


def _coerce_field(spec: ProfileField, value: Any, where: str) -> Any:
    if spec.kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
            return value.lower() in ("1", "true", "yes")
        raise ConfigError(f"{where}: {spec.name} must be true or false, {shown(spec.name, value)}")
    if spec.kind in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: {spec.name} must be a number, {shown(spec.name, value)}")
        try:
            return spec.kind(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}: {spec.name} must be a {'whole ' if spec.kind is int else ''}number, "
                f"{shown(spec.name, value)}"
            ) from None
    if spec.kind is list:
        if isinstance(value, str):  # from the environment: comma or newline separated
            return [part.strip() for part in re.split(r"[,\n]", value) if part.strip()]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"{where}: {spec.name} must be a list of strings, {shown(spec.name, value)}")
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {spec.name} must be a string, {shown(spec.name, value)}")
    return value.strip()


def load_profile(
    name: str,
    *,
    cwd: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Profile:
    """The profile ``name`` merged across layers (system, user, ./azpar.toml), then
    ``AZPAR_<FIELD>`` environment variables, then ``overrides``. Unknown fields are an
    error naming the file, so a typo never silently falls back to a default."""
    environ = os.environ if environ is None else environ
    policy = admin_policy()
    values = {k: (list(f.default) if isinstance(f.default, list) else f.default) for k, f in PROFILE_FIELDS.items()}
    sources = {k: "defaults" for k in PROFILE_FIELDS}
    found = False
    if not policy.allow_user_profiles and name not in policy.system_profiles:
        raise ConfigError(
            f"the administrator allows only the profiles of {policy.path} "
            f"({', '.join(sorted(policy.system_profiles)) or 'none'}), not {name!r}"
        )

    def check(key: str, where: str) -> None:
        if where != policy.path and policy.locks(name, key):
            raise ConfigError(_locked_message(where, key, name, policy, values[key]))

    for where, layer in config_layers(cwd):
        table = (layer.get(PROFILES_TABLE) or {}).get(name)
        if not isinstance(table, dict):
            continue
        found = True
        for key, value in table.items():
            spec = PROFILE_FIELDS.get(key)
            if spec is None:
                raise ConfigError(
                    f"{where}: profile {name!r} has an unknown field {key!r}{meant_field(key)}; known fields: "
                    f"{', '.join(PROFILE_FIELDS)}"
                )
            check(key, where)
            values[key] = _coerce_field(spec, value, where)
            sources[key] = where
    if not found:
        known = profile_names(cwd=cwd)
        raise ConfigError(
            f"no profile named {name!r} in {system_config_path()}, {user_config_path()} or "
            f"./azpar.toml (known: {', '.join(known) or 'none'}); create one with %azpar config "
            "or a [profiles.NAME] table"
        )
    for key, spec in PROFILE_FIELDS.items():
        env_name = _ENV_PREFIX + key.upper()
        if env_name in environ and key not in DEFAULTS:
            check(key, f"environment variable {env_name}")
            values[key] = _coerce_field(spec, environ[env_name], f"environment variable {env_name}")
            sources[key] = "environment"
    for key, value in (overrides or {}).items():
        if value is not None and key in PROFILE_FIELDS:
            check(key, "magic options")
            values[key] = _coerce_field(PROFILE_FIELDS[key], value, "magic options")
            sources[key] = "magic options"
    return Profile(name, values, sources)


# The REST API's Create Task: "The maximum lifetime of a Task from addition to completion is 180 days";
# a longer job_timeout bought nothing, and one past the year 9999 failed the run inside (its SAS expiry).
MAX_JOB_TIMEOUT = 180 * 86400


def validate_profile(values: Mapping[str, Any]) -> dict[str, str]:
    """Field -> what is wrong with it (empty when the profile is usable). The config form
    shows each message next to its field; the backend joins them into one error."""
    problems: dict[str, str] = {}
    v = {**{k: f.default for k, f in PROFILE_FIELDS.items()}, **values}
    if v["backend"] not in ("azure", "local"):
        problems["backend"] = f"must be azure or local, not {v['backend']!r}"
    if v["backend"] != "azure":
        return problems
    for key, example in (
        ("batch_account_url", "https://ACCOUNT.REGION.batch.azure.com"),
        ("storage_account_url", "https://ACCOUNT.blob.core.windows.net"),
    ):
        url = v[key]
        if not url:
            problems[key] = f"is missing; set it to the account's URL, like {example}"
        elif not re.match(r"^https?://[^/\s]+(/[^\s]*)?$", url):
            problems[key] = f"{url!r} is not a URL like {example}"
        elif url.startswith("http://") and not re.match(r"^http://(127\.0\.0\.1|localhost)[:/]", url):
            problems[key] = "must use https (plain http is only accepted for a local test service)"
    if v["auth"] not in AUTH_MODES:
        problems["auth"] = f"must be one of {', '.join(AUTH_MODES)}, not {v['auth']!r}"
    for key in (k for k, f in PROFILE_FIELDS.items() if f.secret):
        if v[key] and (not isinstance(v[key], str) or not _ENV_NAME.match(v[key]) or looks_like_secret(v[key])):
            problems[key] = (
                f"must be the name of an environment variable (like {PROFILE_FIELDS[key].default}) "
                f"that holds the secret, not the secret itself; {shown(key, v[key])}"
            )
    if not _BATCH_ID.match(v["pool_id"] or ""):
        problems["pool_id"] = "must be 1 to 64 letters, digits, '-' or '_'" if v["pool_id"] else "is missing"
    if not _VM_SIZE.match(v["vm_size"] or ""):
        problems["vm_size"] = f"{v['vm_size']!r} is not an Azure VM size like Standard_D2s_v3"
    for key in ("dedicated_nodes", "spot_nodes", "min_nodes", "max_nodes"):
        if v[key] < 0:
            problems[key] = f"must be 0 or more, not {v[key]}"
    if v["autoscale"]:
        if v["autoscale"].upper() not in AUTOSCALE_FORMULAS:
            problems["autoscale"] = (
                f"{v['autoscale']!r} is not a known formula; use one of "
                f"{', '.join(AUTOSCALE_FORMULAS)} (or leave empty for fixed sizes)"
            )
        if v["min_nodes"] > v["max_nodes"]:
            problems["min_nodes"] = f"min_nodes ({v['min_nodes']}) is more than max_nodes ({v['max_nodes']})"
    if v["idle_timeout"] and not 5 <= v["idle_timeout"] <= 7 * 24 * 60:
        problems["idle_timeout"] = f"must be 0 (never) or 5 to 10080 minutes (a week), not {v['idle_timeout']}"
    if v["dedicated_fallback"] < 0:
        problems["dedicated_fallback"] = f"must be 0 or more, not {v['dedicated_fallback']}"
    if not v["spot_wait"] > 0:
        problems["spot_wait"] = f"must be more than 0 minutes, not {v['spot_wait']}"
    if not 1 <= v["task_slots_per_node"] <= 256:
        problems["task_slots_per_node"] = f"must be between 1 and 256, not {v['task_slots_per_node']}"
    parts = (v["image"] or "").split(":")
    if len(parts) not in (3, 4) or not all(parts[:3]):
        problems["image"] = f"{v['image']!r} is not publisher:offer:sku[:version]"
    image = v["container_image"] or ""
    last = image.rsplit("/", 1)[-1]
    if not image:
        problems["container_image"] = "is missing"
    elif ":" not in last and "@" not in last:
        problems["container_image"] = (
            f"{image!r} has no tag; name one (like {_kernel_python_image()}) so every node runs the same image"
        )
    elif last.endswith(":latest"):
        problems["container_image"] = f"{image!r} uses :latest, which changes under you; pin a version tag"
    if v["subnet_id"] and not _SUBNET.match(v["subnet_id"]):
        problems["subnet_id"] = (
            "must be a subnet resource id like /subscriptions/ID/resourceGroups/RG/providers/"
            "Microsoft.Network/virtualNetworks/VNET/subnets/SUBNET"
        )
    if v["registry_server"] and not v["registry_username"]:
        problems["registry_username"] = "is needed when registry_server is set"
    if not 60 <= v["job_timeout"] <= MAX_JOB_TIMEOUT:
        problems["job_timeout"] = (
            f"must be 60 to {MAX_JOB_TIMEOUT} seconds (180 days: Batch ends a task that has not completed 180 days "
            f"after it was added), not {v['job_timeout']}"
        )
    if v["batch_account_name"] and not re.match(r"^[a-z0-9]{3,24}$", v["batch_account_name"]):
        problems["batch_account_name"] = "must be 3 to 24 lowercase letters or digits"
    if not v["poll_interval"] > 0:
        problems["poll_interval"] = f"must be more than 0 seconds, not {v['poll_interval']}"
    for key in ("price_per_node_hour", "spot_price_per_node_hour", "max_cost_per_job"):
        if not v[key] >= 0:
            problems[key] = f"must be 0 (not set) or more, not {v[key]}"
    return problems


def check_profile(profile: Profile) -> None:
    """Raise ConfigError with every problem of the profile in one paragraph."""
    problems = validate_profile(profile.values)
    if problems:
        listed = "; ".join(
            f"{key} {message} (from {profile.sources.get(key, 'defaults')})" for key, message in problems.items()
        )
        raise ConfigError(f"Profile {profile.name!r} cannot be used: {listed}.")


def _replace_profile(document: tomlkit.TOMLDocument, name: str, entry: Mapping[str, Any]) -> None:
    """Make ``[profiles.NAME]`` hold exactly ``entry``, editing the user's file in place: keys that stay keep
    their comments and position, keys no longer set leave, new keys go at the end of the table, and a new
    profile goes after the others. Everything outside that table is left as the user wrote it."""
    import tomlkit

    profiles = document.get(PROFILES_TABLE)
    if profiles is None:
        profiles = tomlkit.table(is_super_table=True)
        document[PROFILES_TABLE] = profiles
    table = profiles.get(name)
    if not isinstance(table, dict):
        table = tomlkit.table()
        for key, value in entry.items():
            table[key] = value
        table.add(tomlkit.nl())  # a blank line before whatever table follows, as people write them
        profiles[name] = table
        return
    for key in [k for k in table if k not in entry]:
        del table[key]
    for key, value in entry.items():
        if key not in table or table[key] != value:
            table[key] = value


def save_profile(name: str, values: Mapping[str, Any], path: Path | None = None) -> Path:
    """Write profile ``name`` (only fields that differ from the defaults) into ``path``
    (default: the user's config file), keeping the file's other settings; mode 0600."""
    import tomlkit  # style-preserving, so the rest of the user's file stays as written; only saving needs it

    if not _BATCH_ID.match(name):
        raise ConfigError(f"a profile name must be letters, digits, '-' or '_', not {name!r}")
    path = Path(path or user_config_path())
    entry = {}
    for key, value in values.items():
        spec = PROFILE_FIELDS.get(key)
        if spec is None:
            raise ConfigError(f"unknown profile field {key!r}{meant_field(key)}")
        value = _coerce_field(spec, value, f"profile {name!r}")
        if value != spec.default:
            entry[key] = value
    if path.exists():
        _read_toml(path)  # a file that is not valid TOML is refused with the reader's message, not rewritten
        document = tomlkit.parse(path.read_text(encoding="utf-8"))
    else:
        document = tomlkit.document()
    _replace_profile(document, name, entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(tomlkit.dumps(document))
    os.replace(tmp, path)
    os.chmod(path, 0o600)
    return path
