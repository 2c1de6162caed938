"""Enum classes and typing names (TypeVar, NewType, ...) defined in the notebook, shipped by value.
dill gives up on an Enum class (its members are instances of the class, a recursion it falls back
from to a reference by name, dill#729) and pickles a TypeVar as its name: the workers have neither
name, so every iteration failed. Values come back as the notebook's own members."""

from __future__ import annotations

import datetime
import sys
import types
import warnings

import pytest

from azpar_magic import worker as wire

_CLASSES = '''
import enum, dataclasses

class Color(enum.Enum):
    """Colours."""
    RED = 1
    BLUE = 2
    CRIMSON = 1  # an alias
    def shout(self):
        return self.name + "!"
    @property
    def lower(self):
        return self.name.lower()
    @classmethod
    def _missing_(cls, value):
        return cls.RED

class Planet(enum.Enum):  # members' attributes set by __init__
    MERCURY = (3.303e23, 2.4397e6)
    EARTH = (5.976e24, 6.37814e6)
    def __init__(self, mass, radius):
        self.mass, self.radius = mass, radius

class Coded(int, enum.Enum):  # __new__ sets _value_ and an attribute
    def __new__(cls, value, label):
        member = int.__new__(cls, value)
        member._value_, member.label = value, label
        return member
    A = (1, "first")
    B = (2, "second")

class Perm(enum.IntFlag):
    R = 4
    W = 2
    X = 1

class Greeting(enum.Enum):  # methods only, no members: a base
    def hello(self):
        return "hi " + self.name

class Word(str, Greeting):
    YES = "yes"
    NO = "no"

@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    color: Color = Color.RED
'''


def _notebook(source: str) -> types.ModuleType:
    """A module named __main__ holding the classes, as a notebook's are."""
    module = types.ModuleType("__main__")
    exec(compile(source, "<notebook>", "exec", dont_inherit=True), module.__dict__)  # (not this file's __future__)
    return module


def _round_trip(obj: object) -> object:
    codec, data = wire.dumps(obj)
    assert codec == "dill"
    return wire.loads(codec, data, main=types.ModuleType("__main__"))


def test_notebook_enums_are_rebuilt_by_value_with_their_methods_members_and_attributes():
    nb = _notebook(_CLASSES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dill's PicklingWarning ("cannot locate reference") would fail here
        got = _round_trip({name: getattr(nb, name) for name in ("Color", "Planet", "Coded", "Perm", "Word", "Point")})
    color, planet, coded, perm, word, point = (got[k] for k in ("Color", "Planet", "Coded", "Perm", "Word", "Point"))
    assert color is not nb.Color and color.__module__ == "__main__" and color.__qualname__ == "Color"
    assert [m.name for m in color] == ["RED", "BLUE"] and color.CRIMSON is color.RED
    assert color(2) is color.BLUE and color(99) is color.RED  # _missing_
    assert color.BLUE.shout() == "BLUE!" and color.BLUE.lower == "blue" and color.__doc__ == "Colours."
    assert planet.EARTH.mass == 5.976e24 and planet((3.303e23, 2.4397e6)) is planet.MERCURY
    assert coded.B.label == "second" and coded(2) is coded.B and coded.B + 1 == 3
    assert perm.R | perm.X == 5 and (perm.R | perm.X).__class__ is perm
    assert word.YES.hello() == "hi YES" and word("no") is word.NO and word.NO == "no"
    assert point(2).color is color.RED  # the dataclass's default is the rebuilt class's member


def test_members_sent_with_their_class_are_its_members():
    nb = _notebook(_CLASSES)
    got = _round_trip({"Color": nb.Color, "items": [nb.Color.BLUE, nb.Perm.R | nb.Perm.W]})
    assert got["items"][0] is got["Color"].BLUE
    assert int(got["items"][1]) == 6


def test_an_enum_that_cannot_be_made_again_from_its_values_is_refused_with_why():
    # A mixin whose constructor takes other arguments than the value it makes.
    nb = _notebook("import datetime, enum\nclass Day(datetime.date, enum.Enum):\n    FIRST = (2020, 1, 1)\n")
    with pytest.raises(Exception, match="the Enum class Day defined in the notebook cannot be made again"):
        wire.dumps({"Day": nb.Day})


def test_a_notebook_enum_runs_in_a_cell_and_its_members_come_back_as_the_notebooks(ip, run_cell):
    ip.run_cell(_CLASSES)
    try:
        run = run_cell("%%azpar -q -o got for c in Color:\n"
                       "Point(c.value, c), c.shout(), Planet.EARTH.mass, Coded(2).label, Word.YES.hello()")
        assert run.success, run.error
        assert "PicklingWarning" not in run.stderr, run.stderr
        check = run_cell("ok = got == [(Point(1, Color.RED), 'RED!', 5.976e24, 'second', 'hi YES'), "
                         "(Point(2, Color.BLUE), 'BLUE!', 5.976e24, 'second', 'hi YES')] "
                         "and got[0][0].color is Color.RED and got[1][0].color is Color.BLUE")
        assert check.success and ip.user_ns["ok"] is True, ip.user_ns.get("got")
    finally:
        for name in ("Color", "Planet", "Coded", "Perm", "Greeting", "Word", "Point", "got", "ok"):
            ip.user_ns.pop(name, None)


def test_a_notebook_enum_the_worker_returns_by_itself_comes_back_as_the_notebooks(ip, run_cell):
    ip.run_cell("import enum\nclass Level(enum.IntEnum):\n    LOW = 1\n    HIGH = 2\n")
    try:
        run = run_cell("%%azpar -q -o got for x in [1, 5]:\nLevel.HIGH if x > 2 else Level.LOW")
        assert run.success, run.error
        assert ip.user_ns["got"][0] is ip.user_ns["Level"].LOW and ip.user_ns["got"][1] is ip.user_ns["Level"].HIGH
    finally:
        for name in ("Level", "got"):
            ip.user_ns.pop(name, None)


def test_dates_with_the_notebooks_time_zone_or_class_still_travel_with_it(ip, run_cell):
    # Dates and datetimes are pickled as they are (issue 16) unless they hold the notebook's own classes:
    # a tzinfo or a date subclass defined in the notebook still goes with the job, by value.
    ip.run_cell(
        "import datetime\n"
        "class Shifted(datetime.tzinfo):\n"
        "    def utcoffset(self, dt):\n        return datetime.timedelta(hours=5)\n"
        "    def dst(self, dt):\n        return datetime.timedelta(0)\n"
        "class Workday(datetime.date):\n"
        "    def label(self):\n        return 'wd' + str(self.day)\n"
        "moments = [datetime.datetime(2020, 1, 1, h, tzinfo=Shifted()) for h in range(6)]\n"
        "workdays = [Workday(2020, 1, d) for d in range(1, 6)]\n"
    )
    try:
        run = run_cell("%%azpar -q -o got for m in moments:\nm.utcoffset(), type(m.tzinfo).__name__")
        assert run.success, run.error
        assert ip.user_ns["got"] == [(datetime.timedelta(hours=5), "Shifted")] * 6
        run = run_cell("%%azpar -q -o got for w in workdays:\nw.label(), w")
        assert run.success, run.error
        assert [label for label, _ in ip.user_ns["got"]] == [f"wd{d}" for d in range(1, 6)]
        assert all(type(w) is ip.user_ns["Workday"] for _, w in ip.user_ns["got"])
    finally:
        for name in ("Shifted", "Workday", "moments", "workdays", "got", "datetime"):
            ip.user_ns.pop(name, None)


def test_the_refusal_reaches_the_user_before_anything_is_submitted(ip, run_cell):
    ip.run_cell("import datetime, enum\nclass Day(datetime.date, enum.Enum):\n    FIRST = (2020, 1, 1)\n")
    try:
        run = run_cell("%%azpar -q -o got for i in range(2):\nDay.FIRST.year + i")
        assert not run.success
        said = str(run.error)
        assert "`Day`" in said and "cannot be made again" in said and "module beside the notebook" in said, said
        assert "Nothing was submitted" in said, said
        assert "got" not in ip.user_ns
    finally:
        ip.user_ns.pop("Day", None)



_TYPING = """
import typing
T = typing.TypeVar("T", bound=int)
S = typing.TypeVar("S", int, str, covariant=True)
P = typing.ParamSpec("P")
UserId = typing.NewType("UserId", int)

class Box(typing.Generic[T]):
    def __init__(self, v: T):
        self.v = v

def first(x: T, *rest: S) -> T:
    return x

def call(f: typing.Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    return f(*args, **kwargs)
"""


def test_notebook_typing_names_are_rebuilt_by_value_with_their_arguments():
    nb = _notebook(_TYPING)
    for plain_too in (True, False):  # alone (the C pickler) and beside a notebook function (dill)
        names = ("T", "S", "P", "UserId") if plain_too else ("T", "S", "P", "UserId", "Box", "first", "call")
        codec, data = wire.dumps({name: getattr(nb, name) for name in names})
        assert codec == ("pickle" if plain_too else "dill")
        got = wire.loads(codec, data, main=types.ModuleType("__main__"))
        t, s, p, user_id = got["T"], got["S"], got["P"], got["UserId"]
        assert t is not nb.T and t.__name__ == "T" and t.__bound__ is int and t.__module__ == "__main__"
        assert s.__constraints__ == (int, str) and s.__covariant__ and not s.__contravariant__
        assert p.__name__ == "P" and user_id(5) == 5 and user_id.__supertype__ is int
        if not plain_too:
            assert got["Box"].__parameters__ == (t,) and got["Box"](3).v == 3
            assert got["first"](1, "a") == 1 and got["call"](got["first"], 7) == 7


@pytest.mark.skipif(sys.version_info < (3, 12), reason="the type statement is Python 3.12+")
def test_a_notebook_type_alias_is_rebuilt_by_value():
    nb = _notebook("type Pair[K] = tuple[K, K]\ndef swap(p: Pair[int]) -> Pair[int]:\n    return p[1], p[0]\n")
    got = _round_trip({"Pair": nb.Pair, "swap": nb.swap})
    assert got["Pair"].__name__ == "Pair" and str(got["Pair"].__value__) == "tuple[K, K]"
    assert got["swap"]((1, 2)) == (2, 1)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="type parameter syntax is Python 3.12+")
def test_type_parameters_of_functions_and_classes_are_rebuilt_by_value():
    """They say they are typing's, where no such name is: pickle could not find them at all."""
    nb = _notebook("class Box[U]:\n    def get[V](self, v: V) -> V:\n        return v\n"
                   "def ident[T: int](x: T) -> T:\n    return x\n")
    got = _round_trip({"Box": nb.Box, "ident": nb.ident})
    assert [p.__name__ for p in got["Box"].__type_params__] == ["U"] and got["Box"]().get(5) == 5
    assert got["ident"](3) == 3 and got["ident"].__annotations__["x"].__name__ == "T"


def test_functions_annotated_with_notebook_type_variables_run_in_a_cell(ip, run_cell):
    ip.run_cell(_TYPING)
    try:
        run = run_cell("%%azpar -q -o got for i in range(3):\ncall(first, Box(UserId(i)).v, 'x')")
        assert run.success, run.error
        assert ip.user_ns["got"] == [0, 1, 2]
        alone = run_cell("%%azpar -q -o got for i in range(2):\n(T.__name__, T.__bound__, i)")
        assert alone.success, alone.error
        assert ip.user_ns["got"] == [("T", int, 0), ("T", int, 1)]
    finally:
        for name in ("typing", "T", "S", "P", "UserId", "Box", "first", "call", "got"):
            ip.user_ns.pop(name, None)


@pytest.mark.azure
def test_notebook_enums_and_type_variables_on_azure_batch(ip, run_cell, batch, azurite, tmp_path, monkeypatch):
    """The nodes run worker.py as a script, with neither azpar_magic nor the notebook: the
    rebuilt classes and type variables need only the standard library and dill there."""
    from .azure_support import azure_profile

    monkeypatch.chdir(tmp_path)
    ip.run_cell(_CLASSES)
    ip.run_cell(_TYPING)
    try:
        with azure_profile(tmp_path / "config", batch, azurite):
            run = run_cell("%%azpar -q --chunk-size 1 -o got for c in Color:\n"
                           "Point(c.value, c), Planet.EARTH.mass, Coded(2).label, call(first, Box(UserId(c.value)).v)")
        assert run.success, run.error
        check = run_cell("ok = got == [(Point(1, Color.RED), 5.976e24, 'second', 1), "
                         "(Point(2, Color.BLUE), 5.976e24, 'second', 2)] and got[1][0].color is Color.BLUE")
        assert check.success and ip.user_ns["ok"] is True, ip.user_ns.get("got")
    finally:
        for name in ("enum", "dataclasses", "typing", "Color", "Planet", "Coded", "Perm", "Greeting", "Word", "Point",
                     "T", "S", "P", "UserId", "Box", "first", "call", "got", "ok"):
            ip.user_ns.pop(name, None)
