"""--seed (issue 13, item 8): numpy generators made without a seed are seeded too, the
README's derivation reproduces a run in a sequential loop, and in-place changes of a
captured object are seen by later iterations on the same worker, as the README says."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(120)

README = Path(__file__).resolve().parent.parent / "README.md"
BODY = ("import random\nimport numpy as np\n"
        "rng = np.random.default_rng()\nrng.normal() + random.random() + np.random.rand()")


def readme_recipe() -> str:
    """The README's sequential loop for --seed: the python block that uses its derivation."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    found = [b for b in blocks if 'f"azpar:{N}:{i}"' in b and "default_rng(" in b]
    assert len(found) == 1, "the README has no (or more than one) sequential --seed recipe"
    return found[0]


@pytest.mark.parametrize("options", ["--workers 2 --chunk-size 1", "--workers 2 --chunk-size 3"])
def test_the_readme_recipe_reproduces_a_seeded_run_with_default_rng(ip, run_cell, options):
    ip.user_ns["xs"] = list(range(7))
    run = run_cell(f"%%azpar -q --seed 7 {options} -o out for x in xs:\n{BODY}")
    assert run.success, run.error
    scope = {"xs": list(range(7))}
    exec(readme_recipe(), scope)
    assert ip.user_ns["out"] == scope["out"]
    assert len(set(scope["out"])) == 7  # iterations differ from one another


def test_every_generator_made_without_a_seed_follows_the_documented_rule(ip, run_cell):
    body = ("import numpy as np\n"
            "a = np.random.default_rng().integers(1 << 62)\n"
            "b = np.random.Generator(np.random.PCG64()).integers(1 << 62)\n"
            "c = np.random.SeedSequence().entropy\n"
            "d = np.random.RandomState().randint(1 << 30)\n"
            "(int(a), int(b), int(c), int(d))")
    run = run_cell(f"%%azpar -q --seed 11 --chunk-size 2 -o got for x in range(5):\n{body}")
    assert run.success, run.error

    def entropy(i: int, k: int) -> int:
        return random.Random(f"azpar:11:{i}:{k}").getrandbits(128)

    expected = [(int(np.random.default_rng(entropy(i, 0)).integers(1 << 62)),
                 int(np.random.Generator(np.random.PCG64(entropy(i, 1))).integers(1 << 62)),
                 entropy(i, 2),
                 int(np.random.RandomState(np.random.MT19937(entropy(i, 3))).randint(1 << 30)))
                for i in range(5)]
    assert ip.user_ns["got"] == expected


def test_runs_without_seed_stay_random_after_a_seeded_run(ip, run_cell):
    assert run_cell(f"%%azpar -q --seed 3 --workers 2 -o s for x in range(4):\n{BODY}").success
    first = run_cell(f"%%azpar -q --workers 2 -o a for x in range(4):\n{BODY}")
    second = run_cell(f"%%azpar -q --workers 2 -o b for x in range(4):\n{BODY}")
    assert first.success and second.success
    assert set(ip.user_ns["a"]).isdisjoint(ip.user_ns["b"])  # the OS's entropy again, not the seeded rule
    assert set(ip.user_ns["a"]).isdisjoint(ip.user_ns["s"])


def test_in_place_changes_of_a_captured_object_reach_later_iterations_on_the_same_worker(ip, run_cell):
    # What the README warns about: not isolated, and never back in the notebook.
    ip.user_ns["seen"] = []
    run = run_cell("%%azpar -q --workers 1 --chunk-size 1 -o sizes for i in range(4):\nseen.append(i)\nlen(seen)")
    assert run.success, run.error
    assert ip.user_ns["sizes"] == [1, 2, 3, 4]
    assert ip.user_ns["seen"] == []
    readme = " ".join(README.read_text().split())
    assert "Changing a captured object in place is not isolated" in readme


def _numpy_on_bare_nodes() -> dict:
    """A profile whose package index (the test wheel folder) holds numpy: the nodes install the
    kernel's numpy by themselves when a body uses it (issue 15), as from a real index."""
    from .wheels import node_pip_options

    return {"pip_options": node_pip_options("numpy")}


@pytest.mark.azure
def test_a_generator_made_in_the_notebook_is_warned_of_when_tasks_would_repeat_its_numbers(ip, run_cell):
    """A numpy Generator (or random.Random) made in the notebook travels with its state: each worker
    starts from its own copy, so iterations on different workers drew the same numbers, in silence. Said
    before the run, naming the variable; a generator inside a notebook object too; not for one task
    (it continues the stream as the loop would), nor for generators made in the body."""
    ip.run_cell("import numpy as np, random\nrng = np.random.default_rng(1)\nr2 = random.Random(3)\n"
                "class Sim:\n    def __init__(self):\n        self.g = np.random.default_rng(5)\n"
                "    def draw(self):\n        return float(self.g.random())\nsim = Sim()")
    try:
        run = run_cell("%%azpar --workers 2 --chunk-size 1 -o out for i in range(4):\nfloat(rng.random())")
        assert run.success, run.error
        assert "azpar: warning: the loop body uses `rng` (a numpy.random.Generator): the job's 4 tasks" in run.stderr
        assert "draw the same numbers" in run.stderr and "--seed N" in run.stderr and "PCG64" not in run.stderr

        stdlib = run_cell("%%azpar -q --chunk-size 2 -o out for i in range(4):\nr2.random()")
        assert "`r2` (a random.Random): the job's 2 tasks" in stdlib.stderr, stdlib.stderr
        inside = run_cell("%%azpar -q --chunk-size 1 -o out for i in range(3):\nsim.draw()")
        assert "uses a numpy.random.Generator inside a notebook object it uses: the job's 3 tasks" in inside.stderr

        one_task = run_cell("%%azpar -q --chunk-size 4 -o out for i in range(4):\nfloat(rng.random())")
        assert one_task.success and "warning" not in one_task.stderr, one_task.stderr
        assert len(set(ip.user_ns["out"])) == 4
        own = run_cell("%%azpar -q --chunk-size 1 -o out for i in range(4):\nfloat(np.random.default_rng().random())")
        assert own.success and "warning" not in own.stderr, own.stderr
        api = run_cell("import azpar_magic\n_ = azpar_magic.map(lambda i: float(rng.random()), range(4), chunk_size=1)")
        assert "the function given to map uses `rng` (a numpy.random.Generator)" in api.stderr, api.stderr
        assert "inside the function instead" in api.stderr and "with seed=N" in api.stderr, api.stderr
    finally:
        for name in ("rng", "r2", "Sim", "sim", "out", "_"):
            ip.user_ns.pop(name, None)


def test_the_recipe_holds_on_azure_batch_too(ip, run_cell, batch, azurite, tmp_path, monkeypatch):
    from .azure_support import azure_profile

    monkeypatch.chdir(tmp_path)
    ip.user_ns["xs"] = list(range(5))
    with azure_profile(tmp_path / "config", batch, azurite, **_numpy_on_bare_nodes()):
        run = run_cell(f"%%azpar -q --seed 7 --chunk-size 2 -o out for x in xs:\n{BODY}")
    assert run.success, run.error
    scope = {"xs": list(range(5))}
    exec(readme_recipe(), scope)
    assert ip.user_ns["out"] == scope["out"]


def test_a_numpy_whose_entropy_cannot_be_replaced_is_said_not_silently_ignored(tmp_path):
    """Unit test of the worker's fallback, with a stand-in numpy whose SeedSequence draws
    from the OS without reading ``bit_generator.randbits``: the worker leaves it as it was
    and the iteration's stderr says once that unseeded generators are not reproducible."""
    import subprocess
    import sys

    fake = tmp_path / "numpy"
    (fake / "random").mkdir(parents=True)
    (fake / "__init__.py").write_text("__version__ = '0.stand-in'\nfrom . import random\n")
    (fake / "random" / "__init__.py").write_text(
        "import os\nfrom . import bit_generator\n"
        "class SeedSequence:\n"
        "    def __init__(self, entropy=None, spawn_key=()):\n"
        "        self.entropy = int.from_bytes(os.urandom(16), 'big') if entropy is None else entropy\n"
        "    def generate_state(self, n):\n        return [self.entropy % 97] * n\n"
        "def seed(state):\n    pass\n")
    (fake / "random" / "bit_generator.py").write_text("import secrets\nrandbits = secrets.randbits\n")
    code = ("import io, sys\nimport azpar_magic.worker as w\nimport numpy.random.bit_generator as bg\n"
            "original = bg.randbits\nsys.stderr = io.StringIO()\n"
            "w._seed_iteration(1, 0); w._seed_iteration(1, 1)\n"
            "note = sys.stderr.getvalue(); sys.stderr = sys.__stderr__\n"
            "print(repr(note)); print(w._FRESH_ENTROPY == [None] and bg.randbits is original)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(README.parent)])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    note, untouched = out.stdout.splitlines()
    assert untouched == "True"
    assert note.count("azpar: --seed could not seed the numpy generators") == 1, note
    assert "numpy 0.stand-in" in note and "default_rng(seed)" in note


@pytest.mark.azure
def test_the_worker_imports_numpy_only_for_a_body_that_does(ip, run_cell, batch, azurite, tmp_path, monkeypatch):
    """Each Azure task is a fresh process with nothing of numpy loaded by the namespace: a
    seeded body that never uses numpy does not pay for importing it, and a body that imports
    it itself (or through pandas, scipy, ...) is seeded from its first iteration on."""
    from .azure_support import azure_profile

    monkeypatch.chdir(tmp_path)
    ip.user_ns.pop("np", None)
    with azure_profile(tmp_path / "config", batch, azurite, **_numpy_on_bare_nodes()):
        plain = run_cell("%%azpar -q --seed 7 --chunk-size 2 -o loaded for x in range(4):\n"
                         "import sys\n'numpy' in sys.modules")
        own = run_cell("%%azpar -q --seed 7 --chunk-size 2 -o own for x in range(4):\n"
                       "import random\nimport numpy\n"
                       "numpy.random.default_rng().normal() + random.random() + numpy.random.rand()")
    assert plain.success and own.success, (plain.error, own.error)
    assert ip.user_ns["loaded"] == [False] * 4
    scope = {"xs": list(range(4))}
    exec(readme_recipe(), scope)
    assert ip.user_ns["own"] == scope["out"]
