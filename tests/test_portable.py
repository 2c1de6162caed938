"""The local pool's portable path (``AZPAR_PORTABLE=1``): what Windows runs, tested on Linux since
no Windows machine runs the tests. Workers are started with stdin/stdout pipes (no descriptor
passing), lead no process group (a worker and what its task started are ended by parent pid),
the kernel's alive checks ask the system, and --inputs are hard links or copies, never symbolic
links. Every test also checks that the fast path's primitives were not used."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import azpar_magic
from azpar_magic import session

from .data_support import make_parts
from .helpers_corpus import live_worker_pids, local_backend, pid_alive, run_cell_job, wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def portable(monkeypatch):
    """A session whose pools take the portable path, with spies on the fast path's primitives:
    how workers were started, every killpg and every symbolic link made in this process."""
    monkeypatch.setenv("AZPAR_PORTABLE", "1")
    session.close()  # the next cell builds its pool anew, the portable way
    seen: dict[str, list] = {"workers": [], "killpg": [], "symlink": []}
    real_popen, real_killpg, real_symlink = subprocess.Popen, os.killpg, os.symlink

    def popen(args, *rest, **kwargs):
        if "--serve" in list(args):
            seen["workers"].append((list(args), kwargs))
        return real_popen(args, *rest, **kwargs)

    def killpg(pid, sig):
        seen["killpg"].append(pid)
        return real_killpg(pid, sig)

    def symlink(src, dst, *args, **kwargs):
        if "azpar" in str(dst):  # pytest links its own temporary folders
            seen["symlink"].append(dst)
        return real_symlink(src, dst, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setattr(os, "killpg", killpg)
    monkeypatch.setattr(os, "symlink", symlink)
    yield seen
    session.close()
    assert seen["workers"], "no worker was started"
    for args, kwargs in seen["workers"]:
        assert "--stdio" in args and "--fd-in" not in args, args
        assert not kwargs.get("pass_fds") and not kwargs.get("start_new_session"), kwargs
    assert seen["killpg"] == [] and seen["symlink"] == []


PROBE = """import os, sys
(sys.argv[1:], os.getpgid(0), os.getpid(), os.readlink('/proc/self/fd/0'), os.readlink('/proc/self/fd/1'))"""


def test_the_portable_mode_is_what_windows_offers(monkeypatch):
    from azpar_magic import platforms

    here = platforms.current({})
    assert (here.portable, here.pass_fds, here.process_groups, here.symlinks) == (False, True, True, True)
    forced = platforms.current({"AZPAR_PORTABLE": "1"})
    assert (forced.portable, forced.pass_fds, forced.process_groups, forced.symlinks) == (True, False, False, False)
    assert "portable" in forced.name


def test_cells_run_on_workers_started_the_portable_way(ip, run_cell, portable):
    run = run_cell(f"%%azpar -q -o probe --chunk-size 1 for i in range(4):\n{PROBE}")
    assert run.success, run.error
    for argv, pgid, pid, stdin, stdout in ip.user_ns["probe"]:
        assert "--stdio" in argv and "--fd-in" not in argv and "--fd-out" not in argv, argv
        assert pgid == os.getpgid(0) and pgid != pid  # no process group of its own: the kernel's
        assert stdin == os.devnull  # the pipes were moved aside: a task reads nothing of them...
        assert stdout.endswith(".log")  # ... and prints into the worker's log, never into the channel
    again = run_cell("%%azpar -q -o squares for x in range(50):\nx * x")
    assert again.success and ip.user_ns["squares"] == [x * x for x in range(50)], again.error


def test_inputs_are_hard_links_to_the_originals_never_symbolic_links(ip, run_cell, portable, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_parts(tmp_path)
    body = ("import os\n"
            "own, shared = f'inputs/parts/part-{i}.csv', 'inputs/scale.txt'\n"
            "open('out.txt', 'w').write(open(own).read().upper())\n"
            "(sorted(os.listdir('inputs/parts')), os.path.islink(own) or os.path.islink(shared) or "
            "os.path.islink('inputs'), os.stat(own).st_ino, os.stat(shared).st_ino)")
    run, job = run_cell_job(run_cell, f"%%azpar -q -o seen --chunk-size 2 --inputs 'parts/part-{{i}}.csv' "
                                      f"--inputs scale.txt --outputs out.txt for i in range(4):\n{body}")
    assert run.success, run.error
    for i, (listed, linked, own, shared) in enumerate(ip.user_ns["seen"]):
        assert listed == [f"part-{i}.csv"] and not linked
        # Same volume here: hard links to the originals, read in place (a copy has another inode).
        assert own == (tmp_path / "parts" / f"part-{i}.csv").stat().st_ino
        assert shared == (tmp_path / "scale.txt").stat().st_ino
        produced = Path(job.files.files(i)[0])
        assert produced.read_text() == (tmp_path / "parts" / f"part-{i}.csv").read_text().upper()
    # Only shared inputs: the whole tree at once (a single symbolic link on the fast path).
    run = run_cell("%%azpar -q -o shared_only --inputs 'parts' for i in range(2):\n"
                   "import os\n(sorted(os.listdir('inputs/parts')), os.path.islink('inputs'), "
                   "os.path.islink('inputs/parts/part-0.csv'))")
    assert run.success, run.error
    assert ip.user_ns["shared_only"] == [([f"part-{n}.csv" for n in range(5)], False, False)] * 2


def test_a_timeout_kills_the_task_and_what_it_started(ip, run_cell, portable, tmp_path):
    body = ("import os, pathlib, subprocess, time\n"
            "child = subprocess.Popen(['sleep', '600'])\n"
            f"pathlib.Path(r'{tmp_path}', f'pids-{{i}}').write_text(f'{{os.getpid()}} {{child.pid}}')\n"
            "time.sleep(600)")
    run = run_cell(f"%%azpar -q -o never --timeout 3 --chunk-size 1 for i in range(1):\n{body}")
    assert not run.success
    assert "iteration 0 was still running when its task reached the --timeout of 3 s" in str(run.error)
    pids = [int(p) for p in (tmp_path / "pids-0").read_text().split()]
    assert wait_for(lambda: not any(pid_alive(p) for p in pids), 10), [p for p in pids if pid_alive(p)]
    after = run_cell("%%azpar -q -o after for x in range(6):\nx + 1")
    assert after.success and ip.user_ns["after"] == [x + 1 for x in range(6)]


def test_a_crashed_worker_is_replaced_and_its_task_retried(ip, run_cell, portable, tmp_path):
    marker = tmp_path / "crashed"
    body = f"import os\nif x == 2 and not os.path.exists(r'{marker}'):\n    open(r'{marker}', 'w').close()\n" \
           "    os.kill(os.getpid(), 9)\nx * 3"
    run, job = run_cell_job(run_cell, f"%%azpar -q -o tripled --chunk-size 1 for x in range(5):\n{body}")
    assert run.success, run.error
    assert ip.user_ns["tripled"] == [x * 3 for x in range(5)] and marker.exists()
    backend = local_backend()
    assert any(n.state == "lost" for n in backend.nodes())
    assert wait_for(lambda: len(live_worker_pids(backend)) == backend.size, 10)


def test_cancel_stops_the_running_task_and_its_worker(ip, run_cell, portable, tmp_path):
    body = f"import os, time\nopen(r'{tmp_path}/pid-' + str(x), 'w').write(str(os.getpid()))\ntime.sleep(600)"
    run, job = run_cell_job(run_cell, f"%%azpar -q --no-wait -o never --chunk-size 1 for x in range(3):\n{body}")
    assert run.success, run.error
    assert wait_for(lambda: list(tmp_path.glob("pid-*")), 30)
    pids = [int(p.read_text()) for p in tmp_path.glob("pid-*") if p.read_text()]
    job.cancel()
    assert wait_for(lambda: job.done, 20) and job.state == "cancelled", job.state
    assert wait_for(lambda: not any(pid_alive(p) for p in pids), 10)


def test_the_job_store_tells_a_gone_owner_without_proc_and_without_killing_it(monkeypatch):
    import importlib

    from azpar_magic import platforms

    owner = importlib.import_module("azpar_magic.jobstore.owner")
    real_isdir = os.path.isdir
    monkeypatch.setattr(os.path, "isdir", lambda p: False if p == "/proc/self" else real_isdir(p))  # as on Windows
    asked = []
    real_alive = platforms.pid_alive
    monkeypatch.setattr(platforms, "pid_alive", lambda pid: asked.append(pid) or real_alive(pid))
    me = owner.owner()
    assert owner.owner_alive(me) is True
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    assert owner.owner_alive(dict(me, pid=ended.pid, start=None)) is False
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    assert wait_for(lambda: not pid_alive(zombie.pid), 10)
    assert owner.owner_alive(dict(me, pid=zombie.pid, start=None)) is False  # ended, not yet reaped
    zombie.wait()
    assert asked == [me["pid"], ended.pid, zombie.pid]


def test_the_portable_tree_kill_finds_descendants_by_parent_pid():
    from azpar_magic import platforms

    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, time\n"
                               "subprocess.Popen(['sleep', '600'])\ntime.sleep(600)"])
    try:
        assert wait_for(lambda: len(platforms.descendants(parent.pid)) == 1, 20)
        (child,) = platforms.descendants(parent.pid)
        platforms.kill_worker(parent, platforms.current({"AZPAR_PORTABLE": "1"}))
        parent.wait(10)
        assert parent.returncode == -signal.SIGKILL and wait_for(lambda: not pid_alive(child), 10)
    finally:
        parent.kill()
        parent.wait()


# ---------------------------------------------------------------------- through a real kernel


def test_a_real_kernels_portable_workers_and_their_tasks_end_with_it(tmp_path):
    from .test_local_pool_kernel import _kernel, kill_kernel_and_wait, start_long_tasks

    kernel = _kernel(tmp_path, {"AZPAR_PORTABLE": "1"})
    folder = tmp_path / "pids"
    folder.mkdir()
    try:
        pids, workers = start_long_tasks(kernel, folder)
        for pid in workers:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert b"--stdio" in argv and b"--fd-in" not in argv, argv
            assert os.getpgid(pid) != pid  # no process group: ended by the lifeline's parent-pid check
        stage = ast.literal_eval(kernel.value("__import__('azpar_magic').session.engine().backend._stage"))
        assert not stage.startswith("/dev/shm")  # Windows has none
        kill_kernel_and_wait(kernel, pids)
    finally:
        kernel.kc.stop_channels()
        kernel.km.shutdown_kernel(now=True)


def test_the_api_runs_the_portable_way_too(portable):
    job = azpar_magic.run("for x in range(7)", "x - 1")
    assert job.result(timeout=60) == [x - 1 for x in range(7)]
