"""Saving a profile (the form's Save, ``%azpar config NAME field=value``) changes that profile's table and
nothing else of the file: the user's comments, ordering, spacing, other profiles and TOML values the writer has
no use for (dates) stay byte for byte."""

from __future__ import annotations

import stat

from azpar_magic import config

USER_FILE = """\
# my azpar settings -- keep this comment
profile = "team"   # the default profile
updated = 2026-11-30T08:00:00Z

[profiles.team]   # the shared account
batch_account_url = "https://team.westeurope.batch.azure.com"  # from the portal
vm_size = "Standard_D4s_v3"
# spot is cheaper
spot_nodes = 2

[profiles.other]
backend = "local"
task_slots_per_node = 3

[tools]
reviewed = 2026-11-01
"""


def _outside_team(text: str) -> str:
    start = text.index("[profiles.team]")
    end = text.index("[profiles.other]")
    return text[:start] + text[end:]


def test_saving_one_profile_keeps_every_other_byte_of_the_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(USER_FILE)
    config.save_profile("team", {"batch_account_url": "https://team.westeurope.batch.azure.com",
                                 "vm_size": "Standard_D8s_v3", "spot_nodes": 2}, path)
    text = path.read_text()
    assert _outside_team(text) == _outside_team(USER_FILE)
    team = text[text.index("[profiles.team]"):text.index("[profiles.other]")]
    assert "# the shared account" in team and "# from the portal" in team and "# spot is cheaper" in team
    assert 'vm_size = "Standard_D8s_v3"' in team
    assert config._read_toml(path)["profiles"]["team"]["vm_size"] == "Standard_D8s_v3"  # read back by the reader
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_fields_back_at_their_default_leave_the_table_and_new_fields_join_it(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(USER_FILE)
    config.save_profile("team", {"batch_account_url": "https://team.westeurope.batch.azure.com",
                                 "vm_size": "Standard_D4s_v3", "pool_id": "team-pool"}, path)
    data = config._read_toml(path)
    assert data["profiles"]["team"] == {"batch_account_url": "https://team.westeurope.batch.azure.com",
                                        "vm_size": "Standard_D4s_v3", "pool_id": "team-pool"}
    assert data["updated"].year == 2026 and data["tools"]["reviewed"].month == 11
    assert _outside_team(path.read_text()) == _outside_team(USER_FILE)


def test_a_new_profile_is_added_after_the_others_and_a_new_file_is_created(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(USER_FILE)
    config.save_profile("gpu", {"vm_size": "Standard_NC6s_v3", "packages": ["torch==2.5.1"]}, path)
    text = path.read_text()
    block = '[profiles.gpu]\nvm_size = "Standard_NC6s_v3"\npackages = ["torch==2.5.1"]\n\n'
    assert text.index(block) > text.index("[profiles.other]")  # after the other profiles
    assert text.replace(block, "") == USER_FILE
    assert config._read_toml(path)["profiles"]["gpu"] == {"vm_size": "Standard_NC6s_v3",
                                                          "packages": ["torch==2.5.1"]}
    fresh = tmp_path / "sub" / "new.toml"
    config.save_profile("solo", {"backend": "local", "task_slots_per_node": 2}, fresh)
    assert config._read_toml(fresh) == {"profiles": {"solo": {"backend": "local", "task_slots_per_node": 2}}}
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
