"""Who the jobs are for, and the slug that names them: valid where Azure is strictest (blob
container names), distinct for distinct users, and a prefix no other user's names share."""

from __future__ import annotations

import re

import pytest

from azpar_magic import identity, jobstore as store
from azpar_magic.run import engine

CONTAINER = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")  # lowercase, digits, single hyphens
BATCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NAMES = ["alice", "Alice", "bob.smith", "bob-smith", "bobsmith", "bob_smith", "x", "ünïcødé@example.org",
         "a" * 20, "a" * 21, "a" * 80, "someone.with.a.very.long.name@example.org", "1234", "-", "..."]


@pytest.mark.parametrize("name", NAMES)
def test_job_ids_of_any_user_are_valid_batch_ids_and_container_stems(name, monkeypatch):
    monkeypatch.setenv(identity.HUB_USER_ENV, name)
    job_id = engine.new_job_id()
    assert job_id.startswith(f"azpar-{identity.slug(name)}-")
    assert BATCH_ID.match(job_id) and len(job_id) <= 55, job_id
    for container in (f"{job_id}-in", f"{job_id}-out", f"azpar-{identity.slug(name)}-cache"):
        assert CONTAINER.match(container), container
    assert store.valid_id(job_id)


def test_slugs_keep_users_apart():
    slugs = {identity.slug(name) for name in NAMES}
    assert len(slugs) == len(NAMES)  # no two of these users share a slug
    assert identity.slug("alice") == "alice"  # a name that fits stays readable
    for name in NAMES:
        assert re.fullmatch(r"[a-z0-9]{1,%d}" % identity.SLUG_MAX, identity.slug(name))
    # No user's prefix is the start of another's: slugs hold no hyphen.
    prefixes = [f"azpar-{s}-" for s in slugs]
    assert not [(a, b) for a in prefixes for b in prefixes if a != b and b.startswith(a)]


def test_the_hub_user_beats_the_os_user(monkeypatch):
    monkeypatch.delenv(identity.HUB_USER_ENV, raising=False)
    assert identity.user() == identity.os_user() and identity.hub_user() is None
    monkeypatch.setenv(identity.HUB_USER_ENV, "ada")
    assert identity.user() == "ada" == store.creator()
