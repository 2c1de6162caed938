"""An ``az://`` glob selects the blobs a local glob of the same pattern would select among files of the same
names: ``*``, ``?`` and ``[..]`` stay within a folder, ``**`` spans folders only as a whole segment, names
starting with a dot are matched only by a pattern segment starting with one. Checked side by side against the
standard library's ``glob`` on a real folder tree holding the blob names as files."""

from __future__ import annotations

import glob
import os

import pytest

from azpar_magic.run.data import BlobSpec, blob_path

NAMES = ["a.csv", "b.txt", "x]y", "xay", "a1b", "aXb", "a/c/b", "a/b", ".hidden.csv", "data/.secret.csv",
         "data/one.csv", "data/sub/two.csv", "data/sub/.git/three.csv", ".git/four.csv", "data/[x].csv",
         "data/x.csv", "deep/a/b/c/d.csv", "Data/upper.csv", "z!q", "zq"]

PATTERNS = ["*.csv", "**/*.csv", "data/*.csv", "data/**", "data/**/*.csv", "x[]]y", "x[!]]y", "a**b", "a*b",
            "a?b", "**", ".*", "data/.*", "**/.git/*.csv", "data/[[]x].csv", "[dD]ata/*.csv", "z[!a]q", "deep/**/d.csv",
            "data/*/*.csv", "*/*", "a[z-a]b"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("blobs")
    for name in NAMES:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    return root


def _local(root, pattern: str) -> list[str]:
    hits = glob.glob(os.path.join(str(root), pattern), recursive=True)
    return sorted(os.path.relpath(h, root).replace(os.sep, "/") for h in hits if os.path.isfile(h))


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_blob_glob_selects_what_the_local_glob_selects(tree, pattern):
    spec = BlobSpec(f"az://box/{pattern}", *blob_path(f"az://box/{pattern}"))
    assert sorted(spec.matches(NAMES)) == _local(tree, pattern)


def test_the_cases_that_went_wrong():
    def matches(pattern):
        return sorted(BlobSpec("az://box/" + pattern, "box", pattern).matches(NAMES))

    assert matches("x[]]y") == ["x]y"]  # raised re.error before
    assert matches("a**b") == ["a1b", "aXb"]  # crossed folders: a/c/b, a/b
    assert matches("*.csv") == ["a.csv"]  # matched .hidden.csv
    assert "Data/upper.csv" not in matches("data/*.csv")  # blob names are case-sensitive on every platform
