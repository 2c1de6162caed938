"""--outputs never reaches out of an iteration's working directory (issue 13, item 4): a
convenience link the body makes to a folder or file elsewhere is never followed, nothing
outside the working directory is moved or deleted, and one warning after the run names the
links that were skipped. Links that stay inside the working directory are followed as
before. Local pool here; the Azure side is in test_outputs_links_azure.py."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

import azpar_magic

pytestmark = pytest.mark.timeout(120)


def make_victim(root: Path) -> dict[str, str]:
    """A folder of the user's outside every working directory: CSVs (one in a subfolder)
    and a text file; returns {relative path: sha256} to check it afterwards."""
    (root / "sub").mkdir(parents=True)
    (root / "a.csv").write_text("x,y\n1,2\n")
    (root / "b.csv").write_text("x,y\n3,4\n")
    (root / "sub" / "c.csv").write_text("deep\n")
    (root / "notes.txt").write_text("keep me\n")
    return snapshot(root)


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def folder(tmp_path, monkeypatch):
    work = tmp_path / "nb"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def _job_root(folder: Path) -> Path:
    return folder / "azpar_outputs" / azpar_magic.jobs()[-1].id


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "warning" in line]


@pytest.mark.parametrize("chunk", ["1", "3"])
def test_a_link_to_an_outside_folder_is_not_followed_and_its_files_stay(ip, run_cell, folder, tmp_path, chunk):
    victim = tmp_path / "victim"
    before = make_victim(victim)
    ip.user_ns["victim"] = str(victim)
    run = run_cell(f"%%azpar -o r --chunk-size {chunk} --outputs '**/*.csv' for i in range(4):\n"
                   "import os\nos.symlink(victim, 'data')\nopen(f'own-{i}.csv', 'w').write(str(i))\ni")
    assert run.success, run.error
    assert snapshot(victim) == before  # every original still there, byte for byte
    root = _job_root(folder)
    for i in range(4):  # the iteration's own file came back, nothing from the link
        assert sorted(str(p.relative_to(root / str(i))) for p in (root / str(i)).rglob("*")) == [f"own-{i}.csv"]
        assert (root / str(i) / f"own-{i}.csv").read_text() == str(i)
    warnings = _warnings(run.stderr)
    assert len(warnings) == 1, run.stderr  # one line for the whole job, not one per iteration
    assert "data/ (a link to " + str(victim) + ")" in warnings[0]
    assert "4 iterations (0, 1, 2, 3)" in warnings[0]
    assert "outside the iteration's working directory" in warnings[0] and "left untouched" in warnings[0]


def test_a_link_to_an_outside_file_is_skipped_not_moved_as_a_link(ip, run_cell, folder, tmp_path):
    outside = tmp_path / "elsewhere" / "big.csv"
    outside.parent.mkdir()
    outside.write_text("precious\n")
    ip.user_ns["target"] = str(outside)
    run = run_cell("%%azpar -o r --outputs '*.csv' for i in range(2):\n"
                   "import os\nos.symlink(target, 'latest.csv')\nopen('mine.csv', 'w').write('m')\ni")
    assert run.success, run.error
    assert outside.read_text() == "precious\n" and not outside.is_symlink()
    for i in range(2):
        got = _job_root(folder) / str(i)
        assert sorted(p.name for p in got.iterdir()) == ["mine.csv"]
        assert not any(p.is_symlink() for p in got.rglob("*"))  # no link pointing outside came back
    warnings = _warnings(run.stderr)
    assert len(warnings) == 1 and f"latest.csv (a link to {outside})" in warnings[0], run.stderr
    assert "matched no file" not in run.stderr


def test_links_that_stay_inside_the_working_directory_are_followed(ip, run_cell, folder):
    body = ("import os\nos.makedirs('real/sub')\n"
            "open('real/a.csv', 'w').write(f'a{i}')\nopen('real/sub/b.csv', 'w').write(f'b{i}')\n"
            "os.symlink('real', 'alias')\nos.symlink('real/a.csv', 'latest.csv')\n"
            "os.symlink('.', 'real/loop')\n"  # a cycle inside: must not walk forever
            "i")
    run = run_cell(f"%%azpar -o r --chunk-size 2 --outputs '**/*.csv' for i in range(3):\n{body}")
    assert run.success, run.error
    assert not _warnings(run.stderr), run.stderr
    root = _job_root(folder)
    for i in range(3):
        got = root / str(i)
        files = sorted(str(p.relative_to(got)) for p in got.rglob("*") if p.is_file())
        assert files == ["alias/a.csv", "alias/sub/b.csv", "latest.csv", "real/a.csv", "real/sub/b.csv"], files
        assert not any(p.is_symlink() for p in got.rglob("*"))  # links come back as the files' bytes
        assert (got / "latest.csv").read_text() == f"a{i}" and (got / "alias/sub/b.csv").read_text() == f"b{i}"
        assert (got / "real/a.csv").read_text() == f"a{i}"


def test_a_link_inside_that_resolves_outside_through_another_link_is_skipped(ip, run_cell, folder, tmp_path):
    victim = tmp_path / "victim"
    before = make_victim(victim)
    ip.user_ns["victim"] = str(victim)
    run = run_cell("%%azpar -o r --outputs 'out/*.csv' --outputs 'hop/**' for i in range(2):\n"
                   "import os\nos.symlink(victim, 'hop')\nos.makedirs('out')\n"
                   "os.symlink('../hop/a.csv', 'out/a.csv')\nopen('out/own.csv', 'w').write('o')\ni")
    assert run.success, run.error
    assert snapshot(victim) == before
    for i in range(2):
        assert sorted(p.name for p in (_job_root(folder) / str(i) / "out").iterdir()) == ["own.csv"]
    warnings = _warnings(run.stderr)
    assert len(warnings) == 1, run.stderr
    assert "hop/ (a link to" in warnings[0] and f"out/a.csv (a link to {victim / 'a.csv'})" in warnings[0]


def test_files_that_are_not_regular_are_not_touched(ip, run_cell, folder):
    # A named pipe matching the pattern would block a reader forever; it is not an output.
    run = run_cell("%%azpar -o r --outputs '*' for i in range(2):\n"
                   "import os\nos.mkfifo('pipe')\nopen('f.txt', 'w').write('f')\ni")
    assert run.success, run.error
    for i in range(2):
        assert sorted(p.name for p in (_job_root(folder) / str(i)).iterdir()) == ["f.txt"]


def test_hidden_files_follow_glob_rules(ip, run_cell, folder):
    # As glob does: * and ** do not match names starting with a dot unless the pattern does.
    run = run_cell("%%azpar -o r --outputs '**/*.txt' --outputs '.keep/*.txt' for i in range(1):\n"
                   "import os\nos.makedirs('.cache'); os.makedirs('.keep'); os.makedirs('d')\n"
                   "for p in ('.cache/x.txt', '.keep/y.txt', 'd/z.txt', '.h.txt', 'top.txt'):\n"
                   "    open(p, 'w').write(p)\ni")
    assert run.success, run.error
    got = _job_root(folder) / "0"
    assert sorted(str(p.relative_to(got)) for p in got.rglob("*") if p.is_file()) == [
        ".keep/y.txt", "d/z.txt", "top.txt"]


@pytest.mark.parametrize("pattern", [
    "*.csv", "**/*.csv", "**", "*", "sub/*", "sub/**", "sub/**/*.txt", "**/deep/*", "?.csv", "[ab].csv",
    "[!a].csv", "a.csv", "sub/x.txt", "./a.csv", "**/.h*", ".*", "sub//x.txt", "*/*", "**/**/*.txt", "nope/*",
    "[]]x", "[!]]x", "[a-b].csv", "x[", "x[*", "**/sub/**", "sub/**/", "*.CSV", "s?b/*.*", "**/deep/**", "[.]h.csv",
    "[z-a].csv", "[\\]x", "[^b]x",
])
def test_the_walk_selects_what_glob_selects_where_there_are_no_links(tmp_path, pattern):
    """Without links the hand-written walk gives glob's answer (the rules users know),
    for each pattern; inputs/ is never an output."""
    import glob

    from azpar_magic.worker import find_outputs

    for rel in ("a.csv", "b.csv", "c.txt", ".h.csv", "sub/x.txt", "sub/y.csv", "sub/deep/z.txt", "sub/.hid/w.txt",
                ".cache/q.csv", "inputs/in.csv", "sub/inputs/kept.csv", "]x", "x[", "x[y", "bx"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    expected = sorted({os.path.normpath(m).replace(os.sep, "/")
                       for m in glob.glob(pattern, root_dir=tmp_path, recursive=True)
                       if (tmp_path / m).is_file() and os.path.normpath(m).split(os.sep)[0] != "inputs"})
    found = find_outputs(str(tmp_path), [pattern])
    assert sorted(found.files) == expected
    assert not found.skipped and (pattern in found.hit) == bool(expected)
