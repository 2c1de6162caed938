"""The ``%%azpar`` line read into what a run needs: the argparse namespace (values without their quotes), the
job's options (each checked, with the flag named in its refusal), and the options only the Azure backend acts on.
"""

from __future__ import annotations

import argparse
import builtins
import copy
import keyword
import types
from typing import Any

from IPython.core.error import UsageError
from IPython.utils.process import arg_split

from .. import session
from ..backends.base import Backend
from ..errors import CellError, SubmitError, did_you_mean
from ..jobs import JobOptions, merge
from ..jobs.text import DURATION_FORMS, parse_duration
from ..run.engine import validate_options
from ..run.parsing import checked_requirements, is_variable_name
from ..run.request import FLAG_SPELLING
from .context import DEFAULT_OUTPUT
from .usage import usage_errors
from .words import unquote, variable

_parsed: dict[tuple[int, str], dict[str, Any]] = {}  # (parser, line) -> the values it gave, for a cell run again
_PARSED_KEPT = 64


def parse_options(parser: argparse.ArgumentParser, text: str) -> argparse.Namespace:
    """Every value is taken as typed, without its quotes (IPython's splitter keeps them):
    quoting protects spaces, commas, braces and globs the same way for every option.

    The same line gives the same values, so a cell run again gets a copy of what its line gave
    last time (argparse was a fifth of a warm two-iteration cell, issue 16); a line that was
    refused is parsed, and refused, every time."""
    key = (id(parser), text)
    known = _parsed.get(key)
    if known is None:
        known = vars(_parse_options(parser, text))
        if len(_parsed) >= _PARSED_KEPT:
            _parsed.pop(next(iter(_parsed)))
        _parsed[key] = known
    return argparse.Namespace(**_copied(known))


_ATOMS = (str, int, float, bool, type(None))


def _copied(values: dict[str, Any]) -> dict[str, Any]:
    """A copy the run may change freely: argparse gives strings, numbers and lists of strings
    (``--inputs``), so a new list each is enough; anything else is deep-copied (the deep copy
    of every line was a tenth of a warm two-iteration cell, issue 16, c)."""
    copied = {}
    for name, value in values.items():
        if type(value) in _ATOMS:
            copied[name] = value
        elif type(value) is list and all(type(v) in _ATOMS for v in value):
            copied[name] = list(value)
        else:
            copied[name] = copy.deepcopy(value)
    return copied


def _parse_options(parser: argparse.ArgumentParser, text: str) -> argparse.Namespace:
    with usage_errors(
        ValueError,
        lambda exc: (
            f"the %%azpar options could not be read: {exc} (a quote is not closed?): {text!r}. Nothing was submitted."
        ),
    ):
        words = _values_taken_as_typed(parser, [unquote(word) for word in arg_split(text, strict=True)])
    try:
        parsed = parser.parse_args(words)
    except UsageError as exc:
        if "unrecognized arguments" not in str(exc):
            raise UsageError(f"{exc}. Nothing was submitted.") from None
        unknown = str(exc).split("unrecognized arguments:", 1)[1].split()
        if unknown and unknown[0].startswith("-"):  # a misspelt option (--chunksize), not a value's second word
            guess = did_you_mean(unknown[0].split("=")[0], parser._option_string_actions)
            raise UsageError(
                f"unknown %%azpar option {unknown[0]}{guess} (%%azpar? lists them). Nothing was submitted."
            ) from None
        raise UsageError(
            f"{exc}. A value with spaces must be quoted, e.g. --combine 'lambda rows: sum(rows)'. "
            "Nothing was submitted."
        ) from None
    except SystemExit:  # argparse's own exit on a bad value
        raise UsageError(f"invalid %%azpar options: {text!r} (see %%azpar?). Nothing was submitted.") from None
    twice = _given_twice(parser, words)
    if twice:
        given = " and ".join(f"{flag} {value}" for flag, value in twice)
        action = parser._option_string_actions[twice[0][0]]
        several = (
            f" once, with the names comma-separated ({twice[0][0]} {','.join(value for _, value in twice)})"
            if "," in (action.metavar or "")
            else " once"
        )
        raise UsageError(
            f"{twice[0][0]} is given twice with different values ({given}); only one can count, and the last "
            f"would, silently: give it{several}. Nothing was submitted."
        )
    return parsed


def _values_taken_as_typed(parser: argparse.ArgumentParser, words: list[str]) -> list[str]:
    """A long option's value that starts with a dash and is no option (``--timeout -5s``, ``--combine -sum``):
    argparse reads any such word but a plain negative number as an option, and said "expected one argument",
    where the option's own check names what is wrong with the value. It is given as ``--flag=value``."""
    known = parser._option_string_actions
    valued = {flag for flag, action in known.items() if flag.startswith("--") and action.nargs is None}
    out, i = [], 0
    while i < len(words):
        word = words[i]
        following = words[i + 1] if i + 1 < len(words) else ""
        if word in valued and following[:1] == "-" and following[:2] != "--" and following not in known:
            out.append(f"{word}={following}")
            i += 2
            continue
        out.append(word)
        i += 1
    return out


def _given_twice(parser: argparse.ArgumentParser, words: list[str]) -> list[tuple[str, str]]:
    """The uses of the first single-valued option given more than once with different values (``-o a ...
    -o b``: a run bound to one name the user did not mean), as (flag, value); [] when there is none.
    Options that take several (``--inputs``) are not single-valued."""
    single = {
        flag: action.dest
        for action in parser._actions
        if type(action) is argparse._StoreAction
        for flag in action.option_strings
    }
    valued = {flag for action in parser._actions if action.nargs != 0 for flag in action.option_strings}
    long_flags = [flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")]
    uses: dict[str, list[tuple[str, str]]] = {}
    i = 0
    while i < len(words):
        word, value = words[i], None
        flag = word
        if word.startswith("--") and "=" in word:
            flag, value = word.split("=", 1)
        elif not word.startswith("--") and word[:2] in valued and len(word) > 2:
            flag, value = word[:2], word[2:]
        if flag.startswith("--") and flag not in valued and flag not in single:
            # argparse takes a unique prefix of a long option for it (``--comb`` is ``--combine``)
            whole = [f for f in long_flags if f.startswith(flag)] if len(flag) > 2 else []
            flag = whole[0] if len(whole) == 1 else flag
        if flag in valued and value is None and i + 1 < len(words):
            value, i = words[i + 1], i + 1  # (a value such as --inputs -o.txt is not read as an option)
        if flag in single:
            uses.setdefault(single[flag], []).append((flag, value or ""))
        i += 1
    return next((found for found in uses.values() if len({v for _, v in found}) > 1), [])


def names(value: str | None, flag: str) -> tuple[str, ...]:
    """The variable names of ``--gather``, ``--export`` or ``--no-export``."""
    if not value:
        return ()
    found = tuple(n.strip() for n in value.split(",") if n.strip())
    bad = [n for n in found if not is_variable_name(n)]
    if bad:
        keywords = sum(keyword.iskeyword(n) for n in bad)
        why = (
            "a Python keyword cannot be a variable"
            if keywords == len(bad)
            else "a variable's name is letters, digits and underscores, and does not start with a digit"
            + (", nor is it a Python keyword" if keywords else "")
        )
        raise UsageError(
            f"{flag} takes comma-separated variable names; {', '.join(map(repr, bad))} "
            f"{'is' if len(bad) == 1 else 'are'} not ({why}). Nothing was submitted."
        )
    return found


def _number(flag: str, text: str | None, kind: type) -> Any:
    """An option's number, or None when it is not given; a UsageError naming the flag."""
    if text is None:
        return None
    try:
        return kind(text)
    except ValueError:
        whole = "a whole number" if kind is int else "a number"
        raise UsageError(f"{flag} must be {whole}, got {text!r}. Nothing was submitted.") from None


def _duration(flag: str, text: str | None) -> float | None:
    """A duration in seconds (jobs.text.parse_duration: ``90``, ``10m``, ``1h30m``, ``1:30:00``); None when not given; a
    UsageError naming the flag and the forms it takes (``10m`` read as an error, with no word of the
    unit, made users guess)."""
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError:
        raise UsageError(
            f"{flag} must be a number of seconds, or a number with a unit ({DURATION_FORMS}), got {text!r}. "
            "Nothing was submitted."
        ) from None


def job_options(args: argparse.Namespace, namespace: dict[str, Any]) -> JobOptions:
    """The job's options from the parsed line; ``--combine`` other than a mode is evaluated in ``namespace``.
    Sets ``args.workers`` to the checked number."""
    output = variable(args.output or DEFAULT_OUTPUT, " Nothing was submitted.")
    combine = args.combine
    if combine not in merge.COMBINE_MODES:
        try:
            combine = eval(combine, namespace)
        except Exception as exc:
            raise UsageError(
                f"--combine {args.combine!r} is neither one of {', '.join(merge.COMBINE_MODES)} "
                f"nor an expression that evaluates here ({type(exc).__name__}: {exc}). Nothing was submitted."
            ) from None
        if not callable(combine):
            raise UsageError(
                f"--combine {args.combine!r} must name a callable; it is a {type(combine).__name__}. "
                "Nothing was submitted."
            )
    chunk = args.chunk_size
    if chunk == "auto":
        chunk_size = None
    else:
        try:
            chunk_size = int(chunk)
        except ValueError:
            raise UsageError(
                f"--chunk-size must be a positive whole number or auto, got {chunk!r}. Nothing was submitted."
            ) from None
    workers = _number("--workers", args.workers, int)
    if workers is not None and not 1 <= workers <= session.workers_limit():
        raise UsageError(
            f"--workers must be between 1 and {session.workers_limit()} ({session.WORKERS_PER_CPU} "
            f"per CPU this kernel may use, at least {session.WORKERS_FLOOR}), got {workers}. Nothing "
            "was submitted."
        )
    args.workers = workers
    options = JobOptions(
        combine=combine,
        errors=args.errors,
        gather=names(args.gather, "--gather"),
        retries=_number("--retries", args.retries, int),
        timeout=_duration("--timeout", args.timeout),
        chunk_size=chunk_size,
        seed=_number("--seed", args.seed, int),
        output_name=output,
        inputs=tuple(args.inputs or ()),
        outputs=tuple(args.outputs or ()),
        outputs_to=args.outputs_to or None,
        name=args.name,
        cache=bool(args.cache),
        max_cost=_number("--max-cost", args.max_cost, float),
    )
    with usage_errors(SubmitError, "{} Nothing was submitted."):
        validate_options(options, FLAG_SPELLING)
    return options


def shadow_warnings(output: str, gather: tuple[str, ...], namespace: dict[str, Any]) -> list[str]:
    """The names the cell binds (-o, --gather) that hide one of Python's builtins the notebook has not
    rebound itself (``-o print``, ``--gather max``), or a function, class or module of the notebook's
    (``-o helper`` over ``def helper``, ``-o np``): the cell's ``print = ...`` would read as one, but an
    option's word does not, and every later cell calling it gets the result instead."""
    notes = []
    for flag, name in [("-o", output), *(("--gather", g) for g in gather)]:
        if name in _BUILTINS and name not in namespace and not name.startswith("_"):
            notes.append(
                f"azpar: warning: {flag} {name} binds the result to `{name}`, the name of Python's builtin "
                f"{name}(): later cells calling {name}() get the result instead (`del {name}` brings the builtin "
                "back)"
            )
        elif isinstance(value := namespace.get(name), (types.FunctionType, type, types.ModuleType)):
            what = (
                "class" if isinstance(value, type) else "module" if isinstance(value, types.ModuleType) else "function"
            )
            notes.append(
                f"azpar: warning: {flag} {name} binds the result over the notebook's {what} {name}: later cells "
                f"using {name} get the result instead (run the cell that defines it again to bring it back)"
            )
    return notes


_BUILTINS = frozenset(n for n, v in vars(builtins).items() if callable(v))


def backend_options(args: argparse.Namespace, backend: Backend, notes: list[str]) -> dict[str, Any]:
    """Options only some backends act on (Azure: ``backend.reads_options``). Elsewhere they
    are accepted (so a cell written for Azure can be debugged locally unchanged) with one
    line saying what they do not do here, and --packages is checked against this kernel's
    environment, which local iterations use."""
    with usage_errors(CellError):
        packages = checked_requirements(args.packages or ())
    reads = backend.reads_options
    ignored = [
        text
        for key, text, on in (
            ("packages", "--packages installs nothing (iterations use this kernel's environment)", packages),
            ("merge", "--merge cloud merges in the kernel as usual", args.merge == "cloud"),
            ("keep", "--keep has no Batch job to keep", args.keep),
            ("max_cost", "--max-cost has no price to cap (nothing is billed)", args.max_cost is not None),
        )
        if on and key not in reads
    ]
    if ignored:
        they = "they act" if len(ignored) > 1 else "it acts"
        notes.append(f"azpar: on the {backend.name} pool, {'; '.join(ignored)}; {they} on Azure only.")
    if "packages" not in reads:
        missing = _unsatisfied(packages)
        if missing:
            notes.append(
                "azpar: warning: --packages not satisfied in this kernel's environment: "
                f"{', '.join(missing)}; local iterations may fail or differ from Azure."
            )
    options: dict[str, Any] = {"packages": packages, "merge": args.merge, "keep": args.keep}
    if args.no_auto_packages:
        options["auto_packages"] = False
    return options


def _unsatisfied(requirements: list[str]) -> list[str]:
    """The --packages requirements this kernel's environment does not meet, each with what
    it has: local iterations import from here, so a cell written for Azure that runs locally
    should say when it runs against other versions. Specifiers are checked with
    ``packaging`` when it is installed, else only ``==``."""
    from importlib import metadata

    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # pragma: no cover - packaging comes with ipykernel and pip
        Requirement = None  # type: ignore[assignment,misc]  # noqa: N806
    problems = []
    for text in requirements:
        name = text.split("[", 1)[0]
        for operator in ("===", "==", ">=", "<=", "~=", "!=", "<", ">"):
            name = name.split(operator, 1)[0]
        name = name.strip()
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{text} (not installed)")
            continue
        if Requirement is not None:
            try:
                ok = Requirement(text).specifier.contains(have, prereleases=True)
            except InvalidRequirement:
                ok = True  # the Azure side reports it; here only versions are compared
        else:
            ok = "==" not in text or text.split("==", 1)[1].strip() == have
        if not ok:
            problems.append(f"{text} ({have} installed)")
    return problems
