"""The commands about where cells run: ``%azpar use`` (the active profile), ``%azpar backend`` (say it) and
``%azpar config`` (show, edit and save a profile: a form in a notebook)."""

from __future__ import annotations

import shlex

from IPython.core.error import UsageError
from IPython.display import display

from ... import session
from ...errors import ConfigError
from ..context import MagicContext
from ..display import display_mode
from ..usage import SETTINGS, usage_errors


def use(context: MagicContext, words: list[str], usage: str) -> None:
    """Later cells run with this profile, or on the local pool (the word ``local``)."""
    if len(words) != 1:
        raise UsageError(usage)
    with usage_errors(SETTINGS):
        if words[0] == "local":
            session.use(session.LOCAL)
            print("azpar: later cells run on the local pool")
            return
        profile = session.use(words[0])
    assert profile is not None  # a name other than local loads its profile
    print(f"azpar: later cells use profile {profile.name} ({profile['backend']} backend)")


def backend(context: MagicContext, words: list[str], usage: str) -> None:
    """Which backend cells run on (any words are ignored, as they always were)."""
    print(session.describe())


def config(context: MagicContext, words: list[str], usage: str) -> None:
    """Show a profile (a form in a notebook), or set and save FIELD=VALUE assignments."""
    from ...config import save_profile, user_config_path, validate_profile
    from ...ui import profile as prof

    with usage_errors(ValueError, "%azpar config: {}"):
        words = shlex.split(" ".join(words))
    names = [w for w in words if "=" not in w]
    assignments = [w for w in words if "=" in w]
    if len(names) > 1:
        raise UsageError(usage)
    with usage_errors(ConfigError):
        name = names[0] if names else (session.active_profile() or "default")
    if not prof.valid_name(name):
        shown = "this (not shown: it looks like a secret)" if prof.looks_like_secret(name) else repr(name)
        raise UsageError(f"a profile name is letters, digits, '-' or '_', not {shown}")
    values, sources, problem = prof.load(name)
    if problem:
        raise UsageError(problem)
    if assignments:
        loaded = dict(values)
        locks = prof.locked(name)
        for text in assignments:
            field, _, raw = text.partition("=")
            if field.strip() in locks:
                raise UsageError(
                    f"%azpar config: {field.strip()} of profile {name!r} is locked by the administrator "
                    f"in {locks[field.strip()]}; ask them to change it. Nothing was saved."
                )
            with usage_errors(ValueError, "%azpar config: {}. Nothing was saved."):
                values[field.strip()] = prof.parse_value(field.strip(), raw)
        # Fields set here must be valid; others may still be missing (set them later).
        problems = validate_profile(values)
        set_here = {text.partition("=")[0].strip() for text in assignments}
        bad = {k: m for k, m in problems.items() if k in set_here}
        if bad:
            raise UsageError(f"profile {name!r} not saved: " + "; ".join(f"{k} {m}" for k, m in bad.items()))
        path = user_config_path()
        with usage_errors(ConfigError):
            save_profile(name, prof.to_save(values, loaded, sources, path), path)
        print(f"azpar: saved profile {name} to {path}")
        for key, message in problems.items():
            print(f"  still to fix: {key} {message}")
        return
    if display_mode(context.shell) == "widget":
        from ...ui.form import ConfigForm

        form = ConfigForm(
            name,
            test_connection=getattr(session, "test_connection", None),
            pool_action=getattr(session, "pool_action", None),
        )
        display(form.widget)
        return
    print(prof.profile_text(name, values, sources, validate_profile(values)))
    print(f"(file: {user_config_path()}; set fields with %azpar config {name} FIELD=VALUE ...)")
