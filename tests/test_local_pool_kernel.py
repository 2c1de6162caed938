"""The local pool seen from a real ipykernel: what a task may read of the kernel's
environment, and what is left of a kernel's pool after the kernel is killed (SIGKILL, as
the OOM killer or a "Restart kernel" does it)."""

from __future__ import annotations

import ast
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from azpar_magic.backends import local

from .helpers_corpus import pid_alive, wait_for
from .test_kernel import Kernel, _isolated_env, _stop

manager = pytest.importorskip("jupyter_client.manager")

SECRETS = {
    "JUPYTERHUB_API_TOKEN": "hub-token-0123456789",
    "JUPYTERHUB_CLIENT_ID": "jupyterhub-user-alice",
    "JPY_API_TOKEN": "jpy-token-0123456789",
    "AZPAR_STORAGE_KEY": "c3RvcmFnZS1rZXk=",
    "AZPAR_BATCH_KEY": "YmF0Y2gta2V5",
    "MY_STORE_SECRET": "a-storage-key-a-profile-names",
    "MY_REGISTRY_PW": "a-registry-password-a-profile-names",
}
PROFILE = """
[profiles.team]
storage_key_env = "MY_STORE_SECRET"
registry_password_env = "MY_REGISTRY_PW"
"""


def _kernel(base: Path, extra: dict[str, str]) -> Kernel:
    env = _isolated_env(base)
    env.update(extra)
    (base / "cwd").mkdir(parents=True, exist_ok=True)
    km, kc = manager.start_new_kernel(kernel_name="python3", startup_timeout=60, env=env, cwd=str(base / "cwd"))
    kernel = Kernel(km, kc)
    try:
        kernel.ok("%load_ext azpar_magic")
    except BaseException:
        _stop(kernel)
        raise
    return kernel


@pytest.mark.timeout(180)
def test_a_task_reads_none_of_the_kernels_secrets_but_the_rest_of_its_environment(tmp_path):
    (tmp_path / "config" / "azpar").mkdir(parents=True)
    (tmp_path / "config" / "azpar" / "config.toml").write_text(PROFILE)
    kernel = _kernel(tmp_path, {**SECRETS, "AZPAR_TEST_PLAIN": "plain-value"})
    try:
        names = sorted(SECRETS) + ["AZPAR_TEST_PLAIN", "PATH", "HOME"]
        kernel.ok(f"NAMES = {names!r}")
        assert ast.literal_eval(kernel.value("[__import__('os').environ.get(n) for n in NAMES]")) == \
            [SECRETS[n] for n in sorted(SECRETS)] + ["plain-value", os.environ["PATH"], os.environ["HOME"]]
        kernel.ok("""%%azpar -q -o seen for i in range(2):
import os
{n: os.environ.get(n) for n in NAMES}""")
        seen = ast.literal_eval(kernel.value("seen"))
        for row in seen:
            assert {n: row[n] for n in SECRETS} == dict.fromkeys(SECRETS), row
            assert row["AZPAR_TEST_PLAIN"] == "plain-value"
            assert row["PATH"] == os.environ["PATH"] and row["HOME"] == os.environ["HOME"]
    finally:
        _stop(kernel)


LONG_TASK = """%%azpar -q --no-wait --chunk-size 1 -o never for i in range(2):
import os, pathlib, subprocess, time
child = subprocess.Popen(["sleep", "600"])
pathlib.Path(FOLDER, f"pids-{i}").write_text(f"{os.getpid()} {child.pid}")
time.sleep(600)
i"""


def start_long_tasks(kernel: Kernel, folder: Path) -> tuple[list[int], list[int]]:
    """Run LONG_TASK in ``kernel``; once both tasks started: (the pids of their workers and of the
    children they started, the workers' pids)."""
    kernel.ok(f"FOLDER = {str(folder)!r}")
    kernel.ok(LONG_TASK)

    def written() -> bool:  # (a file is made empty, then written: read it once it holds both pids)
        files = list(folder.glob("pids-*"))
        return len(files) == 2 and all(len(f.read_text().split()) == 2 for f in files)

    assert wait_for(written, 60), "the tasks did not start"
    files = list(folder.glob("pids-*"))
    return [int(p) for f in files for p in f.read_text().split()], [int(f.read_text().split()[0]) for f in files]


def kill_kernel_and_wait(kernel: Kernel, pids: list[int]) -> None:
    """SIGKILL the kernel; every pid must be gone within 20 s."""
    os.kill(kernel.km.provisioner.pid, signal.SIGKILL)
    killed = time.monotonic()
    assert wait_for(lambda: not any(pid_alive(p) for p in pids), 20), \
        f"workers or their tasks outlived the kernel: {[p for p in pids if pid_alive(p)]}"
    print(f"workers and their tasks ended {time.monotonic() - killed:.2f} s after the kernel's SIGKILL")


@pytest.mark.timeout(180)
def test_killing_the_kernel_ends_its_workers_and_their_tasks_and_the_next_pool_sweeps_its_stage(tmp_path):
    kernel = _kernel(tmp_path, {})
    folder = tmp_path / "pids"
    folder.mkdir()
    try:
        pids, _ = start_long_tasks(kernel, folder)
        stage = ast.literal_eval(kernel.value("__import__('azpar_magic').session.engine().backend._stage"))
        assert all(pid_alive(p) for p in pids) and os.path.isdir(stage)
        kernel_pid = kernel.km.provisioner.pid
        kill_kernel_and_wait(kernel, pids)
        assert os.path.isdir(stage)  # nobody removed it: the kernel died without cleaning up
        assert os.path.basename(stage).startswith(f"azpar-local-{kernel_pid}-")
        # The next pool of any kernel (here: one started in this process) removes it.
        pool = local.LocalBackend(workers=1)
        try:
            pool.start()
            assert not os.path.exists(stage), "the dead kernel's stage folder was not swept"
            assert os.path.isdir(pool._stage)
        finally:
            pool.close()
    finally:
        kernel.kc.stop_channels()
        kernel.km.shutdown_kernel(now=True)


STOPPED_TASK = """%%azpar -o held --chunk-size 1 for i in range(1):
import os, pathlib, time
pathlib.Path(FOLDER, "pid").write_text(str(os.getpid()))
time.sleep(5)
i"""


@pytest.mark.timeout(180)
def test_the_progress_line_says_when_a_worker_is_stopped(tmp_path):
    """A worker stopped (SIGSTOP) mid-task used to leave the line at "running" with no word;
    the line names the task and its stopped worker while it is stopped."""
    kernel = _kernel(tmp_path, {})
    folder = tmp_path / "pid"
    folder.mkdir()

    def stop_for_a_while():
        assert wait_for(lambda: (folder / "pid").exists() and (folder / "pid").read_text(), 60)
        pid = int((folder / "pid").read_text())
        os.kill(pid, signal.SIGSTOP)
        time.sleep(2.5)
        os.kill(pid, signal.SIGCONT)

    try:
        kernel.ok(f"FOLDER = {str(folder)!r}")
        stopper = threading.Thread(target=stop_for_a_while, daemon=True)
        stopper.start()
        run = kernel.ok(STOPPED_TASK)
        stopper.join(10)
        lines = [m["content"]["data"].get("text/plain", "") for m in run.messages
                 if m["msg_type"] in ("display_data", "update_display_data")]
        stuck = [line for line in lines if "is stopped (SIGSTOP?)" in line]
        assert stuck, lines
        assert re.search(r"task 1: worker worker-\d+ is stopped \(SIGSTOP\?\); no heartbeat for [\d.]+ s", stuck[-1])
        assert "SIGSTOP" not in lines[-1]  # gone once the worker runs again and the job ends
        assert kernel.value("held") == "[0]"
    finally:
        _stop(kernel)
