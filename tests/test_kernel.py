"""%%azpar through a real ipykernel: what a notebook frontend actually receives.

Each test talks to a kernel started with ``jupyter_client.manager.start_new_kernel`` and
reads the IOPub messages of its cells (streams, results, displays, errors) the way
JupyterLab would. The kernel runs with a temporary IPYTHONDIR and XDG_CONFIG_HOME and
without AZPAR_* variables, so neither a user's IPython profile nor their azpar
configuration leaks in: cells run on the local pool.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("ipykernel")
manager = pytest.importorskip("jupyter_client.manager")

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "notebooks" / "01-quickstart.ipynb"
RUN_NOTEBOOK = ROOT / "scripts" / "run_notebook.py"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_JOB_ID = re.compile(r"azpar-[a-z0-9]+-\d{8}-\d{6}-[0-9a-f]+")


def _isolated_env(base: Path) -> dict[str, str]:
    # AZPAR_PORTABLE stays: scripts/test.sh runs the kernel's local pool again in the portable mode.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZPAR_") or k == "AZPAR_PORTABLE"}
    for name in ("ipython", "config"):
        (base / name).mkdir(parents=True, exist_ok=True)
    env["IPYTHONDIR"] = str(base / "ipython")
    env["XDG_CONFIG_HOME"] = str(base / "config")
    env.pop("PYTHONSTARTUP", None)
    return env


@dataclass
class Reply:
    """One executed cell: the execute_reply content and the IOPub messages it caused."""

    content: dict
    messages: list
    elapsed: float

    @property
    def status(self) -> str:
        return self.content["status"]

    def _stream(self, name: str) -> str:
        return "".join(m["content"]["text"] for m in self.messages
                       if m["msg_type"] == "stream" and m["content"]["name"] == name)

    @property
    def stdout(self) -> str:
        return self._stream("stdout")

    @property
    def stderr(self) -> str:
        return self._stream("stderr")

    @property
    def results(self) -> list[dict]:
        return [m["content"]["data"] for m in self.messages if m["msg_type"] == "execute_result"]

    @property
    def errors(self) -> list[dict]:
        return [m["content"] for m in self.messages if m["msg_type"] == "error"]

    def transcript(self) -> list[str]:
        """Stream text lines and display outputs in the order the frontend got them."""
        lines, pending = [], ""
        for m in self.messages:
            if m["msg_type"] == "stream":
                pending += m["content"]["text"]
                *done, pending = pending.split("\n")
                lines.extend(done)
            elif m["msg_type"] == "display_data":
                if pending:
                    lines.append(pending)
                    pending = ""
                data = m["content"]["data"]
                lines.append("<display> " + data.get("text/html", data.get("text/plain", "")))
        if pending:
            lines.append(pending)
        return lines

    def describe(self) -> str:
        parts = [f"status {self.status} after {self.elapsed:.2f} s"]
        if self.stdout:
            parts.append("stdout: " + self.stdout[-2000:])
        if self.stderr:
            parts.append("stderr: " + self.stderr[-2000:])
        for err in self.errors:
            parts.append("error: " + _ANSI.sub("", "\n".join(err["traceback"]))[-3000:])
        return "\n".join(parts)


class Kernel:
    def __init__(self, km, kc):
        self.km, self.kc = km, kc

    def run(self, code: str, timeout: float = 60) -> Reply:
        messages: list = []
        started = time.monotonic()
        reply = self.kc.execute_interactive(code, output_hook=messages.append, timeout=timeout,
                                            allow_stdin=False)
        return Reply(reply["content"], messages, time.monotonic() - started)

    def ok(self, code: str, timeout: float = 60) -> Reply:
        reply = self.run(code, timeout)
        assert reply.status == "ok", reply.describe()
        return reply

    def value(self, expression: str) -> str:
        """repr() of an expression evaluated in the kernel namespace."""
        return self.ok(f"print(repr({expression}))").stdout.strip()


def _start(base: Path) -> tuple[Kernel, Reply]:
    (base / "cwd").mkdir(parents=True, exist_ok=True)
    km, kc = manager.start_new_kernel(kernel_name="python3", startup_timeout=60, env=_isolated_env(base),
                                      cwd=str(base / "cwd"))
    kernel = Kernel(km, kc)
    try:
        assert kernel.value("__import__('sys').executable") == repr(sys.executable), \
            "the python3 kernel does not run this environment's Python"
        loaded = kernel.ok("%load_ext azpar_magic")
    except BaseException:
        _stop(kernel)
        raise
    return kernel, loaded


def _stop(kernel: Kernel) -> None:
    kernel.kc.stop_channels()
    kernel.km.shutdown_kernel(now=False)  # a clean exit lets the extension close its pool


@pytest.fixture(scope="module")
def started_kernel(tmp_path_factory):
    kernel, loaded = _start(tmp_path_factory.mktemp("kernel"))
    yield kernel, loaded
    _stop(kernel)


@pytest.fixture
def kernel(started_kernel) -> Kernel:
    return started_kernel[0]


@pytest.fixture
def fresh_kernel(tmp_path):
    """A kernel of its own, for tests that interrupt it."""
    kernel, _ = _start(tmp_path)
    yield kernel
    _stop(kernel)


def _warm_pool(kernel: Kernel) -> None:
    """Start the 2-worker pool and wait until both workers are ready, so that the next
    cell's tasks are spread over both from the start (a worker still starting gets none)."""
    kernel.ok('''%%azpar -q --workers 2 for i in range(2):
i''')
    kernel.ok('''
import time as _time, azpar_magic as _azpar
_deadline = _time.monotonic() + 30
while not all(n.state == "idle" for n in _azpar.jobs()[-1].snapshot().nodes if n.state != "lost"):
    assert _time.monotonic() < _deadline, "the pool's workers did not become ready"
    _time.sleep(0.02)
''')


def _run_interrupted(kernel: Kernel, code: str, after: float) -> tuple[Reply, float]:
    """Run ``code`` and interrupt the kernel ``after`` seconds in, as Ctrl-C / the stop
    button does; return the reply and the time.monotonic() of the interrupt."""
    at: list[float] = []

    def interrupt():
        at.append(time.monotonic())
        kernel.km.interrupt_kernel()

    timer = threading.Timer(after, interrupt)
    timer.start()
    try:
        reply = kernel.run(code, timeout=60)
    finally:
        timer.cancel()
    assert at, f"the cell ended before the interrupt: {reply.describe()}"
    return reply, at[0]


def _check_cancelled(kernel: Kernel, reply: Reply, interrupted: float) -> str:
    """The common checks on an interrupted %%azpar cell; return the job id."""
    returned = time.monotonic()
    assert reply.status == "error", reply.describe()
    assert reply.content["ename"] == "KeyboardInterrupt", reply.describe()
    match = re.search(rf"azpar: job ({_JOB_ID.pattern}) cancelled; (\d+) of 40 iterations had finished",
                      reply.stderr)
    assert match, reply.describe()
    advice = f"`%azpar collect {match.group(1)} --errors remove` binds their values"
    assert advice in reply.stderr, reply.describe()
    assert returned - interrupted < 5, f"the cell returned {returned - interrupted:.1f} s after the interrupt"
    job_id = match.group(1)
    assert kernel.value("__import__('azpar_magic').jobs()[-1].id") == repr(job_id)
    assert kernel.value("__import__('azpar_magic').jobs()[-1].state") == "'cancelled'"
    assert kernel.value("'never' in globals()") == "False"
    # The advice works: the finished values, bound in order (the cancelled job's own policy raised instead).
    kernel.ok(f"%azpar collect {job_id} --errors remove -o cancelled_kept")
    assert kernel.value("len(cancelled_kept)") == match.group(2)
    assert kernel.value("cancelled_kept == sorted(cancelled_kept)") == "True"
    kernel.ok("del cancelled_kept")
    return job_id


# ---------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_load_ext_says_which_backend_is_active(started_kernel):
    kernel, loaded = started_kernel
    # The default size is the CPUs the kernel may use (affinity, cgroup quota), and says so.
    cpus = int(kernel.value("__import__('azpar_magic').session.default_workers()"))
    plural = "es" if cpus != 1 else ""
    described = (rf"local pool of {cpus} worker process{plural} on this machine \(one per CPU[^)]*; "
                 rf"started as tasks need them\)")
    assert re.fullmatch(rf"azpar_magic \S+: %%azpar runs loops on the {described}\.\n", loaded.stdout), \
        loaded.describe()
    assert loaded.stderr == ""
    backend = kernel.ok("%azpar backend")
    assert re.fullmatch(described, backend.stdout.strip()), backend.describe()


@pytest.mark.timeout(120)
def test_notebook_function_and_class_give_the_right_result(kernel):
    kernel.ok('''
from dataclasses import dataclass

SCALE = 10

@dataclass
class Point:
    x: float
    y: float

    def norm2(self):
        return self.x ** 2 + self.y ** 2

def make_point(i):
    return Point(i * SCALE, -i)
''')
    run = kernel.ok('''%%azpar -q -o points for i in range(6):
p = make_point(i)
p''')
    assert run.stdout == run.stderr == ""
    assert run.results == []  # the result is bound, not displayed
    assert kernel.value("points") == ("[Point(x=0, y=0), Point(x=10, y=-1), Point(x=20, y=-2), "
                                      "Point(x=30, y=-3), Point(x=40, y=-4), Point(x=50, y=-5)]")
    # The values are instances of the notebook's own class, not of a copy.
    assert kernel.value("all(type(p) is Point for p in points)") == "True"
    # Instances of a notebook class as items, a method called on the worker.
    kernel.ok('''%%azpar -q -o norms for p in points:
p.norm2()''')
    assert kernel.value("norms") == repr([(i * 10) ** 2 + i ** 2 for i in range(6)])
    assert kernel.value("norms == [p.norm2() for p in points]") == "True"


@pytest.mark.timeout(120)
def test_iteration_stdout_and_stderr_arrive_in_iteration_order(kernel):
    # With one item per task and later items sleeping less, workers finish out of order.
    run = kernel.ok('''%%azpar -q --chunk-size 1 -o echoed for i in range(6):
import sys, time
time.sleep(0.05 * (6 - i))
print(f"line {i}")
print(f"warning {i}", file=sys.stderr)
i''')
    assert run.stdout == "".join(f"line {i}\n" for i in range(6))
    assert run.stderr == "".join(f"warning {i}\n" for i in range(6))
    assert kernel.value("echoed") == "[0, 1, 2, 3, 4, 5]"


@pytest.mark.timeout(120)
def test_log_records_show_as_the_notebooks_logging_shows_them(fresh_kernel):
    """A notebook that configured logging (``basicConfig(level=INFO)``, a level on a logger) saw its
    records in a sequential loop, while the workers, configured by nobody, dropped the INFO ones and
    printed the others bare. They now follow the notebook's set-up; once the notebook undoes it, so
    do they (a worker serves later cells too)."""
    kernel = fresh_kernel
    kernel.ok("import logging\n"
              "logging.basicConfig(level=logging.INFO, format='%(levelname)s|%(name)s|%(message)s')\n"
              "log = logging.getLogger('nb.steps')\nquiet = logging.getLogger('nb.quiet')\n"
              "quiet.setLevel(logging.ERROR)")
    body = "log.info('step %s', i)\nquiet.warning('hidden %s', i)\nquiet.error('shown %s', i)\ni"
    sequential = kernel.ok("for i in range(3):\n" + "\n".join("    " + line for line in body.splitlines()))
    assert "INFO|nb.steps|step 0\n" in sequential.stderr and "hidden" not in sequential.stderr
    run = kernel.ok(f"%%azpar -q --chunk-size 1 -o logged for i in range(3):\n{body}")
    ours = "".join(line for line in run.stderr.splitlines(keepends=True) if "|azpar_magic." not in line)
    assert ours == sequential.stderr, run.stderr
    kernel.ok("logging.root.handlers.clear()\nlogging.root.setLevel(logging.WARNING)\nquiet.setLevel(logging.NOTSET)")
    bare = kernel.ok("%%azpar -q --chunk-size 1 -o logged for i in range(2):\nlog.info('step %s', i)\n"
                     "quiet.warning('bare %s', i)\ni")
    assert bare.stderr == "bare 0\nbare 1\n", bare.stderr


@pytest.mark.timeout(120)
def test_the_root_loggers_level_alone_travels_and_a_bodys_basic_config_stays_in_its_job(fresh_kernel):
    """A notebook with no logging handler that set the root logger's level (``getLogger().setLevel(INFO)``) printed
    ``logging.info(...)`` records in its own loop (the call makes basicConfig's handler): the workers dropped them.
    And that call left its handler on the worker, so a later cell's records came formatted from that worker and
    bare from the others, where the notebook prints them bare."""
    kernel = fresh_kernel
    kernel.ok("import logging\nlogging.getLogger().setLevel(logging.INFO)")
    run = kernel.ok("%%azpar -q --chunk-size 1 -o at for i in range(4):\nimport time\ntime.sleep(0.3)\n"
                    "logging.info('at %s', i)\ni")
    assert run.stderr == "".join(f"INFO:root:at {i}\n" for i in range(4)), run.stderr
    assert kernel.value("logging.root.handlers") == "[]"  # (the guard: the notebook has no handler)
    kernel.ok("logging.getLogger().setLevel(logging.WARNING)")
    bare = kernel.ok("%%azpar -q --chunk-size 1 -o at for i in range(4):\n"
                     "logging.getLogger('nb').warning('bare %s', i)\ni")
    assert bare.stderr == "".join(f"bare {i}\n" for i in range(4)), bare.stderr


@pytest.mark.timeout(120)
def test_a_body_prints_a_frame_as_the_notebooks_own_loop_prints_it(kernel):
    """pandas shows at most 20 columns in a Jupyter kernel and 0 (the terminal's width) in a plain process, and a
    notebook's ``pd.set_option("display.precision", 2)`` was not followed: the workers printed a frame otherwise
    than the sequential loop. They now print it the notebook's way, its defaults and its options alike."""
    pytest.importorskip("pandas")
    kernel.ok("import pandas as pd\nwide = pd.DataFrame({f'c{i}': [i + 0.123456] for i in range(30)})")
    for setting in ("", "pd.set_option('display.precision', 2)"):
        kernel.ok(setting or "pass")
        sequential = kernel.ok("for i in range(2):\n    print(wide.assign(i=i))")
        assert "..." in sequential.stdout  # (the guard: the notebook's frame is cut)
        run = kernel.ok("%%azpar -q --chunk-size 1 for i in range(2):\nprint(wide.assign(i=i))")
        assert run.stdout == sequential.stdout, (run.stdout, sequential.stdout)
    kernel.ok("pd.reset_option('display.precision')")


@pytest.mark.timeout(120)
def test_rich_display_output_is_shown_in_order_with_prints(kernel):
    run = kernel.ok('''%%azpar -q --chunk-size 1 for i in range(3):
from IPython.display import HTML
print(f"before {i}")
display(HTML(f"<b>{i}</b>"))
print(f"after {i}")''')
    expected = []
    for i in range(3):
        expected += [f"before {i}", f"<display> <b>{i}</b>", f"after {i}"]
    assert run.transcript() == expected


@pytest.mark.timeout(120)
def test_ipythons_own_display_and_clear_output_in_a_body_show_as_the_notebook_shows_them(kernel):
    """``from IPython.display import display`` (in the body, or in the notebook with ``display`` captured) gave the
    workers IPython's display for a process with no shell, which prints text: ``<IPython.core.display.HTML
    object>`` where the notebook's loop showed bold text, and ``clear_output()`` printed erase-line codes. They
    are now displays, and ``clear_output()`` clears what its iteration showed so far."""
    run = kernel.ok('%%azpar -q --chunk-size 1 for i in range(2):\n'
                    'from IPython.display import display, HTML\n'
                    'import IPython.display as ipd\n'
                    'display(HTML(f"<b>{i}</b>"), raw=False)\n'
                    'ipd.display({"text/html": f"<i>{i}</i>", "text/plain": "raw"}, raw=True)')
    assert run.transcript() == ["<display> <b>0</b>", "<display> <i>0</i>", "<display> <b>1</b>",
                                "<display> <i>1</i>"], run.transcript()
    assert "IPython.core.display.HTML object" not in run.stdout
    kernel.ok("from IPython.display import display as shown_by_ipython, HTML as Html, clear_output as wipe")
    run = kernel.ok('%%azpar -q --chunk-size 1 -o wiped for i in range(2):\n'
                    'print(f"working on {i}")\nshown_by_ipython(Html("<p>draft</p>"))\nwipe(wait=True)\n'
                    'shown_by_ipython(Html(f"<p>done {i}</p>"))\nshown_by_ipython(Html(f"<p>final {i}</p>"), clear=True)\ni')
    assert run.transcript() == ["<display> <p>final 0</p>", "<display> <p>final 1</p>"], run.transcript()
    assert "\x1b" not in run.stdout and kernel.value("wiped") == "[0, 1]"
    # A display kept by its id and updated (a progress line): None came back, and `.update` failed.
    run = kernel.ok('%%azpar -q --chunk-size 1 -o kept for i in range(2):\n'
                    'handle = display(f"step 0 of {i}", display_id=True)\nprint(f"between {i}")\n'
                    'handle.update(f"step 1 of {i}")\n'
                    'from IPython.display import display as ipython_display, update_display\n'
                    'ipython_display(f"other {i}", display_id=f"d{i}")\nupdate_display(f"last {i}", display_id=f"d{i}")\n'
                    'type(handle).__name__')
    assert run.transcript() == ["<display> 'step 1 of 0'", "between 0", "<display> 'last 0'",
                                "<display> 'step 1 of 1'", "between 1", "<display> 'last 1'"], run.transcript()
    assert kernel.value("kept") == "['_DisplayHandle', '_DisplayHandle']"


@pytest.mark.timeout(120)
def test_matplotlib_figures_of_iterations_are_shown_as_the_notebook_shows_them(kernel):
    """``plt.show()`` in a body printed ``Figure(640x480)`` (the kernel's inline backend, inherited by the
    workers, had no notebook there) and figures a body left open were never shown. A worker now draws with a
    backend of its own when the notebook shows figures inline: show() puts each open figure, a PNG, in the
    iteration's output where it was called, and a task's end shows what its iterations left open."""
    pytest.importorskip("matplotlib")
    kernel.ok("import matplotlib.pyplot as plt")
    run = kernel.ok("%%azpar -q --chunk-size 1 -o shown for i in range(2):\n"
                    "print(f'before {i}')\nplt.plot([0, i])\nplt.show()\nprint(f'after {i}')\ni")
    figure = "<display> <Figure size 640x480 with 1 Axes>"
    assert run.transcript() == ["before 0", figure, "after 0", "before 1", figure, "after 1"], run.transcript()
    pictures = [m["content"]["data"] for m in run.messages if m["msg_type"] == "display_data"]
    assert len(pictures) == 2 and all(base64.b64decode(p["image/png"])[:4] == b"\x89PNG" for p in pictures)
    left = kernel.ok("%%azpar -q --chunk-size 2 -o left for i in range(4):\n"
                     "fig, ax = plt.subplots()\nax.bar([0], [i])\nfig.number")
    assert sum(m["msg_type"] == "display_data" for m in left.messages) == 4, left.transcript()
    assert "Figure(640x480)" not in run.stdout + left.stdout
    # A figure that cannot be drawn (a broken mathtext title) is named, as the notebook's formatter names it,
    # and its iteration's value stands.
    broken = kernel.ok("%%azpar -q -o drawn for i in range(1):\nplt.plot([0, 1])\nplt.title(r'$\\frac{$')\ni")
    assert "could not be drawn: ValueError" in broken.transcript()[0], broken.transcript()
    assert kernel.value("drawn") == "[0]"


@pytest.mark.timeout(120)
def test_failing_iteration_error_shows_index_item_and_cell_line(kernel):
    run = kernel.run('''%%azpar -q -o never_bound for x in ["a", "b", "c", "d"]:
y = x.upper()
if x == "c":
    raise ValueError(f"bad item {x}")
y''')
    assert run.status == "error", run.describe()
    assert run.content["ename"] == "IterationError"
    assert len(run.errors) == 1
    error = run.errors[0]
    for content in (error, run.content):  # the IOPub error message and the execute_reply
        text = _ANSI.sub("", "\n".join(content["traceback"]))
        assert "iteration 2 (item 'c') raised ValueError: bad item c (cell line 4)" in text, text
        assert 'File "<azpar cell>", line 4' in text, text
        assert 'raise ValueError(f"bad item {x}")' in text, text
        assert text.rstrip().endswith("ValueError: bad item c"), text
        # Only the remote traceback: no frames of the client-side machinery.
        assert "magics.py" not in text and "interactiveshell.py" not in text, text
    assert "iteration 2" in error["evalue"] and "'c'" in error["evalue"]
    assert kernel.value("'never_bound' in globals()") == "False"
    # The iterations that finished stay readable from the job handle, and the error's advice binds them.
    partial = kernel.value("__import__('azpar_magic').jobs()[-1].partial_results()")
    assert "2:" not in partial
    advice = re.search(r"`(%azpar collect \S+ --errors remove)` binds them", error["evalue"])
    assert advice, error["evalue"]
    kernel.ok(advice.group(1) + " -o finished_only")
    assert kernel.value("finished_only") == repr(list(eval(partial).values()))


@pytest.mark.timeout(120)
def test_stop_error_does_not_count_cancelled_iterations_as_failed(kernel):
    run = kernel.run('''%%azpar -q --chunk-size 1 for x in range(6):
import time
if x == 0:
    raise ValueError("only item 0 fails")
time.sleep(1)
x''')
    assert run.status == "error", run.describe()
    assert "iteration 0 (item 0) raised ValueError: only item 0 fails" in run.content["evalue"]
    assert "other iteration(s) failed" not in run.content["evalue"], run.content["evalue"]


@pytest.mark.timeout(120)
def test_stop_error_comes_back_promptly(kernel):
    _warm_pool(kernel)
    run = kernel.run('''%%azpar -q --workers 2 --chunk-size 1 for x in range(8):
import time
if x == 0:
    raise ValueError("boom")
time.sleep(3)
x''')
    assert run.status == "error" and run.content["ename"] == "IterationError", run.describe()
    assert run.elapsed < 2.5, f"the error came back after {run.elapsed:.1f} s"


@pytest.mark.timeout(120)
def test_progress_line_only_for_runs_longer_than_a_second(kernel):
    quick = kernel.ok('''%%azpar -o quick for i in range(8):
i + 1''')
    assert "azpar [" not in quick.stdout + quick.stderr, quick.describe()
    assert quick.stdout == ""
    assert kernel.value("quick") == repr(list(range(1, 9)))

    slow = kernel.ok('''%%azpar -o slow for i in range(2):
import time
time.sleep(1.6)
i''')
    assert slow.elapsed >= 1.5
    # One display redrawn in place by its display id, not a line per tick.
    progress = [m for m in slow.messages if m["msg_type"] in ("display_data", "update_display_data")
                and m["content"].get("transient", {}).get("display_id")]
    assert progress and progress[0]["msg_type"] == "display_data", slow.describe()
    assert len({m["content"]["transient"]["display_id"] for m in progress}) == 1
    assert progress[0]["content"]["data"]["text/plain"].startswith("azpar [local]")
    final = progress[-1]["content"]["data"]["text/plain"]
    assert re.search(r"succeeded · 2/2 done", final), final
    assert "azpar [" not in slow.stdout, slow.describe()
    assert kernel.value("slow") == "[0, 1]"

    quiet = kernel.ok('''%%azpar -q -o slow for i in range(2):
import time
time.sleep(1.2)
i''')
    assert quiet.stdout == "", quiet.describe()


@pytest.mark.timeout(180)
def test_ctrl_c_cancels_the_job_and_the_pool_stays_healthy(fresh_kernel):
    kernel = fresh_kernel
    _warm_pool(kernel)
    # 40 iterations of 0.5 s in two tasks, both running when the interrupt comes: nothing is
    # queued behind them (see the next test for that case).
    reply, interrupted = _run_interrupted(kernel, '''%%azpar --workers 2 --chunk-size 20 -o never for i in range(40):
import time
time.sleep(0.5)
i''', after=1.5)
    _check_cancelled(kernel, reply, interrupted)
    assert kernel.value("len(__import__('azpar_magic').jobs()[-1].partial_results())") == "0"
    # Running tasks were stopped: no worker of the pool is still busy with the old job.
    nodes = kernel.value("[n.state for n in __import__('azpar_magic').jobs()[-1].snapshot().nodes]")
    assert "running" not in nodes, nodes

    # The next cell runs on the same pool, at once, with the right result.
    after = kernel.ok('''%%azpar -q --workers 2 -o squares for i in range(10):
i * i''', timeout=30)
    assert after.elapsed < 5, after.describe()
    assert kernel.value("squares") == repr([i * i for i in range(10)])
    jobs = kernel.ok("%azpar jobs").stdout  # columns: id, when, backend, state, done/failed/total, cell
    assert re.search(r" local +cancelled +0/0/40 ", jobs), jobs


@pytest.mark.timeout(180)
def test_ctrl_c_stops_queued_tasks_promptly(fresh_kernel):
    kernel = fresh_kernel
    _warm_pool(kernel)
    # 40 iterations of 0.5 s on 2 workers, default chunking: more tasks than workers.
    reply, interrupted = _run_interrupted(kernel, '''%%azpar --workers 2 -o never for i in range(40):
import time
time.sleep(0.5)
i''', after=1.5)
    assert reply.status == "error" and reply.content["ename"] == "KeyboardInterrupt", reply.describe()
    assert "cancelled" in reply.stderr, reply.describe()
    # Queued tasks never start: no task of the job started after the interrupt (the kernel
    # and this process share the system's monotonic clock).
    started = kernel.value("max(t.started for t in __import__('azpar_magic').jobs()[-1].tasks.values() "
                           "if t.started is not None)")
    assert float(started) < interrupted, f"a task started {float(started) - interrupted:.2f} s after the interrupt"
    _check_cancelled(kernel, reply, interrupted)
    after = kernel.ok('''%%azpar -q --workers 2 -o squares for i in range(10):
i * i''', timeout=30)
    assert kernel.value("squares") == repr([i * i for i in range(10)]), after.describe()


@pytest.mark.timeout(120)
def test_no_wait_returns_a_job_and_collect_binds_it_later(kernel):
    run = kernel.ok('''%%azpar -q --no-wait -o later for x in range(4):
import time
time.sleep(0.6)
print(f"item {x}")
x * 10''')
    assert run.elapsed < 2, run.describe()
    assert len(run.results) == 1, run.describe()
    shown = run.results[0]["text/plain"]
    assert shown.startswith("<azpar Job azpar [local] azpar-"), shown
    assert "text/html" in run.results[0]
    job_id = _JOB_ID.search(shown).group(0)
    assert run.stdout == ""  # iterations' prints wait for collect
    assert kernel.value("'later' in globals()") == "False"

    listing = kernel.ok("%azpar jobs").stdout
    assert job_id in listing, listing

    collected = kernel.ok(f"%azpar collect {job_id[-8:]}", timeout=60)  # the end of the id is enough
    assert collected.stdout.rsplit("\r", 1)[-1].endswith("".join(f"item {x}\n" for x in range(4))), \
        collected.describe()
    assert kernel.value("later") == "[0, 10, 20, 30]"
    # The same job, bound again under another name.
    kernel.ok(f"%azpar collect {job_id} -o again")
    assert kernel.value("again") == "[0, 10, 20, 30]"
    # The handle shown by the cell is the job in the session list.
    assert kernel.value(f"[j.state for j in __import__('azpar_magic').jobs() if j.id == {job_id!r}]") \
        == "['succeeded']"
    listing = kernel.ok("%azpar jobs").stdout
    assert re.search(rf"^{job_id} .* local +succeeded +4/0/4 +%%azpar -q --no-wait -o later for x in range\(4\):$",
                     listing, re.M), listing


@pytest.mark.timeout(240)
def test_run_notebook_script_runs_the_quickstart(tmp_path):
    done = subprocess.run([sys.executable, str(RUN_NOTEBOOK), str(QUICKSTART)], cwd=ROOT,
                          env=_isolated_env(tmp_path), capture_output=True, text=True, timeout=200)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "%%azpar -q -o estimates for seed in range(40):" in out
    assert "40 estimates, mean 3.1460" in out
    assert "working on 0\n    working on 1\n" in out
    assert "Out: [0.25, 0.5, ZeroDivisionError('division by zero'), 1.0]" in out
    assert "[raised, as its raises-exception tag expects]" in out
    assert "[0, 1, 4, 9, 16, 25, 36, 49]" in out
    assert re.search(r"^OK: \d+ code cells ran in [\d.]+ s \(1 expected error\)\.$", out, re.M), out


@pytest.mark.timeout(240)
def test_run_notebook_script_fails_on_a_cell_error(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell("print('before')"), new_code_cell("1 / 0"),
                             new_code_cell("print('after')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "broken.ipynb"
    nbformat.write(nb, str(path))
    done = subprocess.run([sys.executable, str(RUN_NOTEBOOK), str(path)], cwd=ROOT,
                          env=_isolated_env(tmp_path), capture_output=True, text=True, timeout=200)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "before" in done.stdout
    assert "ZeroDivisionError" in done.stdout
    assert "[3/3]" not in done.stdout  # the run stops at the failing cell
    assert "FAILED: code cell 2 of 3 raised ZeroDivisionError" in done.stdout
