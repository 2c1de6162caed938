"""--inputs / --outputs on the local pool, through the magic: per-iteration inputs read in
place, outputs back under their iteration, and the errors refused before submission."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from IPython.core.error import UsageError

import azpar_magic

from .data_support import BODY, N_PARTS, check_outputs, make_parts

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_parts(tmp_path)
    return tmp_path


def _job_root(folder: Path) -> Path:
    return folder / "azpar_outputs" / azpar_magic.jobs()[-1].id


@pytest.mark.parametrize("chunk", ["1", "3"])
def test_csv_parts_in_png_and_csv_out_per_iteration(ip, run_cell, folder, chunk):
    run = run_cell(f"%%azpar -q -o made --chunk-size {chunk} --inputs 'parts/part-{{i}}.csv' --inputs scale.txt "
                   f"--outputs '*.png' --outputs '*.csv' for i in range({N_PARTS}):\n{BODY}")
    assert run.success, run.error
    check_outputs(_job_root(folder), ip.user_ns["made"])
    job = azpar_magic.jobs()[-1]
    assert job.files.files(2) == [str(_job_root(folder) / "2" / n) for n in ("plot.png", "summary.csv")]
    assert not run.stderr  # every pattern matched in every iteration: no warning
    # The iterations' working folders are gone by the time the cell returns (they were removed after it, so a
    # script clearing azpar_outputs then met them half removed: FileNotFoundError from its rmtree).
    assert [p.name for p in (folder / "azpar_outputs").iterdir()] == [job.id]


@pytest.mark.skipif(os.environ.get("AZPAR_PORTABLE") == "1", reason="symbolic links: the portable mode makes hard "
                    "links, checked by test_portable.py")
def test_inputs_are_read_in_place_and_only_each_iterations_own(ip, run_cell, folder):
    body = ("import os\n"
            "(sorted(os.listdir('inputs/parts')), os.path.realpath(f'inputs/parts/part-{i}.csv'),\n"
            " os.path.islink('inputs/scale.txt') or os.path.islink('inputs'), os.path.basename(os.getcwd()))")
    run = run_cell(f"%%azpar -q -o seen --chunk-size 2 --inputs 'parts/part-{{i}}.csv' --inputs scale.txt "
                   f"for i in range(4):\n{body}")
    assert run.success, run.error
    for i, (listed, real, linked, cwd) in enumerate(ip.user_ns["seen"]):
        assert listed == [f"part-{i}.csv"]  # only its own part
        assert real == str((folder / "parts" / f"part-{i}.csv").resolve())  # the original, not a copy
        assert linked and cwd == str(i)  # its own working folder, named by its iteration


def test_tuple_targets_folders_and_globs(ip, run_cell, folder):
    ip.user_ns["pairs"] = [(0, "a"), (3, "b")]
    (folder / "refs" / "deep").mkdir(parents=True)
    (folder / "refs" / "deep" / "r.txt").write_text("R")
    (folder / "refs" / "top.txt").write_text("T")
    body = ("import os\n"
            "sorted(os.path.join(r, f)[len('inputs/'):] for r, _, fs in os.walk('inputs', followlinks=True) "
            "for f in fs)")
    run = run_cell("%%azpar -q -o seen --inputs 'parts/part-{n}.csv' --inputs refs --inputs 'parts/part-[12].csv' "
                   "for n, tag in pairs:\n" + body)
    assert run.success, run.error
    common = ["parts/part-1.csv", "parts/part-2.csv", "refs/deep/r.txt", "refs/top.txt"]
    assert ip.user_ns["seen"] == [sorted(common + ["parts/part-0.csv"]), sorted(common + ["parts/part-3.csv"])]


def test_an_absolute_path_outside_the_folder_keeps_its_path(ip, run_cell, folder, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "lookup.txt"
    outside.write_text("far")
    run = run_cell(f"%%azpar -q -o seen --inputs {outside} for i in range(2):\n"
                   f"open('inputs/{str(outside).lstrip('/')}').read()")
    assert run.success, run.error
    assert ip.user_ns["seen"] == ["far", "far"]


def test_the_working_folders_are_gone_when_the_cell_returns(ip, run_cell, folder):
    """The local pool keeps the job's working folder under the outputs folder (renames stay on one volume)
    and removed it after the cell had returned: a script clearing azpar_outputs right then met it half
    removed (FileNotFoundError from its rmtree, as a test of ours did in CI), and a listing showed it. Each
    iteration's own folder goes with its task; files a body leaves beside it (``../``) stay for the job's
    end, and here make its removal long enough to be seen every time."""
    import shutil

    run = run_cell("%%azpar -q -o r --outputs keep.txt for i in range(2):\n"
                   "for k in range(2000):\n    open(f'../stray-{i}-{k}.tmp', 'w').close()\n"
                   "open('keep.txt', 'w').write(str(i))\ni")
    assert run.success, run.error
    job = azpar_magic.jobs()[-1]
    assert [p.name for p in (folder / "azpar_outputs").iterdir()] == [job.id]
    assert sorted(p.name for p in (folder / "azpar_outputs" / job.id).glob("*/*")) == ["keep.txt"] * 2
    shutil.rmtree(folder / "azpar_outputs")  # as a script cleaning up would


def test_pattern_matching_nothing_warns_once_per_pattern(ip, run_cell, folder):
    run = run_cell("%%azpar -o out --outputs '*.png' --outputs 'keep-*.txt' for i in range(6):\n"
                   "if i % 2:\n    open(f'keep-{i}.txt', 'w').write(str(i))\ni")
    assert run.success, run.error
    warnings = [line for line in run.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2, run.stderr
    assert "'*.png' matched no file in 6 iterations (0, 1, 2, 3, 4, 5)" in warnings[0]
    assert "'keep-*.txt' matched no file in 3 iterations (0, 2, 4)" in warnings[1]
    assert "outputs of 3 iterations in" in run.stdout
    root = _job_root(folder)
    assert sorted(os.listdir(root)) == ["1", "3", "5"]
    assert (root / "3" / "keep-3.txt").read_text() == "3"
    assert azpar_magic.jobs()[-1].files.warnings() == []  # shown once
    none = run_cell("%%azpar -o out --outputs '*.png' for i in range(2):\ni")
    assert none.success, none.error
    assert "matched no file in 2 iterations" in none.stderr
    assert "outputs of" not in none.stdout, none.stdout  # "outputs of 0 iterations in" a folder never made


def test_a_failed_output_move_fails_its_iteration_only(ip, run_cell, folder):
    # Iteration 2 puts a file where its output folder must go (its job id is in its working
    # folder's name): the move fails, is retried, and is reported with the iteration.
    body = ("import os\nopen('out.csv', 'w').write(str(i))\n"
            "if i == 2:\n"
            "    work = os.path.basename(os.path.dirname(os.getcwd()))\n"
            "    job = work[len('.azpar-work-'):].rsplit('-', 1)[0]\n"
            "    dest = os.path.join(os.path.dirname(os.path.dirname(os.getcwd())), job)\n"
            "    os.makedirs(dest, exist_ok=True)\n"
            "    open(os.path.join(dest, '2'), 'w').close()\n"
            "i")
    run = run_cell(f"%%azpar -q -o out --errors pass --outputs out.csv for i in range(4):\n{body}")
    assert run.success, run.error
    out = ip.user_ns["out"]
    assert out[:2] == [0, 1] and out[3] == 3
    failure = azpar_magic.jobs()[-1].failures[2]
    assert failure.error_type == "azpar_magic.TransferError"
    assert "output file out.csv of iteration 2 could not be moved" in failure.message
    assert "after 3 attempts" in failure.message
    assert (_job_root(folder) / "3" / "out.csv").read_text() == "3"


def test_python_api_takes_the_same_options(folder):
    job = azpar_magic.run("for i in range(3)", "open('o.txt', 'w').write(open(f'inputs/parts/part-{i}.csv').read())",
                          inputs=["parts/part-{i}.csv"], outputs=["o.txt"], outputs_to="elsewhere")
    assert job.result() == [len((folder / "parts" / f"part-{i}.csv").read_text()) for i in range(3)]
    for i in range(3):
        assert Path(job.files.files(i)[0]).read_text() == (folder / "parts" / f"part-{i}.csv").read_text()
        assert job.files.files(i)[0] == str(folder / "elsewhere" / job.id / str(i) / "o.txt")


# ------------------------------------------------------------------------- refused before submission


def _refused(ip, run_cell, folder, cell: str, *fragments: str) -> str:
    before = len(azpar_magic.jobs())
    ip.user_ns.pop("r", None)
    run = run_cell(cell)
    assert not run.success and isinstance(run.error, UsageError), run.error
    message = str(run.error)
    for fragment in fragments:
        assert fragment in message, message
    assert len(azpar_magic.jobs()) == before and "r" not in ip.user_ns
    assert not (folder / "azpar_outputs").exists()
    return message


def test_missing_input_is_named(ip, run_cell, folder):
    _refused(ip, run_cell, folder, "%%azpar -o r --inputs data/missing.csv for i in range(2):\ni",
             "--inputs 'data/missing.csv' does not exist", str(folder / "data" / "missing.csv"))
    _refused(ip, run_cell, folder, "%%azpar -o r --inputs 'nope/*.csv' for i in range(2):\ni", "matches no file")


def test_an_input_opened_by_its_own_name_says_where_iterations_find_it(ip, run_cell, folder):
    """With --inputs or --outputs each iteration runs in a folder of its own: opening the file by the
    name it has beside the notebook fails there. The error says where the iteration finds it, or to
    pass it (it was a bare FileNotFoundError on the local pool)."""
    (folder / "scale.txt").write_text("3")
    run = run_cell("%%azpar -q -o r --inputs scale.txt for i in range(2):\nint(open('scale.txt').read()) * i")
    assert not run.success
    assert ("'scale.txt' is given with --inputs, and iterations find it as 'inputs/scale.txt': open that in the "
            "body") in str(run.error), run.error
    run = run_cell("%%azpar -q -o r --outputs '*.png' for i in range(2):\nint(open('scale.txt').read()) * i")
    assert "runs in a folder of its own: pass --inputs 'scale.txt' and open 'inputs/scale.txt'" in str(run.error)
    assert run_cell("%%azpar -q -o r for i in range(2):\nint(open('scale.txt').read()) * i").success  # its folder


def test_missing_per_iteration_input_names_the_iteration(ip, run_cell, folder):
    _refused(ip, run_cell, folder, f"%%azpar -o r --inputs 'parts/part-{{i}}.csv' for i in range({N_PARTS + 2}):\ni",
             f"for iteration {N_PARTS} ('parts/part-{N_PARTS}.csv') does not exist")


def test_wrong_placeholder_lists_the_loop_targets(ip, run_cell, folder):
    _refused(ip, run_cell, folder, "%%azpar -o r --inputs 'parts/part-{j}.csv' for i, k in [(0, 1)]:\ni",
             "{j}, which is not a loop target name", "{i}, {k}")
    _refused(ip, run_cell, folder, "%%azpar -o r --inputs 'parts/part-{i[5]}.csv' for i in [(0, 1)]:\ni",
             "cannot be formatted for iteration 0", "IndexError")
    _refused(ip, run_cell, folder, "%%azpar -o r --inputs 'parts/part-{i.csv' for i in range(2):\ni",
             "unbalanced braces")
    # An expression is not looked up as a name (format() said only "KeyError: 'i+1'").
    _refused(ip, run_cell, folder, "%%azpar -o r --inputs 'parts/part-{i+1}.csv' for i in range(2):\ni",
             "{i+1} is not a placeholder", "never an expression")


def test_a_file_name_with_braces_is_given_with_doubled_braces(ip, run_cell, folder):
    """`{{` and `}}` stand for literal braces, as the unbalanced-braces error says: a spec without
    placeholders was taken as written, so `a{{b}}.csv` looked for a file of that name."""
    (folder / "a{b}.csv").write_text("braced\n")
    _refused(ip, run_cell, folder, "%%azpar -o r --inputs 'a{b}.csv' for i in range(2):\ni",
             "{b}, which is not a loop target name", "Write {{ and }} for literal braces")
    run = run_cell("%%azpar -q -o r --inputs 'a{{b}}.csv' --inputs 'parts/part-{i}.csv' for i in range(2):\n"
                   "open('inputs/a{b}.csv').read()")
    assert run.success, run.error
    assert ip.user_ns["r"] == ["braced\n", "braced\n"]


def test_an_outputs_placeholder_is_refused_with_the_glob_that_takes_each_iterations_files(ip, run_cell, folder):
    """--inputs formats {i} per iteration, so users wrote --outputs 'out/o{i}.txt' too: the workers matched
    it as written, nothing came back, and the files each iteration wrote were removed with its working
    directory, with one warning. It is refused now, naming the glob that brings them back."""
    message = _refused(
        ip, run_cell, folder,
        "%%azpar -o r --inputs 'parts/part-{i}.csv' --outputs 'out/o{i:02d}.txt' for i in range(2):\n"
        "import os\nos.makedirs('out', exist_ok=True)\nopen(f'out/o{i:02d}.txt', 'w').write(str(i))\ni",
        "--outputs 'out/o{i:02d}.txt' holds {i}", "--outputs 'out/o*.txt'", "Nothing was submitted.",
    )
    assert message.count("Nothing was submitted") == 1, message
    _refused(ip, run_cell, folder, "%%azpar -o r --outputs '*.{png,csv}' for i in range(2):\ni",
             "braces are not glob syntax here", "--outputs '*.png' --outputs '*.csv'")
    with pytest.raises(ValueError, match=r"--outputs 'o\{i\}\.txt' holds \{i\}"):
        azpar_magic.run("for i in range(2)", "i", {}, outputs="o{i}.txt")
    assert not (folder / "azpar_outputs").exists()
    # The glob it names brings each iteration's own file back.
    run = run_cell("%%azpar -q -o r --outputs 'out/o*.txt' for i in range(2):\n"
                   "import os\nos.makedirs('out', exist_ok=True)\nopen(f'out/o{i:02d}.txt', 'w').write(str(i))\ni")
    assert run.success, run.error
    assert [(_job_root(folder) / str(i) / "out" / f"o{i:02d}.txt").read_text() for i in range(2)] == ["0", "1"]


def test_an_output_file_name_with_braces_is_given_with_doubled_braces(ip, run_cell, folder):
    """`{{` and `}}` stand for literal braces in every spec, as the README says: --outputs took them as
    written and looked for a file named `a{{b}}.txt`."""
    run = run_cell("%%azpar -o r --outputs 'a{{b}}.txt' for i in range(2):\nopen('a{b}.txt', 'w').write(str(i))\ni")
    assert run.success, run.error
    assert "matched no file" not in run.stderr, run.stderr
    assert [(_job_root(folder) / str(i) / "a{b}.txt").read_text() for i in range(2)] == ["0", "1"]


@pytest.mark.parametrize("options, fragment", [
    ("--inputs az://data/parts", "az:// inputs need the Azure backend"),
    ("--outputs x.png --outputs-to az://results/run", "az:// destinations need the Azure backend"),
    ("--outputs ../escape.txt", "must be a relative path"),
    ("--outputs /abs/*.png", "must be a relative path"),
    ("--outputs 'inputs/*.csv'", "points into inputs/"),
    ("--outputs-to elsewhere", "give --outputs GLOB"),
    ("--inputs ''", "--inputs '' names no file"),  # it linked the whole folder into every iteration
])
def test_bad_specs_are_refused(ip, run_cell, folder, options, fragment):
    _refused(ip, run_cell, folder, f"%%azpar -o r {options} for i in range(2):\ni", fragment)


@pytest.mark.parametrize("dest", ["taken.txt", None])
def test_an_outputs_folder_that_is_a_file_is_refused_before_anything_runs(ip, run_cell, folder, dest):
    """It failed inside the pool's submit with a FileExistsError traceback, the job already made."""
    (folder / (dest or "azpar_outputs")).write_text("not a folder")
    to = f"--outputs-to {dest} " if dest else ""
    ip.user_ns.pop("r", None)
    before = len(azpar_magic.jobs())
    run = run_cell(f"%%azpar -o r --outputs '*.txt' {to}for i in range(2):\nopen('o.txt', 'w').write('x')\ni")
    assert isinstance(run.error, UsageError), run.error
    said = f"--outputs-to '{dest}'" if dest else "the outputs folder 'azpar_outputs' (the default)"
    assert str(run.error).startswith(f"{said} is a file ({folder / (dest or 'azpar_outputs')})"), str(run.error)
    assert str(run.error).endswith("Nothing was submitted.")
    assert "r" not in ip.user_ns and len(azpar_magic.jobs()) == before


def test_the_job_store_keeps_the_data_options_for_a_rerun_in_a_new_kernel():
    from azpar_magic import jobstore as store
    from azpar_magic.jobs.job import JobOptions

    options = JobOptions(inputs=("parts/part-{i}.csv", "scale.txt"), outputs=("*.png",), outputs_to="out")
    assert store.options_from_json(json.loads(json.dumps(store.options_to_json(options)))) == options


def test_a_rerun_of_failed_iterations_gets_their_inputs_again(ip, run_cell, folder):
    ip.user_ns["flaky"] = {2}
    run = run_cell("%%azpar -q -o r --errors pass --inputs 'parts/part-{i}.csv' --outputs o.txt "
                   f"for i in range({N_PARTS}):\n"
                   "if i in flaky:\n    raise RuntimeError('flaky')\n"
                   "open('o.txt', 'w').write(open(f'inputs/parts/part-{i}.csv').read())")
    assert run.success, run.error
    first = azpar_magic.jobs()[-1]
    assert sorted(first.failures) == [2]
    ip.user_ns["flaky"] = set()
    ip.run_line_magic("azpar", f"rerun {first.id} --failed -q")
    rerun = azpar_magic.jobs()[-1]
    assert rerun.id != first.id and not rerun.failures
    again = folder / "azpar_outputs" / rerun.id / "2" / "o.txt"  # the rerun's own folder holds what it made
    assert again.read_text() == (folder / "parts" / "part-2.csv").read_text()


@pytest.mark.parametrize("base", ["this kernel's", "read back from the store"])
def test_a_rerun_says_where_the_outputs_of_the_iterations_it_kept_are(ip, run_cell, folder, base):
    """A rerun printed no --outputs line at all, and its job.files knew only what the rerun made: the kept
    iterations' files, in the first job's folder, were not named anywhere. The base job is this kernel's,
    or one a new kernel reads back from the store (its folder is listed then)."""
    ip.user_ns["flaky"] = {2, 3}
    run = run_cell("%%azpar -q -o r --errors pass --outputs 'o*.txt' for i in range(4):\n"
                   "if i in flaky:\n    raise RuntimeError('flaky')\nopen(f'o{i}.txt', 'w').write(str(i))\ni")
    assert run.success, run.error
    first = azpar_magic.jobs()[-1]
    if base != "this kernel's":
        azpar_magic.session.forget(first.id)
    ip.user_ns["flaky"] = set()
    rerun = run_cell(f"%azpar rerun {first.id} --failed")
    assert rerun.success, rerun.error
    job = azpar_magic.jobs()[-1]
    outputs = folder / "azpar_outputs"
    assert (f"azpar: outputs of 2 iterations in {outputs / job.id}; 2 kept iterations have theirs in "
            f"{outputs / first.id}") in rerun.stdout, rerun.stdout
    assert [job.files.files(i) for i in range(4)] == [
        [str(outputs / first.id / "0" / "o0.txt")], [str(outputs / first.id / "1" / "o1.txt")],
        [str(outputs / job.id / "2" / "o2.txt")], [str(outputs / job.id / "3" / "o3.txt")],
    ]
    assert [Path(job.files.files(i)[0]).read_text() for i in range(4)] == ["0", "1", "2", "3"]


def test_an_input_folder_with_a_link_cycle_is_walked_once(tmp_path):
    from azpar_magic.run.data import resolve_local

    (tmp_path / "refs" / "sub").mkdir(parents=True)
    (tmp_path / "refs" / "a.txt").write_text("a")
    (tmp_path / "refs" / "sub" / "b.txt").write_text("b")
    os.symlink(".", tmp_path / "refs" / "loop")  # a cycle: refs/loop/loop/... is refs again
    os.symlink("sub", tmp_path / "refs" / "alias")  # not a cycle: followed like any folder
    rels = sorted(f.rel for f in resolve_local("refs", str(tmp_path)))
    assert rels == ["refs/a.txt", "refs/alias/b.txt", "refs/sub/b.txt"]
    for spec in ("refs/**/*.txt", "refs/*"):  # glob's ** follows links too; refs/loop is refs again
        rels = sorted(f.rel for f in resolve_local(spec, str(tmp_path)))
        assert rels == ["refs/a.txt", "refs/alias/b.txt", "refs/sub/b.txt"], spec
    notebook = tmp_path / "refs" / "sub" / "nb"  # a link of the user's to a folder above: kept
    notebook.mkdir()
    os.symlink(tmp_path / "refs", notebook / "up")
    assert sorted(f.rel for f in resolve_local("up/*.txt", str(notebook))) == ["up/a.txt"]
