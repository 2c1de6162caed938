"""The commands that check where iterations run: ``%azpar env`` (what a job installs on the nodes) and
``%azpar doctor`` (a profile's pre-flight check)."""

from __future__ import annotations

import sys

from IPython.core.error import UsageError
from IPython.display import display

from ... import session
from ..context import MagicContext, find_job
from ..usage import SETTINGS, usage_errors
from ..words import read_words


def env(context: MagicContext, words: list[str], usage: str) -> None:
    """``%azpar env [PROFILE] [JOB]`` (envreport.py): a word naming a profile is the profile,
    the other the job; without a profile, the job's own (its manifest), else the active one."""
    from ...config import profile_names
    from .. import envreport

    words = read_words(words, usage).rest
    if len(words) > 2:
        raise UsageError(usage)
    names = set(profile_names())
    profiles = [w for w in words if w in names]
    jobs = [w for w in words if w not in names]
    if len(profiles) > 1 or len(jobs) > 1:
        raise UsageError(f"{usage}; {' and '.join(words)} are both profile names")
    job = find_job(jobs[0] if jobs else None)
    manifest = job.manifest or {}
    profile = profiles[0] if profiles else (manifest.get("backend_info") or {}).get("profile")
    with usage_errors(SETTINGS):
        engine = (
            session.engine(profile=profile)
            if profile
            else session.engine_for_stored({"backend": job.backend_name, **manifest})
        )
    sys.stdout.write(envreport.report(job, engine.backend))


def doctor(context: MagicContext, words: list[str], usage: str) -> None:
    """The doctor's table (azpar_magic.doctor): HTML in a notebook, text elsewhere."""
    from ... import doctor as checks

    read = read_words(words, usage, flags=("--run",))
    if len(read.rest) > 1:
        raise UsageError(usage)
    display(checks.diagnose(read.rest[0] if read.rest else None, run="--run" in read.flags))
