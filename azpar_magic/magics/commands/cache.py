"""``%azpar cache``: what ``--cache`` may reuse (how many jobs, how many bytes of their records, the bound), and
``%azpar cache clear`` to forget it all. The jobs stay in the store; only their values are no longer reused."""

from __future__ import annotations

from IPython.core.error import UsageError

from ... import api
from ...jobstore import RECORDS, cache as stored_cache, store_root
from ...run.cache import max_bytes
from ..context import MagicContext
from ..words import read_words


def cache(context: MagicContext, words: list[str], usage: str) -> None:
    """Say what the cache holds, or clear it."""
    rest = read_words(words, usage).rest
    if rest == ["clear"]:
        count = api.cache_clear()
        print(
            f"azpar: cache cleared: the values of {count} job{'' if count == 1 else 's'} are no longer reused "
            "(the jobs stay in %azpar jobs)"
        )
        return
    if rest:
        raise UsageError(usage)
    root = store_root()
    jobs = stored_cache.indexed_jobs(root)
    size = 0
    for _, job_id in jobs:
        try:
            size += (root / job_id / RECORDS).stat().st_size
        except OSError:
            pass
    print(
        f"azpar: the cache holds the values of {len(jobs)} job{'' if len(jobs) == 1 else 's'} "
        f"({size / 1e6:,.1f} MB of their records; the bound, cache_max_bytes, is {max_bytes() / 1e6:,.0f} MB). "
        "%azpar cache clear forgets them."
    )
