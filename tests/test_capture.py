"""Unit tests of capture.py: which names travel, how, and what is refused."""

import io
import os
import sys
import threading
import time
import types

import pytest

from azpar_magic import worker as wire
from azpar_magic.run import capture
from azpar_magic.run.parsing import parse_cell


def names_for(body, namespace, target="x", **kw):
    cell = parse_cell(f"for {target} in items", body)
    return set(capture.capture(cell, namespace, **kw).names)


@pytest.fixture
def main_ns(monkeypatch):
    """A fresh __main__ module, as a notebook's namespace is."""
    module = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", module)
    return module.__dict__


def define(ns, source):
    exec(compile(source, "<notebook cell>", "exec"), ns)


def test_free_names_respect_binding_order():
    tree = parse_cell("for x in xs", "y = a + x\nz = y + b\nif c:\n    w = 1\nw + q").body_tree
    assert capture.free_names(tree, ["x"]) == {"a", "b", "c", "w", "q"}


@pytest.mark.parametrize("body, free", [
    # with: the target and what the block binds are sure (the notebook's rows and fh stayed in the capture)
    ("with open(p) as fh:\n    rows = fh.read()\nlen(rows)", {"open", "p", "len"}),
    ("with np.errstate(all='ignore'), open(p) as (fh):\n    r = fh\nr", {"np", "open", "p"}),
    # ... unless it may swallow the block's exception, and a block's reads still count
    ("with suppress(KeyError):\n    v = d[k]\nv", {"suppress", "KeyError", "d", "k", "v"}),
    ("with cm:\n    a = b\na", {"cm", "b"}),
    # if: what both branches bind, or the branch that does not end the iteration
    ("if c:\n    w = 1\nelse:\n    w = 2\nw", {"c"}),
    ("if c:\n    w = 1\nw", {"c", "w"}),
    ("if not c:\n    continue\nelse:\n    w = 1\nw", {"c"}),
    ("if c:\n    raise ValueError\nw = 1\nw", {"c", "ValueError"}),
    # try: the body then else, or each handler that carries on; finally always
    ("try:\n    df = load(p)\nexcept OSError:\n    df = None\ndf", {"load", "p", "OSError"}),
    ("try:\n    df = load(p)\nexcept OSError as e:\n    print(e)\ndf", {"load", "p", "OSError", "print", "df"}),
    ("try:\n    df = load(p)\nexcept OSError:\n    continue\ndf", {"load", "p", "OSError"}),
    ("try:\n    a = 1\nexcept E as e:\n    b = 2\nelse:\n    b = 3\nfinally:\n    c = 4\n(b, c, e)", {"E", "e"}),
    # loops may run no time; their target is theirs, and what a pass binds is read by the next one only
    ("for i in r:\n    last = i\nlast", {"r", "last"}),
    ("for i in r:\n    if i:\n        use(prev)\n    prev = i", {"r", "use", "prev"}),
    ("while n > 0:\n    n = step(n)", {"n", "step"}),
])
def test_free_names_follow_what_with_if_and_try_blocks_surely_bind(body, free):
    assert capture.free_names(parse_cell("for x in xs", body).body_tree, ["x"]) == free


def test_nested_scopes_read_globals_but_not_their_locals():
    tree = parse_cell("for x in xs", "def f(p):\n    k = p\n    return k + g\nf(x) + (lambda t: t + h)(1)").body_tree
    assert capture.free_names(tree, ["x"]) == {"g", "h"}
    tree = parse_cell("for x in xs", "[i * m for i in range(x) if i > n] + [{k: v for k, v in d}]").body_tree
    assert capture.free_names(tree, ["x"]) == {"m", "n", "d", "range"}


def test_only_needed_names_travel_with_what_functions_reach(main_ns):
    define(main_ns, "import math\nK = 3\nUNUSED = 99\ndef helper(v):\n    return v * K\n"
                    "def f(v):\n    return helper(v) + math.floor(1.5)\n")
    assert names_for("f(x)", main_ns) == {"f", "helper", "K", "math"}


def test_ipython_state_never_travels(main_ns):
    main_ns.update({"In": ["x"], "Out": {1: 2}, "_": 1, "_i3": "x", "_5": 2, "get_ipython": lambda: None})
    assert names_for("(In, Out, _, _i3, _5, get_ipython)", main_ns) == set()


def test_classes_methods_and_instances(main_ns):
    define(main_ns, "SCALE = 2\nclass P:\n    def __init__(s, v):\n        s.v = v\n"
                    "    def scaled(s):\n        return s.v * SCALE\np = P(4)\n")
    assert names_for("p.scaled() + x", main_ns) == {"p", "P", "SCALE"}


def test_items_of_notebook_classes_bring_their_class(main_ns):
    define(main_ns, "class Item:\n    pass\nitems = [Item(), Item()]\n")
    cell = parse_cell("for it in items", "it")
    cap = capture.capture(cell, main_ns, items=main_ns["items"])
    assert "Item" in cap.names


@pytest.mark.parametrize("make, type_name", [
    (threading.Lock, "lock"),
    (lambda: open(__file__), "TextIOWrapper"),
    (lambda: (i for i in range(3)), "generator"),
    (io.BytesIO, "BytesIO"),
])
def test_needed_unshippable_object_is_named(main_ns, make, type_name):
    main_ns["thing"] = make()
    with pytest.raises(capture.CaptureError) as info:
        names_for("thing, x", main_ns)
    message = str(info.value)
    assert "`thing`" in message and type_name in message and "Nothing was submitted" in message


def test_a_managers_proxy_is_named_before_anything_runs(main_ns):
    """It pickles, then failed on the worker with 'digest sent was rejected' after submission."""
    import multiprocessing

    with multiprocessing.Manager() as manager:
        main_ns["shared"] = manager.list()
        with pytest.raises(capture.CaptureError) as info:
            names_for("shared.append(x)", main_ns)
    message = str(info.value)
    assert "`shared`" in message and "ListProxy" in message and "manager's proxy" in message


def test_a_module_sys_modules_does_not_know_travels_as_its_file_or_is_named(main_ns, tmp_path):
    """Modules travel by name: one loaded from a file without ``sys.modules[name] = module`` ships that file under
    the name it was loaded as (even when it is not the file's), from inside a dict too; a dotted name, or a module
    with no file, is refused with why (the workers failed with ModuleNotFoundError after submission)."""
    import importlib.machinery
    import importlib.util

    (tmp_path / "weights_v3.py").write_text("W = 3\n")

    def loaded(name):
        spec = importlib.util.spec_from_file_location(name, tmp_path / "weights_v3.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    main_ns["cfg"] = {"weights": loaded("azpar_weights")}
    cap = capture.capture(parse_cell("for x in xs", "cfg['weights'].W * x"), main_ns, folder=str(tmp_path / "nb"))
    assert cap.local_modules == {"azpar_weights.py": "W = 3\n"}
    main_ns["cfg"] = loaded("azpar_pkg.weights")
    with pytest.raises(capture.CaptureError, match=r"'azpar_pkg.weights' was loaded from .*name without dots"):
        names_for("cfg.W * x", main_ns)
    main_ns["cfg"] = types.ModuleType("azpar_made")
    with pytest.raises(capture.CaptureError, match="`cfg`.*'azpar_made' was made at run time"):
        names_for("cfg", main_ns)
    main_ns["cfg"] = os  # registered: by name, as before
    assert names_for("cfg.sep", main_ns) == {"cfg"}
    # Not the user's own file, or made from a spec: by name, as before (nothing refused that went before)
    main_ns["cfg"] = importlib.util.module_from_spec(importlib.machinery.ModuleSpec("azpar_specced", None))
    assert names_for("cfg", main_ns) == {"cfg"}
    spec = importlib.util.spec_from_file_location("azpar_stdlib.copy", importlib.util.find_spec("colorsys").origin)
    main_ns["cfg"] = importlib.util.module_from_spec(spec)
    assert names_for("cfg", main_ns) == {"cfg"}


def test_unshippable_inside_a_container_is_found(main_ns):
    main_ns["holder"] = {"lock": threading.Lock()}
    with pytest.raises(capture.CaptureError, match="`holder`.*lock"):
        names_for("holder", main_ns)


def test_the_path_to_an_unshippable_part_is_named(main_ns):
    """Spelt as the body reaches it, through mappings, sequences and attributes; the value itself being
    the culprit adds no path."""
    main_ns["holder"] = {"parts": [1, {"lock": threading.Lock()}]}
    with pytest.raises(capture.CaptureError, match=r"\(at `holder\['parts'\]\[1\]\['lock'\]`\)"):
        names_for("holder", main_ns)
    main_ns["lock"] = threading.Lock()
    with pytest.raises(capture.CaptureError) as info:
        names_for("lock", main_ns)
    assert "(at " not in str(info.value)


def test_the_path_search_survives_odd_objects():
    """The path is looked for only after a capture failed: an object that raises on a lookup ends the
    search with the path found so far, never with its own error; ``__slots__`` given as one string is
    one slot."""
    import collections.abc

    class Raising(collections.abc.Mapping):
        def __getitem__(self, key):
            raise RuntimeError("no lookups here")

        def __iter__(self):
            return iter(["k"])

        def __len__(self):
            return 1

    class One:
        __slots__ = "handle"

        def __init__(self):
            self.handle = threading.Lock()

    holder = {"odd": Raising(), "one": One()}
    fails = lambda part: not isinstance(part, (int, str))  # noqa: E731
    assert capture.culprit_path("holder", holder, fails) == ("holder['odd']", holder["odd"])
    one = One()
    assert capture.culprit_path("one", one, lambda part: isinstance(part, type(one.handle))) == (
        "one.handle",
        one.handle,
    )


def test_unneeded_unshippable_object_is_ignored(main_ns):
    main_ns["lock"] = threading.Lock()
    main_ns["k"] = 1
    assert names_for("k + x", main_ns) == {"k"}


def test_export_and_no_export(main_ns):
    main_ns.update({"a": 1, "b": 2})
    assert names_for("eval('a') + b", main_ns, export=["a"], no_export=["b"]) == {"a"}
    with pytest.raises(capture.CaptureError, match="--export names zz"):
        names_for("x", main_ns, export=["zz"])


def test_packages_are_recorded_with_versions(main_ns):
    import numpy as np

    main_ns.update({"np": np, "arr": np.arange(3)})
    cell = parse_cell("for x in items", "np.sum(arr) + x")
    cap = capture.capture(cell, main_ns)
    assert cap.packages.get("numpy") == np.__version__
    assert "dill" not in cap.packages or True  # dill is checked separately in the envelope


def test_local_modules_are_shipped(main_ns, tmp_path, monkeypatch):
    (tmp_path / "mylocal.py").write_text("def twice(v):\n    return 2 * v\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    define(main_ns, "import mylocal\n")
    cell = parse_cell("for x in items", "mylocal.twice(x)")
    cap = capture.capture(cell, main_ns, folder=str(tmp_path))
    assert cap.local_modules == {"mylocal.py": "def twice(v):\n    return 2 * v\n"}
    assert "mylocal" not in cap.packages
    sys.modules.pop("mylocal", None)


def test_the_users_modules_found_through_a_folder_the_notebook_put_on_sys_path_are_shipped(
    main_ns, tmp_path, monkeypatch
):
    """``sys.path.append("../src")`` then ``import helpers``: the workers' sys.path is their own, and
    the module failed there with ModuleNotFoundError (local pool and Azure alike). It travels as the
    notebook folder's modules do, keyed by its path below the added folder (a package whole). Folders
    named site-packages or dist-packages hold installed packages, which are never shipped."""
    notebook, src, installed = tmp_path / "notebook", tmp_path / "src", tmp_path / "env" / "site-packages"
    for folder in (notebook, src / "azpar_upkg", installed):
        folder.mkdir(parents=True)
    (src / "azpar_umod.py").write_text("def f(v):\n    return v * 100\n")
    (src / "azpar_upkg" / "__init__.py").write_text("from .core import g\n")
    (src / "azpar_upkg" / "core.py").write_text("def g(v):\n    return -v\n")
    (installed / "azpar_uinst.py").write_text("def h(v):\n    return v\n")
    (notebook / "lib").mkdir()  # inside the notebook's folder, imported through sys.path.append("lib")
    (notebook / "lib" / "azpar_usub.py").write_text("K = 3\n")
    monkeypatch.chdir(notebook)
    monkeypatch.syspath_prepend(str(installed))
    monkeypatch.syspath_prepend(str(src))
    monkeypatch.syspath_prepend(str(notebook / "lib"))
    try:
        define(main_ns, "import azpar_umod, azpar_upkg, azpar_uinst, azpar_usub\n")
        cell = parse_cell("for x in items", "(azpar_umod.f(x), azpar_upkg.g(x), azpar_uinst.h(x), azpar_usub.K)")
        cap = capture.capture(cell, main_ns, folder=str(notebook))
        assert cap.local_modules == {
            "azpar_umod.py": "def f(v):\n    return v * 100\n",
            "azpar_upkg/__init__.py": "from .core import g\n",
            "azpar_upkg/core.py": "def g(v):\n    return -v\n",
            "azpar_usub.py": "K = 3\n",  # as lib/'s (as the notebook's folder's, "lib/azpar_usub.py", no import found it)
        }
    finally:
        for name in ("azpar_umod", "azpar_upkg", "azpar_upkg.core", "azpar_uinst", "azpar_usub"):
            sys.modules.pop(name, None)


def _written_an_hour_ago(package, init: str, returns: list[str]):
    """A package ``__init__`` + m0.py, m1.py ... (each ``def f(v): <returns[i]>``), its files dated an hour
    back: files written just now are read again at every capture, whatever their stamp."""
    package.mkdir()
    (package / "__init__.py").write_text(init)
    for i, body in enumerate(returns):
        (package / f"m{i}.py").write_text(f"def f(v):\n    {body}\n")
    for path in package.iterdir():
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    return package


def test_local_module_files_are_read_and_parsed_once_per_version(main_ns, tmp_path, monkeypatch):
    """A package beside the notebook was read and parsed whole by every cell that used it (300
    modules: ~60 ms a cell). A file is read again only once it changed, also to the same size, and a
    file written in the last seconds is not trusted to its stamp (a second write in the same tick of
    the file system's clock would keep it)."""
    package = _written_an_hour_ago(tmp_path / "azpar_many", "from .m0 import f\n", [f"return v + {i}" for i in range(5)])
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    opened: list[str] = []

    def counting_open(path, *args, **kwargs):
        opened.append(os.path.basename(str(path)))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(capture, "open", counting_open, raising=False)
    define(main_ns, "import azpar_many\n")
    cell = parse_cell("for x in items", "azpar_many.f(x)")
    try:
        first = capture.capture(cell, main_ns, folder=str(tmp_path)).local_modules
        assert sorted(set(opened)) == ["__init__.py", "m0.py", "m1.py", "m2.py", "m3.py", "m4.py"]
        opened.clear()
        assert capture.capture(cell, main_ns, folder=str(tmp_path)).local_modules == first
        assert opened == []  # nothing changed: nothing read or parsed again
        (package / "m3.py").write_text("def f(v):\n    return v - 3\n")  # the same size
        os.utime(package / "m3.py", (time.time() - 3000, time.time() - 3000))
        again = capture.capture(cell, main_ns, folder=str(tmp_path)).local_modules
        assert opened == ["m3.py"] and again["azpar_many/m3.py"] == "def f(v):\n    return v - 3\n"
        (package / "m4.py").write_text("def f(v):\n    return v * 4\n")  # just now: read each time
        opened.clear()
        capture.capture(cell, main_ns, folder=str(tmp_path))
        capture.capture(cell, main_ns, folder=str(tmp_path))
        assert opened == ["m4.py", "m4.py"]
    finally:
        sys.modules.pop("azpar_many", None)
        sys.modules.pop("azpar_many.m0", None)


def test_a_local_module_in_a_declared_encoding_travels_as_python_reads_it(main_ns, tmp_path, monkeypatch):
    """A module saved as latin-1 with its coding comment imports in the kernel; the capture failed with
    "'utf-8' codec can't decode byte 0xe9", naming no file. Its text is read as Python reads it; a file
    that cannot be read so is named, with what to do."""
    (tmp_path / "azpar_legacy.py").write_bytes(b'# -*- coding: latin-1 -*-\nNAME = "caf\xe9"\n')
    (tmp_path / "azpar_broken.py").write_bytes(b'NAME = "caf\xe9"\n')  # no declaration: not UTF-8
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    define(main_ns, "import azpar_legacy\n")
    try:
        cap = capture.capture(parse_cell("for x in items", "azpar_legacy.NAME"), main_ns, folder=str(tmp_path))
        assert cap.local_modules == {"azpar_legacy.py": '# -*- coding: latin-1 -*-\nNAME = "caf\xe9"\n'}
        with pytest.raises(capture.CaptureError, match=r"azpar_broken\.py cannot travel to the workers: .* UTF-8"):
            capture.capture(parse_cell("for x in items", "import azpar_broken\nx"), main_ns, folder=str(tmp_path))
    finally:
        sys.modules.pop("azpar_legacy", None)


@pytest.mark.parametrize("text, encoding", [
    ('# -*- coding: latin-1 -*-\nx = 1\n', "latin-1"),
    ('#!/usr/bin/env python\n# vim: set fileencoding=cp1252 :\nx = 1\n', "cp1252"),
    ('x = 1  # coding: latin-1\n', "utf-8"),  # code first: not a declaration
    ('import os\n# coding: latin-1\n', "utf-8"),  # after code on the first line: not read
    ('\n# coding=iso-8859-15\n', "iso-8859-15"),
    ('# a comment\n\n# coding: latin-1\n', "utf-8"),  # the third line is too late
    ("", "utf-8"),
])
def test_the_worker_writes_a_shipped_module_in_the_encoding_it_declares(text, encoding):
    assert wire.source_encoding(text) == encoding


def test_the_submodules_a_body_reaches_through_a_module_are_named_for_the_workers(main_ns):
    """Only submodules the kernel's module has in its own dict and the code reads through: an alias is
    followed, a function's attribute or a lazily loaded submodule ends the chain."""
    import email.mime.text
    import xml.dom as dom_alias
    import xml.dom.minidom

    main_ns.update({"xml": xml, "d": dom_alias, "email": email})
    define(main_ns, "def build(x):\n    return email.mime.text.MIMEText(str(x))\n")
    cell = parse_cell("for x in items", "(xml.dom.minidom.parseString('<a/>'), d.minidom.Node, build(x), xml.azpar_missing)")
    assert capture.capture(cell, main_ns).submodules == ("email.mime", "email.mime.text", "xml.dom", "xml.dom.minidom")
    lazy = types.ModuleType("azpar_lazy")
    lazy.__getattr__ = lambda name: types.ModuleType(f"azpar_lazy.{name}")
    assert capture.submodules_reached({("lazy", "sub", "f")}, {"lazy": lazy}) == set()


def test_a_namespace_package_beside_the_notebook_imported_by_the_body_only_is_shipped(main_ns, tmp_path):
    """``from azpar_nsonly import helpers`` in the body, never in the kernel: a folder beside the notebook,
    as the kernel's own import would find it. A folder named like a standard module is not one."""
    (tmp_path / "azpar_nsonly").mkdir()
    (tmp_path / "azpar_nsonly" / "helpers.py").write_text("K = 2\n")
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "stray.py").write_text("K = 3\n")
    cell = parse_cell("for x in items", "from azpar_nsonly import helpers\nimport json\nhelpers.K")
    cap = capture.capture(cell, main_ns, folder=str(tmp_path))
    assert cap.local_modules == {"azpar_nsonly/helpers.py": "K = 2\n"}


def test_a_module_imported_from_a_zip_on_sys_path_does_not_stop_the_capture(main_ns, tmp_path, monkeypatch):
    """``sys.path.append("lib.zip")``: the module's file is inside the archive, which cannot be read as a
    file. The capture failed with NotADirectoryError; the module is not shipped (it goes by name)."""
    import zipfile

    with zipfile.ZipFile(tmp_path / "lib.zip", "w") as archive:
        archive.writestr("azpar_zipped.py", "def g(x):\n    return x + 100\n")
    monkeypatch.syspath_prepend(str(tmp_path / "lib.zip"))
    try:
        define(main_ns, "import azpar_zipped\n")
        cap = capture.capture(parse_cell("for x in items", "azpar_zipped.g(x)"), main_ns, folder=str(tmp_path))
        assert cap.local_modules == {}
    finally:
        sys.modules.pop("azpar_zipped", None)


def test_installed_portions_of_a_namespace_package_are_never_shipped(main_ns, tmp_path, monkeypatch):
    """A namespace package's folder in site-packages (``google``'s) is installed, not the user's own."""
    installed = tmp_path / "env" / "site-packages"
    (installed / "azpar_nsinst").mkdir(parents=True)
    (installed / "azpar_nsinst" / "part.py").write_text("K = 1\n")
    (tmp_path / "nb").mkdir()
    monkeypatch.chdir(tmp_path / "nb")
    monkeypatch.syspath_prepend(str(installed))
    try:
        define(main_ns, "import azpar_nsinst.part\n")
        cap = capture.capture(parse_cell("for x in items", "azpar_nsinst.part.K"), main_ns, folder=str(tmp_path / "nb"))
        assert cap.local_modules == {}
    finally:
        sys.modules.pop("azpar_nsinst", None)
        sys.modules.pop("azpar_nsinst.part", None)


def _fake_compiled_module(monkeypatch, name: str, folder) -> types.ModuleType:
    """A module as a %%cython cell leaves it: its file an extension module's, a function defined in it."""
    import importlib.machinery

    module = types.ModuleType(name)
    module.__file__ = str(folder / f"{name}{importlib.machinery.EXTENSION_SUFFIXES[0]}")
    exec(compile("def csq(x):\n    return x * x\n", module.__file__, "exec"), module.__dict__)
    module.csq.__module__ = name
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_compiled_modules_of_the_users_own_are_found_and_their_folders_given_to_the_workers(
    main_ns, tmp_path, monkeypatch
):
    """A function of a %%cython cell is pickled by name; its module was found nowhere on the workers."""
    import importlib.machinery

    mine = _fake_compiled_module(monkeypatch, "_azpar_cython_magic_0", tmp_path)
    installed = _fake_compiled_module(monkeypatch, "azpar_fake_installed", tmp_path / "lib" / "site-packages")
    main_ns.update({"csq": mine.csq, "other": installed.csq})
    cell = parse_cell("for x in items", "(csq(x), other(x))")
    cap = capture.capture(cell, main_ns)
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    assert cap.compiled_modules == {"_azpar_cython_magic_0": str(tmp_path / f"_azpar_cython_magic_0{suffix}")}
    assert capture.envelope_header(cell, cap)["import_folders"] == [str(tmp_path)]
    assert "import_folders" not in capture.envelope_header(cell, capture.capture(parse_cell("for x in items", "x"), main_ns))
    # A distribution's own (an editable install's extension): the nodes install it, nothing to refuse.
    monkeypatch.setattr(capture, "_module_to_distributions", lambda: {"_azpar_cython_magic_0": ["azpar-fake"]})
    assert capture.compiled_modules({"_azpar_cython_magic_0"}) == {}


def test_a_local_module_changed_since_its_import_is_named(main_ns, tmp_path, monkeypatch):
    """The workers run a local module's file as it is; the notebook, the code it imported. A file
    edited since (no reload) is named in a warning; reloaded, it is not. The bytecode cache is not
    what tells (PYTHONDONTWRITEBYTECODE, set here too, means it is not written)."""
    import importlib

    source = tmp_path / "edited.py"
    source.write_text("def f(v):\n    return v + 1\n\nclass K:\n    def m(self):\n        return 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    define(main_ns, "import edited\n")
    cell = parse_cell("for x in items", "edited.f(x)")
    try:
        assert capture.capture(cell, main_ns, folder=str(tmp_path)).warnings == ()
        source.write_text("def f(v):\n    return v + 1\n\nclass K:\n    def m(self):\n        return 2\n")
        (warning,) = capture.capture(cell, main_ns, folder=str(tmp_path)).warnings
        assert warning.startswith("edited changed on disk since this kernel imported it"), warning
        assert "importlib.reload(edited)" in warning
        importlib.reload(sys.modules["edited"])
        assert capture.capture(cell, main_ns, folder=str(tmp_path)).warnings == ()
    finally:
        sys.modules.pop("edited", None)


def test_the_changed_on_disk_check_compiles_a_module_once_per_version_and_import(main_ns, tmp_path, monkeypatch):
    """A package of 100 modules the kernel imported was compiled again and compared at every cell (~20 ms a
    cell: the compiled files were kept for 32 files only). The verdict is kept while the file keeps its
    stamp and the module its import: an edit, and a reload after it, are still seen."""
    import importlib

    package = _written_an_hour_ago(
        tmp_path / "azpar_judged",
        "".join(f"from . import m{i}\n" for i in range(40)),
        [f"return v + {i % 10}" for i in range(40)],
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    compiled: list[str] = []

    def counting_compile(src, filename, *args, **kwargs):
        compiled.append(os.path.basename(str(filename)))
        return compile(src, filename, *args, **kwargs)

    monkeypatch.setattr(capture, "compile", counting_compile, raising=False)
    capture._compiled_functions.cache_clear()
    define(main_ns, "import azpar_judged\n")
    cell = parse_cell("for x in items", "azpar_judged.m3.f(x)")
    try:
        assert capture.capture(cell, main_ns, folder=str(tmp_path)).warnings == ()
        first = len(compiled)
        assert capture.capture(cell, main_ns, folder=str(tmp_path)).warnings == ()
        assert len(compiled) == first  # nothing compiled again
        (package / "m3.py").write_text("def f(v):\n    return v + 9\n")  # the same size
        os.utime(package / "m3.py", (time.time() - 3000, time.time() - 3000))
        (warning,) = capture.capture(cell, main_ns, folder=str(tmp_path)).warnings
        assert warning.startswith("azpar_judged.m3 changed on disk"), warning
        assert capture.capture(cell, main_ns, folder=str(tmp_path)).warnings == (warning,)
        importlib.reload(sys.modules["azpar_judged.m3"])
        assert capture.capture(cell, main_ns, folder=str(tmp_path)).warnings == ()
    finally:
        for name in [n for n in sys.modules if n == "azpar_judged" or n.startswith("azpar_judged.")]:
            sys.modules.pop(name, None)


def test_identical_captures_hash_identically(main_ns):
    main_ns.update({"data": list(range(100))})
    cell = parse_cell("for x in items", "data[x]")
    first, second = capture.capture(cell, main_ns), capture.capture(cell, main_ns)
    assert first.sha256 == second.sha256 == wire.sha256(first.data)
    main_ns["data"] = list(range(101))
    assert capture.capture(cell, main_ns).sha256 != first.sha256


def test_envelope_header_records_versions(main_ns):
    import platform

    import dill

    cell = parse_cell("for x in items", "x")
    header = capture.envelope_header(cell, capture.capture(cell, main_ns), gather=["y"], seed=7)
    assert header["python"] == platform.python_version() and header["dill"] == dill.__version__
    assert header["format"] == wire.FORMAT_VERSION and header["seed"] == 7 and header["gather"] == ["y"]
    assert header["sources"]["<azpar cell>"].startswith("%%azpar for x in items")


@pytest.mark.parametrize("body, reads, safe", [
    ("x * x", set(), True),
    ("y = x + 1\ny * 2", set(), True),
    ("def g(v):\n    return v + k\nk = 1\ng(x)", set(), False),  # conservative: module mode is always right
    ("y = x\nf()", {"y"}, False),  # f reads the global y the body assigns
    ("total = total + x", set(), False),  # reads the kernel's total before binding its own
    ("if x:\n    z = 1\nz", set(), False),  # z may come from the namespace
    ("global z\nz = x", set(), False),
    ("eval('x')", set(), False),
    ("locals()['x']", set(), False),
    ("from math import *\nx", set(), False),
    ("class Local:\n    pass\nLocal()", set(), False),  # qualnames would gain "<locals>"
    ("sorted(xs, key=lambda v: -v)", set(), False),
    ("match x:\n    case {'k': v}:\n        pass\nv", set(), False),  # v: the notebook's when no case binds it
    ("del xs\nx", set(), False),  # del makes xs a function's local: UnboundLocalError in every iteration
    ("tmp = [x]\nn = len(tmp)\ndel tmp\nn", set(), True),  # the body's own name, bound before its del
])
def test_function_mode_only_when_equivalent(body, reads, safe):
    cell = parse_cell("for x in xs", body)
    assert capture.function_mode_is_safe(cell.body_tree, cell.target_names, reads) is safe


def test_the_script_and_this_package_are_never_shipped_as_local_modules(main_ns, monkeypatch):
    """run() from a script in a folder: __main__ is captured, not shipped as a module, and
    azpar_magic's own files never travel even when the folder is this repository."""
    import os

    import azpar_magic

    repo = os.path.dirname(os.path.dirname(azpar_magic.__file__))
    main_module = sys.modules["__main__"]
    main_module.__file__ = os.path.join(repo, "a_script.py")
    define(main_ns, "import azpar_magic\ndef double(v):\n    return 2 * v\n")
    cell = parse_cell("for x in items", "double(x) + len(azpar_magic.__name__)")
    cap = capture.capture(cell, main_ns, folder=repo)
    assert cap.local_modules == {}
    assert "double" in cap.names


def test_plain_data_is_pickled_and_checked_in_one_pass_and_anything_else_is_refused():
    """The engine's fast path for items (issue 16): builtin data, nested, is pickled as the C
    pickler would; anything the pickler has to ask about (a notebook class's instance, an enum,
    a str subclass, a type, complex) gives None, so the capture looks through the items."""
    import enum
    import pickle

    plain = [1, 2.5, "s", b"b", None, True, (1, "a"), {"k": [1, {2}]}, frozenset({3}), bytearray(b"x")]
    assert wire.plain_pickle(plain) == pickle.dumps(plain, protocol=pickle.HIGHEST_PROTOCOL)

    class Notebook:
        pass

    Colour = enum.IntEnum("Colour", "RED")

    class Name(str):
        pass

    for odd in (Notebook(), Colour.RED, Name("x"), int, 1j, range(3)):
        assert wire.plain_pickle([1, {"deep": [odd]}]) is None, odd
        # A short flat list or tuple is checked by type, not by a pickler: the same verdicts.
        assert wire.plain_pickle([odd]) is None and wire.plain_pickle((1, odd)) is None, odd
    for short in ([7], (1.5, "a", None), [True, b"x", 2**70], [], (), ["long" * 5000]):
        assert wire.plain_pickle(short) == pickle.dumps(short, protocol=pickle.HIGHEST_PROTOCOL), short


def test_the_logging_set_up_shipped_is_one_the_workers_can_rebuild(monkeypatch):
    """Only a stream handler writing to the notebook counts; a formatter of its own class (colours,
    JSON) may read fields a plain Formatter cannot fill, so basicConfig's format stands in for it;
    the handler's own level travels too."""
    import logging
    import sys

    from azpar_magic.run.capture import logging_setup

    monkeypatch.setattr(logging.root, "handlers", [])
    monkeypatch.setattr(logging.root, "level", logging.WARNING)
    assert logging_setup({}) is None
    logging.root.level = logging.INFO  # getLogger().setLevel(INFO) and no handler: the level alone travels
    assert logging_setup({}) == {"levels": {}, "root_level": logging.INFO}
    logging.root.level = logging.WARNING
    logging.root.addHandler(logging.FileHandler(__import__("os").devnull))  # a file: nothing a node could write to
    assert logging_setup({}) is None

    class Colours(logging.Formatter):
        pass

    shown = logging.StreamHandler(sys.stderr)
    shown.setFormatter(Colours("%(log_color)s%(message)s"))
    shown.setLevel(logging.ERROR)
    logging.root.addHandler(shown)
    logging.root.level = logging.DEBUG
    quiet = logging.getLogger("azpar.test.quiet")
    monkeypatch.setattr(quiet, "level", logging.CRITICAL)
    library = logging.getLogger("azpar_test_library")  # quietened by the notebook, not given to the body
    monkeypatch.setattr(library, "level", logging.ERROR)
    setup = logging_setup({"log": quiet, "n": 3})
    levels = setup.pop("levels")
    assert setup == {"level": logging.DEBUG, "handler_level": logging.ERROR, "format": logging.BASIC_FORMAT,
                     "datefmt": None, "style": "%", "stream": "stderr"}
    assert levels["azpar.test.quiet"] == logging.CRITICAL and levels["azpar_test_library"] == logging.ERROR
    assert not [name for name in levels if name.startswith("azpar_magic")]  # its own are the kernel's
    shown.setFormatter(logging.Formatter("{levelname}|{message}", style="{"))
    assert logging_setup({})["format"] == "{levelname}|{message}" and logging_setup({})["style"] == "{"


def test_rows_of_a_named_tuple_class_made_at_run_time_travel_through_the_c_pickler(main_ns, monkeypatch):
    # df.itertuples() makes its rows' class (``Pandas``) at each call, in a module that has no such name:
    # the C pickler could not refer to it, and every row went through dill (~20 us each, 10,000 rows 0.2 s).
    # The class is made again from its name and fields (dill's recipe), and the rows load back as rows.
    import collections
    import importlib

    module = importlib.import_module("json")  # a real module, which has no attribute named Row
    Row = collections.namedtuple("Row", ["a", "b"], defaults=[7], module=module.__name__)
    rows = [Row(i, str(i)) for i in range(50)] + [Row(-1)]
    dill_calls = []
    real_pickler = wire._dill_pickler
    monkeypatch.setattr(wire, "_dill_pickler", lambda: dill_calls.append(1) or real_pickler())
    codec, data = capture.serialize_items(rows, [], main_ns)
    assert codec == "pickle" and dill_calls == []
    back = wire.loads(codec, data)
    assert [tuple(r) for r in back] == [tuple(r) for r in rows]
    assert type(back[0]).__name__ == "Row" and back[0]._fields == ("a", "b") and back[-1].b == 7
    assert back[3].a == 3 and type(back[0]) is type(back[1])  # one class for every row

    # A class found by its name goes by reference as before; the notebook's own is dumps' to decide.
    Found = collections.namedtuple("Found", "x")
    monkeypatch.setattr(module, "Found", Found, raising=False)
    Found.__module__ = module.__name__
    codec, data = capture.serialize_items([Found(1)], [], main_ns)
    assert wire.loads(codec, data)[0].__class__ is Found
    assert wire._made_namedtuple_reduce(Found) is None
    Mine = collections.namedtuple("Mine", "x", module="__main__")
    assert wire._made_namedtuple_reduce(Mine) is None


def test_numpy_scalars_and_small_rows_travel_as_one_array_that_loads_as_the_same_list():
    # for x in np.linspace(...), for row in matrix, values that np.sqrt or a.mean() returned: each went
    # through the pickler's hooks on its own, 4 us apiece (10,000 of them 40 ms against 3 for range()).
    np = pytest.importorskip("numpy")
    cases = [
        list(np.linspace(-1, 1, 101)) + [np.float64("nan"), np.float64(-0.0)],
        list(np.arange(50)),
        [np.bool_(True), np.bool_(False)],
        list(np.arange(12, dtype=np.uint8)),
        list(np.arange(6, dtype=np.complex64)),
        list(np.arange(30.0).reshape(10, 3)),  # rows of a matrix
        list((np.datetime64("2020-01-01") + np.arange(12)).reshape(4, 3)),  # a dtype with its unit
        list(zip(np.linspace(0, 1, 9), np.arange(9))),  # for a, b in zip(xs, ys)
        list(enumerate(np.arange(5.0))),  # a plain column beside a numpy one
        [(np.float64(i), f"s{i}", None, np.zeros(2) + i) for i in range(4)],  # (mean, name, None, a row)
    ]
    for values in cases:
        data = wire.numpy_list_pickle(values)
        assert data is not None, values[:2]
        back = wire.loads("pickle", data)
        assert type(back) is list and len(back) == len(values)
        pairs = [(m, t) for mine, theirs in zip(values, back) for m, t in (zip(mine, theirs) if type(mine) is tuple
                                                                              else [(mine, theirs)])]
        assert [type(t) for t in back] == [type(m) for m in values]
        for mine, theirs in pairs:
            assert type(theirs) is type(mine)
            if mine is None or isinstance(mine, (int, str)):
                assert theirs == mine
            elif isinstance(mine, np.ndarray):
                assert theirs.dtype == mine.dtype and theirs.shape == mine.shape and (theirs == mine).all()
            else:
                assert np.array_equal(np.array(theirs), np.array(mine), equal_nan=True)
                assert np.signbit(theirs) == np.signbit(mine) if mine.dtype.kind == "f" else True
    for values in (
        [np.float64(1), 2.0],  # mixed
        [np.float64(1), np.float32(2)],
        [np.datetime64("2020-01-01"), np.datetime64("2020-01-01T10:00")],  # units differ: an array would convert
        [np.str_("a\x00")],
        [np.zeros(2), np.zeros(3)],  # shapes differ
        [np.zeros(200_000)] * 10,  # large: travels out of band, as it is
        [np.array(1.5), np.array(2.5)],  # 0-d arrays: stacked, they would come back as scalars
        [np.array([object()])],
        [1, 2, 3],  # plain: plain_pickle's
        [(1, "a"), (2, "b")],  # tuples of plain atoms: plain_pickle's too
        [(np.float64(1), 2), (np.float64(1),)],  # lengths differ
        [(np.float64(1), (2, 3))],  # a tuple inside: not a column of atoms
        [(np.float64(1), object())],
        [],
    ):
        assert wire.numpy_list_pickle(values) is None, values[:2]


def test_notebook_code_held_inside_other_objects_goes_with_the_names_it_reads(main_ns):
    # A datetime whose tzinfo is of a notebook class, a defaultdict's factory, a notebook function kept
    # in a SimpleNamespace: the capture's walk does not look inside them, so the pickle took the
    # notebook code by value without what it reads (NameError on the workers). The pickle's notebook
    # code now says what it reads, and that goes too; a --no-export name still does not.
    define(
        main_ns,
        "import datetime, collections, types\n"
        "K = 10\n"
        "class Shifted(datetime.tzinfo):\n"
        "    def utcoffset(self, dt):\n        return datetime.timedelta(hours=K)\n"
        "def scale(x):\n    return x * OTHER\n"
        "OTHER = 3\n"
        "stamp = datetime.datetime(2020, 1, 1, tzinfo=Shifted())\n"
        "counts = collections.defaultdict(lambda: FALLBACK)\n"
        "FALLBACK = 0\n"
        "holder = types.SimpleNamespace(fn=scale)\n",
    )
    assert {"stamp", "Shifted", "K", "datetime"} <= names_for("stamp.utcoffset()", main_ns)
    assert {"counts", "FALLBACK"} <= names_for("counts[x]", main_ns)
    assert {"holder", "scale", "OTHER"} <= names_for("holder.fn(x)", main_ns)
    assert "OTHER" not in names_for("holder.fn(x)", main_ns, no_export=["OTHER"])
    # Code met inside a variable that reads the loop's target as a global: the body runs as module code.
    define(main_ns, "import collections\nlate = collections.defaultdict(lambda: x * 2)\n")
    cell = parse_cell("for x in items", "late['k']")
    assert cell.function_code and not capture.capture(cell, main_ns).function_mode
    assert capture.capture(parse_cell("for y in items", "late['k']"), {**main_ns, "x": 1}).function_mode
    # Items: a partial of a notebook function names what the engine ships (names_inside).
    define(main_ns, "import functools\ndef train(lr):\n    return lr * K\njobs = [functools.partial(train, 1)]\n")
    met: list = []
    capture.serialize_items(main_ns["jobs"], [], main_ns, 0, met)
    assert {"train", "K"} <= capture.names_inside(met, main_ns)


def test_a_dataframes_parts_are_looked_at_once_per_class_and_a_proxy_each_time(main_ns, monkeypatch):
    # A loop over df.groupby(...) sends a DataFrame a group, ~46 objects each (frame, index, blocks,
    # arrays): each went through the pickler's hooks and was asked whether it was a file, a lock or the
    # notebook's, one by one (and asking a DataFrame for a `fileno` looks through its columns). Now once
    # per class: what an instance cannot answer for itself is its class's. A DataFrame with columns named
    # like a file's attributes is no file; a proxy is still asked each time.
    pd = pytest.importorskip("pandas")
    import threading

    getattr(wire, "_ORDINARY", set()).clear()
    getattr(capture, "_SHIPPABLE_TYPES", set()).clear()
    asked = []
    real = capture._unshippable_reason
    monkeypatch.setattr(capture, "_unshippable_reason", lambda obj: asked.append(type(obj)) or real(obj))
    frames = [pd.DataFrame({"k": [i] * 3, "v": [0.5, 1.5, 2.5]}) for i in range(20)]
    frames.append(pd.DataFrame({"fileno": [1], "mode": ["r"], "closed": [False]}))
    codec, data = capture.serialize_items(frames, [], main_ns)
    back = wire.loads(codec, data)
    assert all(a.equals(b) for a, b in zip(back, frames)) and len(back) == len(frames)
    assert asked.count(pd.DataFrame) == 1, asked.count(pd.DataFrame)
    assert len(asked) < 30, len(asked)  # one per class met, not ~46 per frame

    class Proxy:  # answers isinstance for what it wraps
        def __init__(self, target):
            self._target = target

        @property
        def __class__(self):
            return type(self._target)

        def __reduce__(self):
            return (Proxy, (self._target,))

    define(main_ns, "class Box:\n    def __init__(self, what):\n        self.what = what\n")
    assert not wire.answers_by_type(Proxy(1)) and not wire.answers_by_type(main_ns["Box"])
    with pytest.raises(capture.CaptureError, match="lock only synchronises"):
        capture.serialize_items([Proxy(1), Proxy(threading.Lock())], [], main_ns)


def test_instances_of_a_notebook_class_name_it_and_what_they_hold(main_ns):
    # 10,000 instances of a notebook dataclass were looked through one by one (~0.6 us each): instances
    # of one class holding atoms only are told at C speed. What they hold of the notebook is still found.
    define(
        main_ns,
        "import dataclasses\n"
        "@dataclasses.dataclass\nclass Config:\n    lr: float\n    depth: int\n    name: str = 'm'\n"
        "@dataclasses.dataclass(slots=True)\nclass Slotted:\n    fn: object\n" if sys.version_info >= (3, 10) else "",
    )
    define(main_ns, "def score(x):\n    return x\nclass Sub(Config):\n    pass\n")
    Config, Slotted, Sub, score = (main_ns[n] for n in ("Config", "Slotted", "Sub", "score"))
    plain = [Config(i * 0.5, i) for i in range(1_000)]
    assert capture.notebook_objects_in(plain, main_ns) == {"Config"}
    assert capture.notebook_objects_in([*plain, Config(0.1, 1, name=score)], main_ns) == {"Config", "score"}
    assert capture.notebook_objects_in([Config(0.1, 1, name=[score])], main_ns) == {"Config", "score"}
    assert capture.notebook_objects_in([Slotted(score)], main_ns) == {"Slotted", "score"}
    assert capture.notebook_objects_in([Config(0.1, 1), Sub(0.2, 2)], main_ns) == {"Config", "Sub"}
    assert capture.item_modules(plain) == set() and capture.item_modules([Config(0.1, 1), [1.5]]) == set()


def test_dates_paths_and_timestamps_are_pickled_as_they_are_with_the_modules_they_need(main_ns):
    # A loop over 10,000 dates, datetimes or pd.date_range's Timestamps sent each through the pickler's
    # Python hooks and the capture's look for notebook objects: twice a fork Pool's map. A list of such
    # objects (or of tuples of them and atoms) is pickled by the C pickler as it is; what holds the
    # notebook's own classes is not.
    import datetime
    import decimal
    import fractions
    import pathlib
    import uuid
    import zoneinfo

    day = datetime.date(2020, 1, 1)
    utc, paris = datetime.timezone.utc, zoneinfo.ZoneInfo("Europe/Paris")
    cases = [
        ([day + datetime.timedelta(days=i) for i in range(50)], {"datetime"}),
        ([datetime.datetime(2020, 1, 1, i, tzinfo=tz) for i in range(5) for tz in (None, utc, paris)],
         {"datetime", "zoneinfo"}),
        ([datetime.time(i, tzinfo=datetime.timezone(datetime.timedelta(hours=2), "X")) for i in range(5)],
         {"datetime"}),
        ([datetime.timedelta(seconds=i) for i in range(5)] + [None], {"datetime"}),
        ([pathlib.Path(f"data/f{i}.csv") for i in range(5)] + [pathlib.PureWindowsPath("C:/x")],
         {pathlib.Path.__module__}),  # (pathlib._local on Python 3.13)
        ([decimal.Decimal(i) / 7 for i in range(5)] + [fractions.Fraction(1, 3), uuid.UUID(int=7)],
         {"decimal", "fractions", "uuid"}),
        (list(enumerate(pathlib.Path(f"f{i}") for i in range(5))), {pathlib.Path.__module__}),  # tuples, atoms
        (list(zip((day + datetime.timedelta(days=i) for i in range(5)), range(5))), {"datetime"}),
    ]
    pd = sys.modules.get("pandas") or pytest.importorskip("pandas")
    stamps = list(pd.date_range("2020-01-01", periods=6, freq="h")) + [pd.NaT]
    cases.append((stamps, {type(stamps[0]).__module__, type(pd.NaT).__module__}))
    cases.append((list(pd.date_range("2020-01-01", periods=3, tz=paris)), {type(stamps[0]).__module__, "zoneinfo"}))
    fixed = datetime.timezone(datetime.timedelta(hours=2))
    for zone, unit in ((None, "ns"), ("UTC", "s"), (fixed, "us")):  # one DatetimeIndex: still their unit and zone
        hours = list(pd.date_range("2020-01-01", periods=6, freq="h", tz=zone, unit=unit))
        cases.append((hours, {type(hours[0]).__module__}))
        if hasattr(hours[0], "unit"):
            assert [t.unit for t in wire.loads("pickle", wire.standard_list_pickle(hours)[0])] == [unit] * 6
    cases.append((stamps[:2] + [stamps[2].as_unit("s")] if hasattr(stamps[0], "as_unit") else stamps, set()))
    for values, modules in cases:
        found = wire.standard_list_pickle(values)
        assert found is not None, values[:2]
        data, their_modules = found
        back = wire.loads("pickle", data)
        assert back == values and [type(v) for v in back] == [type(v) for v in values]
        assert [getattr(v, "tzinfo", None) for v in back] == [getattr(v, "tzinfo", None) for v in values]
        assert [getattr(v, "unit", None) for v in back] == [getattr(v, "unit", None) for v in values]
        tops = {module.split(".")[0] for module in their_modules}  # (pandas 2's Timestamp: pandas._libs...)
        assert tops == {module.split(".")[0] for module in modules or {"pandas"}}, their_modules

    define(
        main_ns,
        "import datetime\n"
        "class Zone(datetime.tzinfo):\n"
        "    def utcoffset(self, dt):\n        return datetime.timedelta(hours=1)\n"
        "class Day(datetime.date):\n    pass\n",
    )
    for values in (
        [datetime.datetime(2020, 1, 1, tzinfo=main_ns["Zone"]())],  # the notebook's zone: shipped by name
        [main_ns["Day"](2020, 1, 1)],  # a subclass of the notebook's
        [day, [day]],  # a container inside
        [(day, (1, 2))],
        [(1, "a"), (2, "b")],  # plain atoms: plain_pickle's
        [1, 2],
        [day, object()],
        [],
    ):
        assert wire.standard_list_pickle(values) is None, values[:2]
    codec, data = capture.serialize_items([datetime.datetime(2020, 1, 1, tzinfo=main_ns["Zone"]())], ["Zone"], main_ns)
    assert wire.loads(codec, data, main=sys.modules["__main__"])[0].tzinfo.__class__ is main_ns["Zone"]


def test_objects_whose_attributes_are_their_classes_are_looked_at_once_per_class(main_ns, monkeypatch):
    # A loop over 10,000 dates or Decimals asked of each whether it was a file, a lock or the
    # notebook's (~2 us apiece, most of the cost of sending them): now once per class. What an
    # instance may answer for itself (a proxy, an object with attributes of its own, a slot holding a
    # lock) is still asked of each.
    import datetime
    import decimal
    import threading
    import weakref

    getattr(wire, "_ORDINARY", set()).clear()  # classes met by earlier tests are met again here
    getattr(capture, "_SHIPPABLE_TYPES", set()).clear()
    asked = []
    real = capture._unshippable_reason
    monkeypatch.setattr(capture, "_unshippable_reason", lambda obj: asked.append(type(obj)) or real(obj))
    items = [datetime.date(2020, 1, 1) + datetime.timedelta(days=i) for i in range(500)]
    items += [decimal.Decimal(i) / 7 for i in range(500)]
    codec, data = capture.serialize_items(items, [], main_ns)
    assert wire.loads(codec, data) == items
    assert asked.count(datetime.date) == 1 and asked.count(decimal.Decimal) == 1, asked[:5]
    assert capture.notebook_objects_in(items, main_ns) == set()

    define(main_ns, "class Holder:\n    __slots__ = ('what',)\n    def __init__(self, what):\n        self.what = what\n")
    Holder = main_ns["Holder"]
    fine = [Holder(i) for i in range(3)]
    codec, data = capture.serialize_items(fine, ["Holder"], main_ns)
    assert [h.what for h in wire.loads(codec, data, main=sys.modules["__main__"])] == [0, 1, 2]
    assert capture.notebook_objects_in(fine, main_ns) == {"Holder"}  # the notebook's class, still found
    with pytest.raises(capture.CaptureError, match="lock only synchronises"):
        capture.serialize_items([*fine, Holder(threading.Lock())], ["Holder"], main_ns)

    class Plain:
        pass

    target = Plain()
    assert not wire.attributes_are_the_types(weakref.proxy(target)) and not wire.attributes_are_the_types(target)
    assert wire.attributes_are_the_types(datetime.date(2020, 1, 1)) and wire.attributes_are_the_types(Holder(1))
    if sys.version_info >= (3, 12):  # a type alias keeps its module in a slot of its own
        define(main_ns, "type Alias = int\n")
        assert not wire.attributes_are_the_types(main_ns["Alias"])
