"""Enum classes defined in the notebook, shipped by value (dill gives up on them: their members
are instances of the class, a recursion it falls back from to a reference by name, which the
workers cannot resolve; dill#729). Values come back as the notebook's own members."""

from __future__ import annotations

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
    exec(compile(source, "<notebook>", "exec"), module.__dict__)
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

