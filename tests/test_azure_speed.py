"""How fast the Azure backend submits and follows, as behaviour rather than timings (issue 16):
the first group of tasks goes out while the rest are still being built, the definitions sent are
exactly the JSON the SDK's models would have made, polls start close together and space out to
the poll interval, and the progress line adds no node listing of its own while nothing moves."""

from __future__ import annotations

import datetime as dt
import threading
import time
from types import SimpleNamespace

import pytest

import azpar_magic
from azpar_magic.backends.azure import run as azure_run
from azpar_magic.backends.azure.submission import PendingTask, TaskAdder, wire_json
from azpar_magic.backends.base import timeout_grace


class _RecordingClient:
    """Accepts every add; remembers how many definitions had been built at its first call."""

    def __init__(self, built: list[int], first_call: threading.Event):
        self.built, self.first_call = built, first_call
        self.built_at_first_call: int | None = None
        self.bodies: list[dict] = []

    def create_task_collection(self, job_id, body, **kwargs):
        if self.built_at_first_call is None:
            self.built_at_first_call = self.built[0]
            self.first_call.set()
        self.bodies.append(body)
        ids = [t["id"] for t in body["value"]]
        return SimpleNamespace(result_values=[SimpleNamespace(task_id=i, status="success", error=None) for i in ids])


def test_the_first_group_is_added_before_every_definition_is_built():
    """The definitions come from a generator that, from the 150th on, waits (up to 5 s) for
    the first add: an adder that builds everything before adding makes it wait in vain."""
    built, first_call = [0], threading.Event()
    client = _RecordingClient(built, first_call)

    def definitions():
        for i in range(350):
            if i == 150:
                first_call.wait(5)
            built[0] += 1
            yield PendingTask({"id": str(i), "commandLine": "true"}, 100)

    report = TaskAdder(client, "job").add(definitions())
    assert client.built_at_first_call is not None and client.built_at_first_call < 150
    assert sorted(report.added, key=int) == [str(i) for i in range(350)]
    assert [len(b["value"]) for b in client.bodies] == [100, 100, 100, 50]


def test_a_group_whose_inputs_cannot_be_prepared_stops_the_adds():
    built, first_call = [0], threading.Event()
    client = _RecordingClient(built, first_call)

    def prepare(group):
        if group[0].task_id == "100":
            raise OSError("upload refused")

    tasks = [PendingTask({"id": str(i), "commandLine": "true"}, 100) for i in range(300)]
    with pytest.raises(OSError):
        TaskAdder(client, "job", in_flight=1).add(tasks, prepare=prepare)
    sent = [t["id"] for b in client.bodies for t in b["value"]]
    assert "100" not in sent and "250" not in sent


def test_polls_come_fast_after_a_change_near_the_end_and_space_out_to_the_interval():
    pace = azure_run._Pace(2.0)
    assert [pace.next(False) for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    # A change near the end (few tasks left) brings the next poll closer than the first gap.
    assert [pace.next(True), pace.next(False), pace.next(False), pace.next(True)] == [0.1, 0.2, 0.4, 0.1]
    short = azure_run._Pace(0.1)  # an interval under the first gap is kept as it is
    assert [short.next(False), short.next(True), short.next(False)] == [0.1, 0.1, 0.1]


def test_a_polls_gap_counts_from_its_start_and_a_slow_poll_still_waits_a_quarter_of_it():
    pace = azure_run._Pace(2.0)
    assert pace.next(True, spent=0.06) == pytest.approx(0.04)  # the tail gap, 0.1 s from the poll's start
    assert pace.next(False, spent=0.05) == pytest.approx(0.15)
    assert pace.next(False, spent=3.0) == pytest.approx(0.1)  # a poll longer than its 0.4 s gap


def test_a_node_list_stands_while_the_followers_see_nothing_move():
    from azpar_magic.jobs import NodeInfo

    run = SimpleNamespace(following=True, changed_at=time.monotonic() - 5)
    steady = [NodeInfo("n1", "running"), NodeInfo("n2", "idle")]
    now = time.monotonic()
    assert azure_run.nodes_still_fresh(now - 2, steady, [run])
    assert not azure_run.nodes_still_fresh(now - 6, steady, [run])  # listed before the last change
    assert not azure_run.nodes_still_fresh(now - 2, [NodeInfo("n1", "starting")], [run])
    assert not azure_run.nodes_still_fresh(now - 2, [], [run])
    assert not azure_run.nodes_still_fresh(now - 2, steady, [])  # nothing followed: the views list as before
    assert not azure_run.nodes_still_fresh(now - 2, steady, [SimpleNamespace(following=False, changed_at=0.0)])
    old = SimpleNamespace(following=True, changed_at=0.0)
    assert not azure_run.nodes_still_fresh(now - azure_run.NODE_LIST_MAX_AGE - 1, steady, [old])


def test_the_output_signer_makes_the_tokens_the_sdk_makes():
    """Staging.blob_sas_signer signs each blob with one HMAC over the SDK's own string to sign:
    its tokens are the SDK's, field for field, for the same start and expiry."""
    from urllib.parse import parse_qs, urlsplit

    from azure.core.credentials import AzureNamedKeyCredential
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    from azpar_magic.backends.azure.storage import Staging

    key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
    staging = Staging("http://127.0.0.1:9/acct", "acct", AzureNamedKeyCredential("acct", key))
    expiry = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    sign = staging.blob_sas_signer("job-out", "cw", expiry)
    for name in ("results/1.azpr", "logs/17/stdout.txt", "logs/17/stderr.txt", "a b+c.txt"):
        url = sign(name)
        start = dt.datetime.strptime(parse_qs(urlsplit(url).query)["st"][0], "%Y-%m-%dT%H:%M:%SZ")
        sdk = generate_blob_sas("acct", "job-out", name, permission=BlobSasPermissions.from_string("cw"),
                                expiry=expiry, start=start.replace(tzinfo=dt.timezone.utc), account_key=key)
        assert url == f"http://127.0.0.1:9/acct/job-out/{name}?{sdk}"


# ------------------------------------------------------------------ against the test service

def _old_definition(run, task):
    """A task definition built with the SDK's models, field by field, as the backend did before
    it kept a per-job template as JSON: what the wire must still carry."""
    import base64

    from azure.batch import models

    from azpar_magic.backends.azure import commands
    from azpar_magic.backends.azure.pool import container_settings

    data = run._task_file(task)
    inline = len(data) <= azure_run.INLINE_LIMIT
    env = files = None
    if inline:
        env = [models.EnvironmentSetting(name=commands.TASK_ENV, value=base64.b64encode(data).decode("ascii"))]
    else:
        files = [models.ResourceFile(http_url=azure_run._blob_url(run.read_inputs, f"tasks/{task.task_id}.azpt"),
                                     file_path=commands.TASK_FILE)]
    own_inputs, _ = run.data.task_resource_files(task)
    if own_inputs:
        files = (files or []) + own_inputs
    outputs = [
        run._output(commands.RESULT_FILE, f"results/{task.task_id}.azpr"),
        run._output("../stdout.txt", f"logs/{task.task_id}/stdout.txt"),
        run._output("../stderr.txt", f"logs/{task.task_id}/stderr.txt"),
        *run.data.output_files(run._files_output),
    ]
    return models.BatchTaskCreateOptions(
        id=task.task_id,
        command_line=commands.task_command(run.packages, run.pip_options, inline=inline),
        resource_files=files,
        environment_settings=env,
        output_files=outputs,
        constraints=models.BatchTaskConstraints(
            max_task_retry_count=run.spec.retries,
            # (the --timeout and the grace the worker has to stop the task itself: base.timeout_grace)
            max_wall_clock_time=dt.timedelta(seconds=run.spec.timeout + timeout_grace(run.spec.timeout))
            if run.spec.timeout else None,
        ),
        container_settings=container_settings(run.profile),
        exit_conditions=run._exit_conditions(),
    )


@pytest.mark.azure
@pytest.mark.timeout(180)
@pytest.mark.parametrize("options, loop, body", [
    ("--merge cloud --timeout 60 --retries 2", "for x in range(3)", "x * 2"),
    ("", "for x in [big + str(i) for i in range(3)]", "len(x)"),  # items too large to travel inline: a blob
])
def test_task_definitions_are_the_json_the_sdk_models_would_send(azure, ip, run_cell, batch, monkeypatch,
                                                                  options, loop, body):
    from azpar_magic.backends.azure.storage import Staging

    tokens: dict = {}
    real = Staging.blob_sas_url

    def same_token(self, container, name, permission, expiry):  # both builds must sign alike
        key = (container, name, permission)
        if key not in tokens:
            tokens[key] = real(self, container, name, permission, expiry)
        return tokens[key]

    monkeypatch.setattr(Staging, "blob_sas_url", same_token)
    compared = []
    build = azure_run.AzureRun._definition

    def checked(self, task):
        pending = build(self, task)
        assert pending.definition == wire_json(_old_definition(self, task))
        compared.append(task.task_id)
        return pending

    monkeypatch.setattr(azure_run.AzureRun, "_definition", checked)
    ip.user_ns["big"] = "y" * 9000
    run = run_cell(f"%%azpar -q {options} -o out {loop}:\n{body}")
    assert run.success, run.error
    assert len(compared) == 3


@pytest.mark.azure
@pytest.mark.timeout(180)
def test_the_first_group_goes_out_while_later_definitions_are_built(azure, ip, run_cell, batch, monkeypatch):
    built = [0]
    at_first_add: list[int] = []
    build = azure_run.AzureRun._definition

    def slow(self, task):
        time.sleep(0.004)  # 250 tasks take a second to build
        built[0] += 1
        return build(self, task)

    monkeypatch.setattr(azure_run.AzureRun, "_definition", slow)
    client = azpar_magic.session.engine().backend.client
    add = client.create_task_collection

    def first_noted(job_id, body, **kw):
        if not at_first_add:
            at_first_add.append(built[0])
        return add(job_id, body, **kw)

    monkeypatch.setattr(client, "create_task_collection", first_noted)
    run = run_cell("%%azpar -q --chunk-size 1 -o out for x in range(250):\nx")
    assert run.success, run.error
    assert ip.user_ns["out"] == list(range(250))
    assert at_first_add and at_first_add[0] < 250


@pytest.mark.azure
@pytest.mark.timeout(180)
def test_tasks_are_added_while_the_pool_is_looked_at_and_followed_after(azure, ip, run_cell, batch, monkeypatch):
    """The look at the pool (an empty one is resized for the run) does not hold up the first add,
    and the follower (with the spot fallback's looks at the pool) starts once it is done."""
    from azpar_magic.backends.azure.backend import AzureBackend

    looked = AzureBackend._make_room
    seen: dict[str, bool] = {}

    def slow_look(self, n_tasks):
        def ops():
            with batch.cond:
                return [r.operation_id for r in batch.requests[first:]]

        deadline = time.monotonic() + 30
        while "Tasks_CreateTaskCollection" not in ops() and time.monotonic() < deadline:
            time.sleep(0.01)
        seen["added"] = "Tasks_CreateTaskCollection" in ops()
        seen["followed"] = "Jobs_GetJobTaskCounts" in ops()
        return looked(self, n_tasks)

    monkeypatch.setattr(AzureBackend, "_make_room", slow_look)
    first = len(batch.requests)
    run = run_cell("%%azpar -q -o out for x in range(3):\nx * 2")
    assert run.success, run.error
    assert ip.user_ns["out"] == [0, 2, 4]
    assert seen == {"added": True, "followed": False}


@pytest.fixture
def slow_polls(batch, azurite, tmp_path, monkeypatch):
    """A profile with a one-second poll interval (the tests' profile polls every 0.1 s)."""
    from .azure_support import azure_profile

    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite, poll_interval=1.0) as name:
        yield name


@pytest.mark.azure
@pytest.mark.timeout(180)
def test_polls_start_close_space_out_and_close_up_when_nothing_waits(slow_polls, ip, run_cell, batch):
    azpar_magic.session.engine().backend.start()
    run_cell("%%azpar -q -o warm for x in range(1):\nx")  # the nodes are up
    batch.requests.clear()
    run = run_cell("%%azpar -q -o out for x in range(2):\nimport time; time.sleep(2 + 2 * x); x")
    assert run.success, run.error
    times = [r.time for r in batch.requests_for("Jobs_GetJobTaskCounts")]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps[0] < 0.5, gaps  # the first polls come close together
    assert max(gaps) < 1.5, gaps  # and never wait longer than the interval
    long = [i for i, g in enumerate(gaps) if g > 0.9]
    assert long, gaps  # while the tasks sleep they space out to it
    # the first task ending, with nothing waiting, brings the next poll close again
    assert any(g < 0.5 for g in gaps[long[0] + 1 :]), gaps


@pytest.mark.azure
@pytest.mark.timeout(180)
def test_the_progress_line_lists_no_nodes_while_nothing_moves(azure, ip, run_cell, batch, capsys):
    from azpar_magic.magics.progress import TextProgress

    azpar_magic.session.engine().backend.start()
    run_cell("%%azpar -q -o warm for x in range(1):\nx")
    job = azpar_magic.run("for x in range(2)", "import time; time.sleep(4); x", {}, chunk_size=1)
    line = TextProgress(job, quiet=False)
    deadline = time.monotonic() + 60
    while job.snapshot().tasks_running < 2 and time.monotonic() < deadline:
        line.tick(force=True)
        time.sleep(0.05)
    time.sleep(0.5)  # the follower has seen both start
    line.tick(force=True)
    start = len(batch.requests_for("Nodes_ListNodes"))
    until = time.monotonic() + 2.5
    while time.monotonic() < until:
        line.tick(force=True)
        time.sleep(0.05)
    assert len(batch.requests_for("Nodes_ListNodes")) - start <= 1
    assert "nodes busy" in capsys.readouterr().out
    assert job.result(60) == [0, 1]
