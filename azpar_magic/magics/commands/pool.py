"""The commands about pools: ``%azpar pool`` (the nodes, or an Azure pool's administration) and ``%azpar status``
(every pool of this kernel, live in a notebook)."""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.display import display

from ... import config, session
from ...errors import ConfigError
from ...ui.text import format_pool_text
from ..context import MagicContext
from ..display import display_mode
from ..usage import SETTINGS, usage_errors
from ..words import read_words

RESIZE_USAGE = "usage: %azpar pool resize DEDICATED SPOT (two whole numbers, 0 or more)"


def pool(context: MagicContext, words: list[str], usage: str) -> None:
    """Without an action, each engine's nodes; status, create, delete or resize act on the profile's Azure pool
    (status with no Azure profile chosen is the first: the local pool's nodes)."""
    read = read_words(words, usage, options=("--profile",))
    profile, words = read.option("--profile"), read.rest
    if words == ["status"] and profile is None:
        with usage_errors(SETTINGS):
            chosen = session.active_profile()
            azure = chosen not in (None, session.LOCAL) and config.load_profile(chosen)["backend"] == "azure"
        if not azure:  # the local pool's status is its nodes, as %azpar pool says (it was an error)
            words = []
    if words and words[0] in ("status", "create", "delete", "resize"):
        action, counts = words[0], words[1:]
        sizes: list[int] = []
        if action == "resize":
            try:
                sizes = [int(c) for c in counts]
            except ValueError:
                sizes = []
            if len(sizes) != 2 or min(sizes) < 0:
                raise UsageError(RESIZE_USAGE)
        elif counts:
            raise UsageError(usage)
        with (
            usage_errors(
                Exception,
                lambda exc: (
                    f"%azpar pool {action} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                ),
            ),
            usage_errors((ConfigError, ValueError, RuntimeError)),
        ):  # else the service's answer, in one line
            print(session.pool_action(profile, action, *sizes))
        return
    if words:
        raise UsageError(usage)
    for engine in session.engines() or [session.engine()]:
        nodes = engine.backend.nodes()
        print(f"{engine.backend.describe()}: " + (", ".join(f"{n.id} {n.state}" for n in nodes) or "not started"))


def status(context: MagicContext, words: list[str], usage: str) -> None:
    """Every pool of this kernel: a live panel in a notebook, text elsewhere."""
    if words:
        raise UsageError(usage)
    with usage_errors(SETTINGS):
        views = pool_views()
    if display_mode(context.shell) == "widget":
        from ...ui.panel import PoolPanel

        panel = PoolPanel(pool_views, first=views)
        display(panel.widget)
        panel.start()
        return
    print("\n".join(format_pool_text(view) for view in views))


def pool_views() -> list[dict[str, Any]]:
    """One pool view per engine of this kernel (what ``%azpar status`` draws)."""
    from ...ui.state import pool_view

    views = []
    for engine in session.engines() or [session.engine()]:
        backend = engine.backend
        pool, size = backend.pool_info()
        active = [job.snapshot() for job in list(engine.jobs.values()) if not job.done]
        views.append(
            pool_view(
                backend.name,
                backend.describe(),
                pool,
                size,
                backend.nodes(),
                active,
                size_label=backend.size_label,
                cost=backend.cost_note(),
            )
        )
    return views
