"""``%azpar debug`` after a kernel restart, in real ipykernel kernels (issue 20): the job
store keeps what a local job ran with (envelope and namespace), and an Azure job's namespace
is read back from its staged blob, so a new kernel, where the notebook's names are defined
differently, re-runs the failed iteration with the job's own. The debugger is driven the
way a frontend drives it: each ipdb prompt is an input_request on the stdin channel, answered
with the next scripted command."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from azpar_magic import jobstore as store

from .azure_support import write_profile_file
from .test_jobs_kernel import _error_text, _job_id, _restart
from .test_kernel import _ANSI, Kernel, Reply, _isolated_env, _stop
from .test_store import job_store  # noqa: F401 (a fixture)

manager = pytest.importorskip("jupyter_client.manager")

SETUP = "def f(x):\n    return 10 / (x - 3)\nscale = 2"
REBOUND = "def f(x):\n    return 0\nscale = 1000"
CELL = "%%azpar -q --errors pass --name broken -o vals for x in range(5):\ny = x * scale\nz = f(x)\nz + y"




def _env(tmp_path: Path, job_store: Path) -> dict[str, str]:
    env = _isolated_env(tmp_path)
    env[store.STORE_ENV] = str(job_store)
    env.pop("JUPYTERHUB_USER", None)
    (tmp_path / "cwd").mkdir(exist_ok=True)
    return env


def _start(tmp_path: Path, env: dict[str, str]) -> Kernel:
    km, kc = manager.start_new_kernel(kernel_name="python3", startup_timeout=60, env=env, cwd=str(tmp_path / "cwd"))
    kernel = Kernel(km, kc)
    kernel.ok("%load_ext azpar_magic")
    return kernel


def _debug_session(kernel: Kernel, code: str, commands: list[str], timeout: float = 60) -> tuple[Reply, list[str]]:
    """Run ``code``, answering each input request (an ipdb prompt) with the next command;
    return the reply and the prompts the kernel sent."""
    messages: list = []
    prompts: list[str] = []
    todo = list(commands)

    def answer(message) -> None:
        prompts.append(message["content"]["prompt"])
        kernel.kc.input(todo.pop(0) if todo else "quit")

    started = time.monotonic()
    reply = kernel.kc.execute_interactive(code, output_hook=messages.append, stdin_hook=answer, allow_stdin=True,
                                          timeout=timeout)
    return Reply(reply["content"], messages, time.monotonic() - started), prompts


def _check_debug_in(kernel: Kernel, job_id: str) -> None:
    """Both forms of debug in ``kernel``, whose f and scale differ from the job's."""
    reply = kernel.run(f"%azpar debug {job_id} 3 --no-pdb")
    text = _error_text(reply)
    assert reply.status == "error" and reply.content["ename"] == "ZeroDivisionError", reply.describe()
    assert "<azpar cell>" in text and "z = f(x)" in text and "10 / (x - 3)" in text, text
    reply, prompts = _debug_session(kernel, "%azpar debug broken 3", ["up", "p (x, y, scale)", "quit"])
    shown = _ANSI.sub("", reply.stdout)
    assert reply.status == "ok", reply.describe()
    assert len(prompts) == 3 and all("ipdb>" in p for p in prompts), prompts
    assert "(3, 6, 2)" in shown, shown  # the item and the job's own scale, in the body's frame
    assert kernel.value("(scale, f(3))") == "(1000, 0)"  # the notebook's names are untouched


def test_local_job_debugged_after_a_kernel_restart(tmp_path, job_store):
    kernel = _start(tmp_path, _env(tmp_path, job_store))
    try:
        kernel.ok(SETUP)
        job_id = _job_id(kernel.ok(CELL.replace("-q ", "-q --no-wait ")))
        kernel.ok(f"%azpar collect {job_id}")
        assert "ZeroDivisionError" in kernel.value("vals[3]")
        _restart(kernel)  # SIGKILL, then a new kernel process: its local pool and staging are gone
        kernel.ok(REBOUND)
        _check_debug_in(kernel, job_id)
    finally:
        _stop(kernel)


@pytest.mark.timeout(180)
def test_a_debugger_left_in_the_body_in_a_real_kernel(tmp_path, job_store):
    """A user debugging a loop adds a debugger call and runs the cell through %%azpar in a notebook. The
    cell failed showing nothing (IPython takes a BdbQuit for a debugger the user quit, and so does the
    kernel's reply); it says what happened now, and `%azpar debug` stops at that line through the
    frontend's stdin, as the same call in a cell does. (A kernel's breakpoint() goes to debugpy, which
    stops only while the frontend's debugger is on: the same in a cell and in `%azpar debug`.)"""
    kernel = _start(tmp_path, _env(tmp_path, job_store))
    try:
        for stop in ("breakpoint()", "import pdb; pdb.set_trace()"):
            reply = kernel.run(f"%%azpar -q -o stopped for x in range(1, 3):\ny = x * 7\n{stop}\ny")
            said = _ANSI.sub("", _error_text(reply) + reply.stdout + reply.stderr)
            assert reply.status == "error", reply.describe()
            assert "raised BdbQuit: the body stopped at a debugger" in said, said
            assert "`%azpar debug` runs this iteration in the notebook" in said, said
            assert kernel.value("'stopped' in globals()") == "False"
        reply, prompts = _debug_session(kernel, "%azpar debug", ["p y + 1000", "c"])
        shown = _ANSI.sub("", reply.stdout)
        assert reply.status == "ok", reply.describe()
        assert len(prompts) == 2 and all("ipdb>" in p for p in prompts), prompts
        assert "1007" in shown and "ran here without an exception" in shown, shown
    finally:
        _stop(kernel)


@pytest.mark.azure
@pytest.mark.timeout(300)
def test_azure_job_debugged_after_a_kernel_restart(tmp_path, job_store, batch, azurite):
    env = _env(tmp_path, job_store)
    config_file = Path(env["XDG_CONFIG_HOME"]) / "azpar" / "config.toml"
    env.update(write_profile_file(config_file, batch, azurite, "test"))
    kernel = _start(tmp_path, env)
    try:
        kernel.ok("%azpar use test")
        kernel.ok(SETUP)
        job_id = _job_id(kernel.ok(CELL.replace("-q ", "-q --no-wait ")))
        kernel.ok(f"%azpar collect {job_id}", timeout=120)
        assert "ZeroDivisionError" in kernel.value("vals[3]")
        envelope, namespace = store.stored_envelope(job_id)
        assert envelope is not None and namespace is None  # the namespace is the staged blob's
        _restart(kernel)
        kernel.ok("%azpar use test")
        kernel.ok(REBOUND)
        _check_debug_in(kernel, job_id)
    finally:
        _stop(kernel)
