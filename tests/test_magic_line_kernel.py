"""Issue 13 items 2 and 7 in a real kernel, as a user meets them: the magic line is not
rewritten from the namespace, and a real Ctrl-C (SIGINT from the kernel manager) while the
namespace is being pickled says in one line that nothing was submitted."""

from __future__ import annotations

import time

import pytest

from .test_kernel import _ANSI, _start, _stop


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    base = tmp_path_factory.mktemp("kernel-line")
    kernel, _ = _start(base)
    kernel.cwd = base / "cwd"
    yield kernel
    _stop(kernel)


@pytest.mark.timeout(120)
def test_inputs_placeholder_after_a_sequential_loop(kernel):
    """The issue's reproduction: the sequential loop ran first, so `i` is 2 in the kernel."""
    for i in range(3):
        (kernel.cwd / f"part-{i}.csv").write_text(f"rows of part {i}\n")
    kernel.ok("for i in range(3):\n    pass")
    kernel.ok("%%azpar -q -o r --inputs 'part-{i}.csv' for i in range(3):\n"
              "import glob\n"
              "[open(p).read() for p in glob.glob('inputs/*.csv')]")
    assert kernel.value("r") == repr([[f"rows of part {i}\n"] for i in range(3)])


@pytest.mark.timeout(120)
def test_real_ctrl_c_while_pickling_the_namespace(kernel):
    kernel.ok("import time\n"
              "class SlowToPickle:\n"
              "    def __reduce__(self):\n"
              "        time.sleep(30)\n"
              "        return (SlowToPickle, ())\n"
              "slow = SlowToPickle()\n"
              "import azpar_magic\n"
              "jobs_before = len(azpar_magic.jobs())")
    msg_id = kernel.kc.execute("%%azpar -q -o r2 for x in range(3):\nslow\nx")
    time.sleep(1.5)  # capture is pickling `slow` by now
    kernel.km.interrupt_kernel()
    reply = kernel.kc.get_shell_msg(timeout=20)
    assert reply["parent_header"]["msg_id"] == msg_id
    content = reply["content"]
    assert content["status"] == "error", content
    assert content["ename"] == "UsageError", content
    shown = _ANSI.sub("", "\n".join(content["traceback"]))
    assert "nothing was submitted" in content["evalue"]
    assert "pickle" not in shown and "__reduce__" not in shown and "Traceback" not in shown, shown
    assert kernel.value("len(azpar_magic.jobs()) - jobs_before") == "0"
    assert kernel.value("'r2' in globals()") == "False"
    kernel.ok("%%azpar -q -o r3 for x in range(2):\nx * 5")  # the kernel and pool still work
    assert kernel.value("r3") == "[0, 5]"
