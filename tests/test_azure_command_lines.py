"""Every command line the Azure backend sends has the one shape the sources show Batch
splitting as a shell would (commands.py docstring): one line, one level of single quotes,
nothing inside needing a second level. The test service refuses anything else by default
(rules.check_command_line), so these cells run only if the start task, the job preparation
task (with and without ``--packages``), the tasks (inline and file input) and the cloud merge
task all pass it. The profile's ``start_commands`` hold quotes and several lines, as a user
writes them: they must reach the node's shell unchanged. Real kernels' shell, the test Batch
service and Azurite, as in test_azure_backend."""

from __future__ import annotations

import base64
import json
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from azpar_magic.backends.azure import commands, pool
from tests.batch_emulator import rules
from tests.batch_emulator.errors import BatchServiceError
from tests.wheels import node_pip_options, shared_folder, tiny_wheel

from .azure_support import azure_profile

pytestmark = [pytest.mark.azure, pytest.mark.timeout(240)]
POOL = "azpar-test"
MARKER = "azpar-start-marker"
#: A user's start commands: quotes of both kinds, a command over several lines, and a ``cd``.
START_COMMANDS = [
    f'echo "it\'s the start task on $AZ_BATCH_POOL_ID" > "$AZ_BATCH_NODE_SHARED_DIR/{MARKER}"',
    f"if [ -d / ]; then\n  printf '%s\\n' 'two lines, \"quoted\"' >> $AZ_BATCH_NODE_SHARED_DIR/{MARKER}\nfi",
    "cd /",
]


@pytest.fixture
def cl_wheels() -> Iterator[Path]:
    """A folder every user can read with one small wheel, ``azpar-cl-pkg`` 2.0."""
    folder = shared_folder("azpar-cl-wheels-")
    tiny_wheel(folder, "azpar-cl-pkg", "2.0", 700)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _sent(batch) -> list[tuple[str, str, str, dict]]:
    """(operation, property, command line, that task's environment) of every command line
    the backend sent in a create request."""
    found = []
    for rec in batch.requests:
        kind = {"Pools_CreatePool": "pool", "Jobs_CreateJob": "job", "Tasks_CreateTask": "task",
                "Tasks_CreateTaskCollection": "task"}.get(rec.operation_id)
        if kind is None or not isinstance(rec.body, dict):
            continue
        bodies = rec.body.get("value") or [] if rec.operation_id == "Tasks_CreateTaskCollection" else [rec.body]
        for body in bodies:
            for prop, line in rules.command_lines(body, kind):
                owner = {"pool": body.get("startTask"), "job": body.get("jobPreparationTask")}.get(kind, body)
                env = {e["name"]: e["value"] for e in (owner or {}).get("environmentSettings") or []}
                found.append((rec.operation_id, prop, line, env))
    return found


def _script(env: dict) -> str:
    return base64.b64decode(env[commands.SCRIPT_ENV]).decode()


def test_every_command_line_sent_passes_the_strict_service(batch, azurite, ip, run_cell, tmp_path, monkeypatch,
                                                           cl_wheels):
    assert batch.strict_command_lines  # the service's default
    monkeypatch.chdir(tmp_path)
    options = node_pip_options(extra_find_links=cl_wheels)
    with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1, pip_options=options,
                       start_commands=START_COMMANDS):
        plain = run_cell("%%azpar -q -o plain for x in range(3):\nx * 2")  # inline input, no --packages
        assert plain.success, plain.error
        big = run_cell("%%azpar -q -o big for s in ['a' * 7000, 'b' * 7000]:\nlen(s)")  # file input
        assert big.success, big.error
        merged = run_cell("%%azpar -q --packages azpar-cl-pkg==2.0 --merge cloud -o merged for x in range(3):\n"
                          "import azpar_cl_pkg\nazpar_cl_pkg.VALUE + x")
        assert merged.success, merged.error
    assert ip.user_ns["plain"] == [0, 2, 4]
    assert ip.user_ns["big"] == [7000, 7000]
    assert ip.user_ns["merged"] == [700, 701, 702]

    with batch.cond:
        node = next(iter(batch.pools[POOL.lower()].nodes.values()))
    # The user's lines ran in a shell, unchanged: both quotes, the multi-line `if`, the variables.
    assert (node.root / "shared" / MARKER).read_text() == "it's the start task on azpar-test\ntwo lines, \"quoted\"\n"

    sent = _sent(batch)
    for operation, prop, line, _ in sent:
        rules.check_command_line(prop, line)  # what the service did: refuse nothing
        assert "\n" not in line and len(shlex.split(line)) <= 3, (operation, line)
    by_kind = {}
    for operation, prop, line, env in sent:
        by_kind.setdefault(prop if operation != "Tasks_CreateTaskCollection" else "task", []).append((line, env))
    (start_line, start_env), = by_kind["startTask.commandLine"]
    assert start_line == commands.RUN_SCRIPT and set(start_env) == {commands.SCRIPT_ENV, commands.INSTALLER_ENV}
    assert all(c in _script(start_env) for c in START_COMMANDS)  # the script holds them as written
    preps = by_kind["jobPreparationTask.commandLine"]
    # Every job preparation checks the node's Python first (issue 15), so each is a script.
    assert [line for line, _ in preps] == [commands.RUN_SCRIPT] * 3
    assert "azpar-cl-pkg==2.0" in _script(preps[2][1])
    tasks = [line for line, _ in by_kind["task"]] + [line for line, _ in by_kind.get("commandLine", [])]
    assert any(f"env:{commands.TASK_ENV}" in t for t in tasks)  # inline input
    assert any(f" {commands.TASK_FILE} " in t for t in tasks)  # file input
    assert any("--merge results 3" in t for t in tasks)  # the cloud merge task


def test_the_old_multi_line_shapes_are_refused_by_the_strict_service():
    """What the backend sent before (a multi-line script with '"'"' quoting in the command
    line) is what the service now refuses; the new start task's command line is accepted."""
    script = "set -e\n" + "\n".join(START_COMMANDS)
    with pytest.raises(BatchServiceError) as e:
        rules.check_command_line("startTask.commandLine", "/bin/sh -c " + shlex.quote(script))
    assert e.value.status == 400 and "line break" in dict(e.value.values)["Reason"]
    with pytest.raises(BatchServiceError):
        rules.check_command_line("commandLine", "/bin/sh -c " + shlex.quote("python -c 'print(1)'"))
    new = commands.start_task_command("0.4.1", ["numpy==2.0"], ["--index-url", "https://x/simple"], START_COMMANDS)
    rules.check_command_line("startTask.commandLine", new.command_line)


@pytest.mark.parametrize("packages", [[], ["azpar-x==1.0", "y>=2,<3"]])
def test_every_builder_makes_one_line_with_one_level_of_quotes(packages):
    """Quick check of each builder (the cells above run them for real)."""
    options = ["--find-links", "/a folder/with 'quotes'"]
    lines = [commands.start_task_command("0.4.1", packages, options, START_COMMANDS).command_line,
             commands.job_preparation_command(packages, options).command_line,
             commands.task_command(packages, options, inline=True),
             commands.task_command(packages, options, inline=False),
             commands.merge_command(packages, options, 7)]
    for line in lines:
        rules.check_command_line("commandLine", line)
    prep = commands.job_preparation_command(packages, options)
    # Every job preparation ends with the node's check (worker.py --check), packages or not.
    script = base64.b64decode(dict(prep.environment)[commands.SCRIPT_ENV]).decode()
    assert script.endswith("\n" + commands.check_line(packages, options))
    assert (commands.INSTALLER_ENV in dict(prep.environment)) == bool(packages)
    assert pool.environment_settings(prep) is not None


def _previous_start_line(profile) -> str:
    """The start task command line the previous version sent: the whole script quoted once
    more, with the installer in a ``python -c`` argument (a second level of quotes)."""
    import dill

    options = shlex.quote(json.dumps(list(profile["pip_options"])))
    script = "\n".join(["set -e", *profile["start_commands"], f'mkdir -p "{commands.SITE_DIR}"',
                        f'python -c {shlex.quote(commands._INSTALLER)} "{commands.SITE_DIR}" {options} '
                        f"dill=={dill.__version__}"])
    return "/bin/sh -c " + shlex.quote(script)


def test_a_pool_made_by_the_previous_version_is_used_as_it_is(batch, azurite, ip, run_cell, tmp_path, monkeypatch):
    """The backend attaches to an existing pool whatever its start task (pool.ensure compares
    nothing), and the folder that start task installed dill into (SITE_DIR) is unchanged, so a
    pool made before this change (Azure accepted its start task then) keeps working."""
    from azpar_magic import config

    from .batch_emulator.pytest_plugin import make_batch_client

    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1, start_commands=START_COMMANDS) as name:
        profile = config.load_profile(name)
        old = pool.pool_definition(profile)
        old.start_task.command_line, old.start_task.environment_settings = _previous_start_line(profile), None
        batch.strict_command_lines = False  # as made then: the service now refuses that line
        client = make_batch_client(batch)
        try:
            client.create_pool(old)
        finally:
            client.close()
        batch.strict_command_lines = True
        run = run_cell("%%azpar -q -o r for x in range(3):\nx + 1")
        assert run.success, run.error
    assert ip.user_ns["r"] == [1, 2, 3]
    assert len(batch.requests_for("Pools_CreatePool")) == 1  # the old pool was used, not replaced
    with batch.cond:
        assert batch.pools[POOL.lower()].start_task["commandLine"] == _previous_start_line(profile)
