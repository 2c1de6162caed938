"""What a task on a node pays to load its job (issue 16, figures i and j), as behaviour:
large arrays of the namespace travel out of band and are mapped from the node's file, not
copied out of a pickle; job preparation's ``worker.py --check`` leaves a stamp so tasks skip
the environment check and the namespace's sha256; a task needing no dill does not import it.

The worker runs as a plain script in a folder of its own, the way a node runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from azpar_magic import worker as wire
from azpar_magic.backends.azure import commands
from azpar_magic.run import capture
from azpar_magic.run.parsing import parse_cell

from .azure_support import wait_until

MB = 1 << 20


@pytest.fixture
def node(tmp_path, monkeypatch):
    """(make, run): make(body, namespace) stages a job and one task as job preparation leaves
    them (envelope, namespace file, task file); run(*args) runs the copied worker.py there."""
    module = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", module)
    script = tmp_path / "node" / "worker.py"
    script.parent.mkdir()
    shutil.copy(wire.__file__, script)
    folder = tmp_path / "prep"
    folder.mkdir()

    def make(body: str, namespace: dict, items=(0, 1)) -> dict:
        module.__dict__.update(namespace)
        cell = parse_cell("for x in items", body)
        cap = capture.capture(cell, module.__dict__)
        header = capture.envelope_header(cell, cap)
        (folder / header["namespace"]["file"]).write_bytes(cap.data)
        (folder / "envelope.azpj").write_bytes(wire.pack(wire.ENVELOPE_MAGIC, header))
        codec, data = capture.serialize_items(list(items), cap.names, module.__dict__)
        task = {"envelope": "envelope.azpj", "task": "1", "indices": list(range(len(items))), "items_codec": codec}
        (folder / "task.azpt").write_bytes(wire.pack(wire.TASK_MAGIC, task, data))
        return header

    def run(*args: str) -> subprocess.CompletedProcess:
        site = [os.path.dirname(os.path.dirname(m.__file__)) for m in (wire._dill(), np)]
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.pathsep.join(dict.fromkeys(site))}
        return subprocess.run([sys.executable, "-I", str(script), *args], cwd=folder, capture_output=True,
                              text=True, env=env, timeout=60)

    return folder, make, run


def _values(folder) -> list:
    result = wire.read_result((folder / "out.azpr").read_bytes())
    assert not result["failed"], result["failed"]
    return wire.loads(*result["values"][1:])


def test_a_large_array_travels_out_of_band_and_loads_mapped_and_writable(tmp_path):
    big = np.arange(2 * MB // 8, dtype=np.float64)
    codec, data = wire.dumps({"big": big, "small": np.arange(5), "n": 3}, out_of_band=True)
    assert data.startswith(wire.OUT_OF_BAND_MAGIC)
    path = tmp_path / "ns.bin"
    path.write_bytes(data)
    loaded = wire.loads(codec, wire.read_namespace(str(path)))
    assert np.array_equal(loaded["big"], big) and loaded["small"].tolist() == [0, 1, 2, 3, 4] and loaded["n"] == 3
    owner = loaded["big"]
    while not isinstance(owner, memoryview) and getattr(owner, "base", None) is not None:
        owner = owner.base
    assert isinstance(owner, memoryview) and isinstance(owner.obj, type(wire.read_namespace(str(path))))  # the mmap
    loaded["big"][0] = -1.0  # copy-on-write: the file keeps its bytes
    assert path.read_bytes() == data
    # From bytes (the job store's copy for %azpar debug): a writable copy, as before the framing.
    again = wire.loads(codec, data)
    again["big"][1] = -2.0
    assert again["big"][0] == 0.0 and again["big"].flags.writeable
    # Small namespaces stay a plain pickle (what older clients wrote, still read).
    assert not wire.dumps({"n": 3}, out_of_band=True)[1].startswith(wire.OUT_OF_BAND_MAGIC)


def test_a_truncated_framing_is_bad_input_not_a_crash():
    codec, data = wire.dumps({"big": np.zeros(MB // 4)}, out_of_band=True)
    with pytest.raises(wire.BadInput, match="truncated"):
        wire.loads(codec, data[: len(data) // 2])


def test_a_checked_node_runs_a_plain_task_without_dill_and_the_stamp_is_kept_to_its_files(node):
    folder, make, run = node
    make("import sys\n('dill' in sys.modules, float(big[x]))", {"big": np.arange(MB // 4, dtype=np.float64)})
    task = [str(folder / "task.azpt"), str(folder / "out.azpr")]
    proc = run(*task)  # no stamp: the task checks the environment itself (dill's version, read, not imported)
    assert proc.returncode == wire.EXIT_OK, proc.stderr
    assert _values(folder) == [(False, 0.0), (False, 1.0)]
    proc = run("--check", str(folder / "envelope.azpj"))
    assert proc.returncode == wire.EXIT_OK, proc.stderr
    assert (folder / ("envelope.azpj" + wire.CHECKED_SUFFIX)).exists()
    proc = run(*task)
    assert proc.returncode == wire.EXIT_OK, proc.stderr
    assert _values(folder) == [(False, 0.0), (False, 1.0)]  # the stamp stands for both checks
    # A namespace file replaced after the check is not covered by the stamp: hashed, and refused.
    ns = next(folder.glob("ns-*.bin"))
    data = bytearray(ns.read_bytes())
    data[-1] ^= 0xFF
    ns.write_bytes(bytes(data))
    proc = run(*task)
    assert proc.returncode == wire.EXIT_BAD_INPUT and "sha256 does not match" in proc.stderr


def test_a_task_writing_to_a_mapped_array_changes_only_its_own_copy(node):
    folder, make, run = node
    make("big[x] = -1.0\nfloat(big.sum())", {"big": np.ones(MB // 4, dtype=np.float64)}, items=(0,))
    assert run("--check", str(folder / "envelope.azpj")).returncode == wire.EXIT_OK
    expected = [float(MB // 4) - 2.0]
    for _ in range(2):  # the second task starts from the file's values again
        proc = run(str(folder / "task.azpt"), str(folder / "out.azpr"))
        assert proc.returncode == wire.EXIT_OK, proc.stderr
        assert _values(folder) == expected


def test_check_without_the_namespace_beside_it_checks_the_environment_only(node):
    folder, make, run = node
    header = make("x", {"big": np.ones(MB // 4)})
    (folder / header["namespace"]["file"]).unlink()
    proc = run("--check", str(folder / "envelope.azpj"))
    assert proc.returncode == wire.EXIT_OK, proc.stderr
    assert not (folder / ("envelope.azpj" + wire.CHECKED_SUFFIX)).exists()


@pytest.mark.azure
@pytest.mark.timeout(180)
def test_on_the_test_service_job_preparation_stamps_and_tasks_map_the_array(azure, ip, run_cell, batch):
    import azpar_magic

    ip.user_ns["table"] = np.arange(MB // 2, dtype=np.float64)  # 4 MB: out of band
    run = run_cell("%%azpar -q --keep -o seen for i in range(6):\nimport sys, os\n"
                   "(float(table[i * 1000]), 'dill' in sys.modules, table.flags.writeable, os.path.basename(sys.argv[0]))")
    assert run.success, run.error
    # Each task ran the worker job preparation compiled, and needed no dill.
    assert commands.WORKER_COMPILED == wire.COMPILED_FILE
    assert ip.user_ns["seen"] == [(float(i * 1000), False, True, commands.WORKER_COMPILED) for i in range(6)]
    job = azpar_magic.jobs()[-1]
    with batch.cond:
        roots = [n.root for n in batch.pools["azpar-test"].nodes.values()]
    stamps = [r / "workitems" / job.id / "job-1" / "jobpreparation" / "wd" / ("envelope.azpj" + wire.CHECKED_SUFFIX)
              for r in roots]
    wait_until(lambda: any(p.exists() for p in stamps), 10, "a job preparation stamp")


@pytest.mark.azure
@pytest.mark.timeout(180)
def test_on_the_test_service_a_later_jobs_preparation_runs_the_worker_an_earlier_one_compiled(azure, ip, run_cell,
                                                                                              batch):
    import azpar_magic

    for _ in range(2):
        run = run_cell("%%azpar -q --keep -o seen for i in range(4):\nimport sys, os\nos.path.basename(sys.argv[0])")
        assert run.success, run.error
        assert ip.user_ns["seen"] == [commands.WORKER_COMPILED] * 4  # the tasks ran the compiled worker both times
    first, second = azpar_magic.jobs()[-2:]
    with batch.cond:
        roots = [n.root for n in batch.pools["azpar-test"].nodes.values()]

    def compiled(root, job):
        return root / "workitems" / job.id / "job-1" / "jobpreparation" / "wd" / commands.WORKER_COMPILED

    both = [r for r in roots if compiled(r, first).exists() and compiled(r, second).exists()]
    assert both, "no node prepared both jobs"
    for root in both:
        shared = list((root / "shared").glob("azpar-worker-*-py*.pyc"))
        assert len(shared) == 1, shared  # made by the first job on this node, for every later one
        # The second job's preparation ran that copy and handed it to its tasks: the same file.
        assert os.path.samefile(compiled(root, second), shared[0])
