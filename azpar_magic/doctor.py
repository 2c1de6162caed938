"""``%azpar doctor [PROFILE] [--run]`` and ``python -m azpar_magic doctor``: a pre-flight check
of what a profile's identity can do, before the first real cell (issue 14).

One state object, :class:`DoctorReport`, holds the checks in order; its text view (the
terminal, ``repr``) and its HTML view (``_repr_html_``, the notebook) are two renderings of
the same rows, as dask's cluster repr does. Each row has a status (ok / warning / failed /
skipped) and, when not ok, the fix in one sentence. A check whose needs did not pass is not
run: it is shown as skipped, saying which check it waited for.

The Azure questions and how each is asked without changing anything are in
``backends/azure/doctor.py``; this module checks the profile (the configuration layer's own
validation), runs the probes, adds the optional one-iteration run through the normal
engine (``--run``), and renders. The local backend gets a short table too (workers, CPUs,
memory), so the command works for every profile.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from . import config
from .backends.cpus import usable_cpus
from .errors import ConfigError

OK, WARNING, FAILED, SKIPPED = "ok", "warning", "failed", "skipped"
PASSING = (OK, WARNING)
_COLOURS = {OK: "#2e7d32", WARNING: "#ef6c00", FAILED: "#c62828", SKIPPED: "#757575"}
RUN_TIMEOUT = 900.0  # seconds the --run job may take (a new pool's first node takes minutes)


@dataclass(frozen=True)
class Check:
    """One row of the table."""

    key: str
    title: str
    status: str
    detail: str
    fix: str = ""


@dataclass
class DoctorReport:
    """What the doctor found for one profile: rows in check order, text and HTML views."""

    profile: str | None
    backend: str
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(c.status == FAILED for c in self.checks)

    def status(self, key: str) -> str | None:
        """The status of check ``key`` (None when it is not in the table)."""
        return next((c.status for c in self.checks if c.key == key), None)

    def summary(self) -> str:
        counts = {s: sum(c.status == s for c in self.checks) for s in (OK, WARNING, FAILED, SKIPPED)}
        said = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        verdict = "not ready: fix the failed lines" if counts[FAILED] else "ready"
        return f"{self._who()}: {verdict} ({said})"

    def _who(self) -> str:
        if not self.profile:
            return f"azpar doctor ({self.backend} backend)"
        return f"azpar doctor, profile {self.profile}" + (f" ({self.backend} backend)" if self.backend != "?" else "")

    def text(self) -> str:
        """The table as plain text: status, check, what was found; the fix indented below."""
        width = max([len(c.title) for c in self.checks] + [5])
        lines = [self.summary()]
        for c in self.checks:
            lines.append(f"  {c.status:<8} {c.title:<{width}}  {c.detail}")
            if c.fix:
                lines.append(f"  {'':<8} {'':<{width}}  fix: {c.fix}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.text())

    def _repr_html_(self) -> str:
        rows = []
        for c in self.checks:
            colour = _COLOURS.get(c.status, "#000")
            fix = f'<div class="azpar-doctor-fix"><b>fix:</b> {escape(c.fix)}</div>' if c.fix else ""
            rows.append(
                f'<tr class="azpar-doctor-row" data-check="{escape(c.key)}" data-status="{escape(c.status)}">'
                f'<td style="color:{colour};font-weight:600;white-space:nowrap;text-align:left">{escape(c.status)}</td>'
                f'<td style="white-space:nowrap;text-align:left">{escape(c.title)}</td>'
                f'<td style="text-align:left">{escape(c.detail)}{fix}</td></tr>'
            )
        head = (
            f'<div class="azpar-doctor-summary" data-failed="{str(self.failed).lower()}">'
            f"<b>{escape(self.summary())}</b></div>"
        )
        return (
            f'<div class="azpar-doctor">{head}<table><thead><tr><th>status</th><th>check</th>'
            f'<th style="text-align:left">found</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
        )


Probe = tuple[str, str, tuple[str, ...], Callable[[], tuple[str, str, str]]]


def run_checks(probes: Sequence[Probe], done: Sequence[Check] = ()) -> list[Check]:
    """Run ``probes`` in order after the rows ``done``; a probe whose needs did not pass is
    shown as skipped with the check it waited for. A probe that raises becomes a failed row
    (the table is always complete)."""
    rows = list(done)
    for key, title, needs, probe in probes:
        by_key = {c.key: c for c in rows}
        blocked = [by_key[n] for n in needs if n in by_key and by_key[n].status not in PASSING]
        if blocked:
            first = blocked[0]
            rows.append(Check(key, title, SKIPPED, f"not checked: {first.title} {first.status}"))
            continue
        try:
            status, detail, fix = probe()
        except Exception as exc:  # a probe's own bug must not hide the other rows
            status, detail, fix = (
                FAILED,
                f"the check itself failed: {type(exc).__name__}: {exc}",
                ("Run the doctor again; if this stays, report it with the line above."),
            )
        rows.append(Check(key, title, status, detail, fix))
    return rows


def diagnose(
    profile: str | None = None,
    *,
    run: bool = False,
    environ: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> DoctorReport:
    """Check ``profile`` (default: the active one; none: the local pool) and return the report.

    ``run``: also run a one-iteration job end to end through the normal engine (on Azure it
    creates the pool when missing and the profile allows it, and costs a node's time)."""
    from . import session

    try:
        name = session.active_profile(profile)
    except ConfigError as exc:
        return DoctorReport(profile, "?", [Check("profile", "profile", FAILED, str(exc), _config_fix(profile))])
    if not name or name == session.LOCAL:
        return DoctorReport(None, "local", _local_checks(None, run))
    try:
        loaded = config.load_profile(name, environ=environ)
    except ConfigError as exc:
        return DoctorReport(name, "?", [Check("profile", "profile", FAILED, str(exc), _config_fix(name))])
    if loaded["backend"] == "local":
        return DoctorReport(name, "local", _local_checks(loaded, run))
    return DoctorReport(name, "azure", _azure_checks(loaded, run, environ, sleep))


def _config_fix(name: str | None) -> str:
    target = name or "NAME"
    return (
        f"Correct it with %azpar config {target} FIELD=VALUE (or in the file the message names), "
        "then run the doctor again."
    )


def _profile_check(loaded: config.Profile) -> Check:
    """Check 1: the configuration layer's own validation of the whole profile."""
    problems = config.validate_profile(loaded.values)
    if not problems:
        return Check("profile", "profile", OK, f"profile {loaded.name} is complete and valid")
    listed = "; ".join(
        f"{key} {message} (from {config.layer_name(loaded.sources.get(key, 'defaults'))})"
        for key, message in problems.items()
    )
    return Check(
        "profile",
        "profile",
        FAILED,
        listed,
        f"Set the fields named with %azpar config {loaded.name} FIELD=VALUE, then run the doctor again.",
    )


def _azure_checks(
    loaded: config.Profile, run: bool, environ: Mapping[str, str] | None, sleep: Callable[[float], None]
) -> list[Check]:
    from .backends.azure import doctor as azure_doctor

    first = _profile_check(loaded)
    if first.status != OK:  # the URLs may be missing: nothing further can even be asked
        doctor = None
        probes: list[Probe] = [(k, t, n, _never) for k, t, n, _ in _azure_probe_list()]
    else:
        doctor = azure_doctor.AzureDoctor(loaded, environ, sleep=sleep)
        probes = list(azure_doctor.probes(doctor))
    if run:
        probes.append(("run", "one-iteration run", ("submit", "pool", "image", "sas"), lambda: _run_one(loaded.name)))
    try:
        return run_checks(probes, [first])
    finally:
        if doctor is not None:
            doctor.close()


def _azure_probe_list() -> list[Probe]:
    """The Azure rows' names and needs (for a profile too broken to build the probes)."""
    from .backends.azure import doctor as azure_doctor

    return azure_doctor.probes(azure_doctor.AzureDoctor.__new__(azure_doctor.AzureDoctor))


def _never() -> tuple[str, str, str]:
    raise AssertionError("not run: the profile check failed")


def _run_one(profile: str | None) -> tuple[str, str, str]:
    """Check 9: one iteration through the normal engine, as a cell would run it."""
    from . import session
    from .errors import SubmitError
    from .jobs import JobOptions
    from .run.parsing import parse_cell
    from .run.request import RunRequest

    started = time.monotonic()
    engine = session.engine(profile=profile) if profile else session.engine(backend="local")
    request = RunRequest(parse_cell("for i in range(1)", "i + 41"), {}, JobOptions(retries=0, timeout=RUN_TIMEOUT))
    try:
        job = engine.submit(request)
    except (SubmitError, RuntimeError, ConfigError) as exc:
        return FAILED, f"the job was not submitted: {exc}", "Fix what the message names, then run the doctor again."
    session.remember(job)
    try:
        value = job.result(timeout=RUN_TIMEOUT)
    except TimeoutError:
        job.cancel()
        return (
            FAILED,
            f"job {job.id} did not finish within {RUN_TIMEOUT:.0f} s (cancelled)",
            "Look at the pool's nodes (%azpar pool status): a node that never becomes idle names the cause.",
        )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (
            FAILED,
            f"job {job.id} failed: {first}",
            f"Read the iteration's log (%azpar logs {job.id} 0) for the whole message.",
        )
    if value != [41]:
        return FAILED, f"job {job.id} returned {value!r}, not [41]", "Report this: the run lost or changed a value."
    return OK, f"job {job.id}: one iteration ran and its value came back ({time.monotonic() - started:.1f} s)", ""


# ---------------------------------------------------------------------------------------- local


def _memory_bytes() -> tuple[int | None, int | None]:
    """(total, available) memory of this machine from /proc/meminfo (None where unknown)."""
    found: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    found[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return found.get("MemTotal"), found.get("MemAvailable")


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _local_checks(loaded: config.Profile | None, run: bool) -> list[Check]:
    """The local pool: workers it starts, CPUs this process may use, memory per worker."""
    rows: list[Check] = []
    if loaded is not None:
        rows.append(_profile_check(loaded))
    cpus, why = usable_cpus()
    try:
        workers = config.load_settings()["workers"] or cpus
        source = "the workers setting" if config.load_settings()["workers"] else why
        rows.append(Check("workers", "workers", OK, f"{workers} worker processes ({source})"))
    except ConfigError as exc:
        workers = cpus
        rows.append(Check("workers", "workers", FAILED, str(exc), "Fix the setting the message names."))
    rows.append(
        Check(
            "cpus",
            "CPUs",
            WARNING if workers > cpus else OK,
            f"{cpus} usable by this process (machine: {os.cpu_count()})",
            f"More workers ({workers}) than CPUs: lower workers to {cpus} unless iterations mostly wait."
            if workers > cpus
            else "",
        )
    )
    total, available = _memory_bytes()
    if total is None:
        rows.append(Check("memory", "memory", SKIPPED, "this system does not report its memory (/proc/meminfo)"))
    else:
        free = available if available is not None else total
        per = free // max(workers, 1)
        low = per < 256 * 2**20
        rows.append(
            Check(
                "memory",
                "memory",
                WARNING if low else OK,
                f"{_gib(free)} available of {_gib(total)}: about {_gib(per)} per worker",
                "Little memory per worker: run fewer workers (--workers N) or close other kernels." if low else "",
            )
        )
    if run:
        name = loaded.name if loaded is not None else None
        rows = run_checks([("run", "one-iteration run", ("workers",), lambda: _run_one(name))], rows)
    return rows
