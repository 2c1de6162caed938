"""The test suite reads nothing outside the repository that could steer it: not the tester's
own azpar configuration in the home folder (a default profile there would send the core tests'
cells to Azure), and not the sibling reference folder (tests/emulator/test_batch_api.py covers
the test Batch service)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from azpar_magic import config


def test_the_users_own_config_is_not_read():
    path = config.user_config_path().resolve()
    assert Path(tempfile.gettempdir()).resolve() in path.parents, f"the tests read the azpar config at {path}"
