"""The ``%azpar`` line magic: one table of its commands (name, handler, usage line, one line of help) from which
the dispatch, ``%azpar help`` and the messages for a missing or unknown command are all made; and the
``AzparMagics`` class IPython registers, holding both magics.

Adding a command is one entry in ``COMMANDS`` and one handler in a module of ``commands/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from traitlets import Bool, CaselessStrEnum, Int, TraitError, Unicode, observe, validate

from .. import config, session
from ..errors import ConfigError
from . import cell
from .commands import cache, environment, jobs, pool, profiles, storage, verbose
from .context import MagicContext
from .display import choose_mode

Handler = Callable[[MagicContext, list[str], str], Any]

Marker = Callable[[Callable[..., Any]], Callable[..., Any]]  # IPython's magic markers, as mypy should read them

HELP_COLUMN = 30  # the help text starts 3 spaces after this column (or after a longer synopsis)


@dataclass(frozen=True)
class Command:
    """One ``%azpar`` command. ``usage`` is what its refusals show after "usage: "; ``synopsis`` is the shorter
    form ``%azpar help`` shows when they differ."""

    name: str
    handler: Handler
    usage: str
    help: str
    synopsis: str = ""

    def help_line(self) -> str:
        return f"{(self.synopsis or self.usage).ljust(HELP_COLUMN)}   {self.help}"


COMMANDS: tuple[Command, ...] = (  # in the order %azpar help lists them
    Command(
        "collect",
        jobs.collect,
        "%azpar collect [JOB] [-o NAME] [--errors remove|pass]",
        "wait for a job (this kernel's or a stored one) and bind its result (--errors: what finished, under that "
        "policy, also of a failed, cancelled or lost job)",
    ),
    Command(
        "jobs",
        jobs.jobs,
        "%azpar jobs [--all] [--state S] [--name PATTERN] [--since DATE]",
        "the job store's jobs, every kernel's: id, name, when, backend, state, done/failed/total (cancelled), "
        "cell (the latest 30 unless --all); S: running, succeeded, done, failed, cancelled, lost (several with "
        "commas); PATTERN: a glob ('sweep-*'); DATE: 2026-12-01, today, yesterday, Nd, Nh or Nm (the last N days, "
        "hours, minutes)",
    ),
    Command(
        "attach",
        jobs.attach,
        "%azpar attach JOB [-o NAME]",
        "show a job's panel, also after a kernel restart; its result is bound now if it ended, else when it ends",
    ),
    Command(
        "logs",
        jobs.logs,
        "%azpar logs [JOB [ITERATION]]",
        "what an iteration printed and its traceback (all that printed or failed without ITERATION), also "
        "after the job ended or the kernel restarted (default: the latest job)",
    ),
    Command("cancel", jobs.cancel, "%azpar cancel [JOB]", "cancel a job (default: the latest)"),
    Command(
        "rerun",
        jobs.rerun,
        "%azpar rerun JOB [--failed|--all] [-o NAME] [--no-wait] [-q]",
        "run the failed or missing iterations again with the notebook's current definitions, merged in order "
        "with the earlier results (--all: every iteration)",
    ),
    Command(
        "debug",
        jobs.debug,
        "%azpar debug [JOB [ITERATION]] [--no-pdb]",
        "run one iteration again in this kernel with the job's own namespace and item, and open the debugger "
        "where it fails (--no-pdb: raise its exception here, with the cell's line numbers); also after a "
        "kernel restart, for local and Azure jobs (default: the job's first failure, of the latest job)",
    ),
    Command(
        "delete",
        jobs.delete,
        "%azpar delete JOB [JOB ...]",
        "remove jobs' results, items and logs from the job store (an Azure job's Batch job and containers too)",
    ),
    Command(
        "cache",
        cache.cache,
        "%azpar cache [clear]",
        "what --cache may reuse (jobs, bytes, the cache_max_bytes bound); clear: forget it all (the jobs stay)",
    ),
    Command(
        "pool",
        pool.pool,
        "%azpar pool [status|create|delete|resize DEDICATED SPOT] [--profile NAME]",
        "the pool's nodes, or manage an Azure pool",
        synopsis="%azpar pool [status|create|delete|resize D S] [--profile NAME]",
    ),
    Command("backend", profiles.backend, "%azpar backend", "say which backend cells run on"),
    Command(
        "use",
        profiles.use,
        "%azpar use PROFILE (or %azpar use local)",
        "run later cells with this profile (local: the local pool)",
        synopsis="%azpar use PROFILE|local",
    ),
    Command(
        "verbose",
        verbose.verbose,
        "%azpar verbose [on|info|http|off]",
        "show what azpar does on stderr (on: in detail; http: also the Azure SDK's requests, secrets redacted); "
        "alone: the current level. AZPAR_LOG=debug|info|http sets it at import",
    ),
    Command(
        "status",
        pool.status,
        "%azpar status",
        "the pools of this kernel: nodes, states, running tasks, queue (live in a notebook)",
    ),
    Command(
        "config",
        profiles.config,
        "%azpar config [PROFILE] [FIELD=VALUE ...]",
        "edit a profile: a form in a notebook; with FIELD=VALUE, set and save those fields",
    ),
    Command(
        "storage",
        storage.storage,
        "%azpar storage ls [az://CONTAINER/PATH] | get az://CONTAINER/PATH LOCAL | put LOCAL "
        "az://CONTAINER/PATH | rm [-r] [-y] az://CONTAINER/PATH  [--profile NAME]",
        "the profile's Blob storage (rm lists what it would delete unless -y)",
        synopsis="%azpar storage ls [az://C/PATH] | get az://C/PATH LOCAL | put LOCAL az://C/PATH | "
        "rm [-r] [-y] az://C/PATH  [--profile NAME]",
    ),
    Command(
        "doctor",
        environment.doctor,
        "%azpar doctor [PROFILE] [--run]",
        "pre-flight check of a profile (default: the active one): what its identity can and cannot do, each "
        "line with its fix (--run: also one iteration end to end)",
    ),
    Command(
        "env",
        environment.env,
        "%azpar env [PROFILE] [JOB]",
        "what a job installs on the nodes (default: the latest job, with its profile): each distribution, its "
        "version, where it comes from, and whether the pool's image has it",
    ),
)

HELP_WORDS = ("help", "-h", "--help")


def commands() -> dict[str, Command]:
    """The table by name, read when a line runs (so an entry added to ``COMMANDS`` is everywhere at once)."""
    return {command.name: command for command in COMMANDS}


def help_text(topic: str | None = None) -> str:
    """``%azpar help [COMMAND]``: that command's line, or every command's (also for a topic that is none)."""
    table = commands()
    if topic is not None and topic in table:
        return table[topic].help_line()
    return "\n".join([ONE_LINE_LOOP, *(command.help_line() for command in table.values())])


ONE_LINE_LOOP = (
    "%azpar [options] for TARGET in ITERABLE: STATEMENT   a loop written on one line, run as a %%azpar cell with "
    "that body (same options; binds -o NAME, default azpar_result)"
)


def missing_command() -> str:
    return (
        f"usage: %azpar COMMAND [ARGS], with COMMAND one of {', '.join(commands())}; %azpar help lists what each does "
        "(or `%azpar [options] for x in xs: STATEMENT`, a loop on one line)"
    )


def unknown_command(name: str) -> str:
    return f"unknown %azpar command {name!r}; expected one of {', '.join(sorted(commands()))} (see %azpar help)"


def run_line(context: MagicContext, line: str) -> Any:
    """Dispatch ``%azpar COMMAND ARGS`` to the command's handler with its usage line."""
    __tracebackhide__ = True  # noqa: F841 - a dispatch frame: `%azpar debug --no-pdb` shows the body's frames
    words = line.split()
    if not words:
        raise UsageError(missing_command())
    if words[0] in HELP_WORDS:
        print(help_text(words[1] if len(words) > 1 else None))
        return None
    command = commands().get(words[0])
    if command is None and (words[0] == "for" or words[0].startswith("-")):
        return cell.run_cell(context, line, None)  # a loop on one line: %azpar [options] for x in xs: f(x)
    if command is None:
        raise UsageError(unknown_command(words[0]))
    return command.handler(context, words[1:], f"usage: {command.usage}")


@magics_class
class AzparMagics(Magics):
    """``%%azpar`` runs loop iterations in parallel; ``%azpar`` manages jobs.

    Its traits are the top-level settings as IPython configures every extension: ``%config AzparMagics.workers = 4``
    in a session, ``c.AzparMagics.workers = 4`` in ipython_config.py. They form one layer of azpar's settings,
    above the ``AZPAR_*`` environment variables and the TOML files and below a cell's own options; None (the
    default) leaves the setting to those lower layers. A setting the administrator locked cannot be set here.
    """

    workers = Int(
        None,
        allow_none=True,
        help="Size of the local pool a cell uses without --workers (at least 1). None: the AZPAR_WORKERS "
        "variable or the config files decide (default: one worker per CPU this kernel may use).",
    ).tag(config=True)
    profile = Unicode(
        None,
        allow_none=True,
        help="Profile cells use without --profile (a [profiles.NAME] table of the config files), or 'local' for "
        "the local pool; setting it in a session also ends a '%azpar use'. None: the config files decide.",
    ).tag(config=True)
    display = CaselessStrEnum(
        ("auto", "widget", "text"),
        default_value=None,
        allow_none=True,
        help="How a job shows its progress: widget (a live panel), text (one line), auto (the panel where the "
        "frontend draws widgets). None: the AZPAR_DISPLAY variable decides (default: auto).",
    ).tag(config=True)
    quiet = Bool(False, help="Run every cell and rerun as with -q: no progress line.").tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any):
        self._configured = False  # ipython_config.py's values arrive inside __init__; %config's after it
        self.context = MagicContext(shell)
        super().__init__(shell, **kwargs)
        self._configured = True
        self._share()

    @validate("workers")
    def _check_workers(self, proposal: Any) -> Any:
        value = self._checked("workers", proposal["value"])
        if value is not None and value > session.workers_limit():  # the bound --workers has
            raise TraitError(
                f"AzparMagics.workers must be at most {session.workers_limit()} ({session.WORKERS_PER_CPU} per CPU "
                f"this kernel may use, at least {session.WORKERS_FLOOR}), got {value}"
            )
        return value

    @validate("profile")
    def _check_profile(self, proposal: Any) -> Any:
        value = self._checked("profile", proposal["value"])
        if value is not None and value != "local" and self._configured:
            try:  # a name set in a session must exist now (ipython_config.py's is checked when a cell uses it)
                config.load_profile(value)
            except ConfigError as exc:
                raise TraitError(f"AzparMagics.profile: {exc}") from None
        return value

    def _checked(self, key: str, value: Any) -> Any:
        """The layer's value: config's own rule for ``key``, and, when set in a session, refused if the
        administrator locked it (from ipython_config.py a locked value is refused by every cell that reads it,
        with the same message, rather than failing the extension's load)."""
        if value is None:
            return None
        try:
            if self._configured:
                config.check_unlocked(key, config.IPYTHON_LAYER)
            return config.coerce_setting(key, value, f"AzparMagics.{key}")
        except ConfigError as exc:
            raise TraitError(str(exc)) from None

    @observe("workers", "profile", "display", "quiet")
    def _changed(self, change: Any) -> None:
        if change["name"] == "profile" and self._configured:
            session.use(None)  # the value just set is the profile; an earlier %azpar use no longer overrides it
        self._share()

    def _share(self) -> None:
        """Hand the trait values to the layers that read them: the settings (workers, profile), the display
        choice and the magics' context (quiet)."""
        if not getattr(self, "_configured", False):
            return
        profile = session.LOCAL if self.profile == "local" else self.profile
        config.set_ipython_settings({"workers": self.workers, "profile": profile})
        choose_mode(self.display)
        self.context.quiet = self.quiet

    azpar_cell = cast(Marker, cell_magic("azpar"))(cell.azpar_cell)  # its options and %%azpar? text: cell.py

    @cast(Marker, line_magic("azpar"))
    @no_var_expand  # job ids, paths and FIELD=VALUE as typed (see azpar_cell)
    def azpar_line(self, line: str) -> Any:
        """Manage azpar jobs and pools: ``%azpar COMMAND [ARGS]``; or run a loop written on one line,
        ``%azpar [options] for TARGET in ITERABLE: STATEMENT``, as a ``%%azpar`` cell with that body.

        JOB is a job id (or its last characters) or a job's --name (the newest job of that name);
        the latest job when omitted. Each command
        says more with ``%azpar help COMMAND``.
        """
        __tracebackhide__ = True  # noqa: F841 - as run_line's
        return run_line(self.context, line)
