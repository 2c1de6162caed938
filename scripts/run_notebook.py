"""Run a notebook headless in a real IPython kernel and print what each code cell shows.

    python scripts/run_notebook.py notebooks/01-quickstart.ipynb [--timeout SECONDS]

The kernel is ipykernel's ``python3`` kernel of the Python running this script (so it sees
the same installed packages, azpar_magic included), started in the notebook's folder. For
each code cell the script prints a header with the cell's number and first line, then the
cell's text outputs: stream text (stdout, stderr) and the ``text/plain`` form of results and
displays. Progress lines that redraw themselves with carriage returns are shown as their
final state.

Exit status: 0 when every cell ran, 1 when a cell raised an error that its ``raises-exception``
tag does not announce (the run stops there), 2 when the notebook cannot be read or the
kernel cannot be started. The notebook file is never modified.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

import nbformat
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

KERNEL_NAME = "python3"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_RULE = "─" * 78
_MARKER = re.compile(r"\s*#\s*NBVAL_[A-Z_]+\s*$")  # test markers: not what the cell is about


class _CurrentEnvironmentKernels(KernelSpecManager):
    """``python3`` is always ipykernel in *this* interpreter, whatever kernel specs a user
    installed elsewhere (a stray one would run the notebook against another environment)."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if kernel_name == KERNEL_NAME:
            from ipykernel.kernelspec import RESOURCES, get_kernel_dict

            return KernelSpec(resource_dir=RESOURCES, **get_kernel_dict())
        return super().get_kernel_spec(kernel_name)


def _final_text(text: str) -> str:
    """What a terminal would show: each line's last carriage-return segment, no ANSI codes."""
    lines = []
    for line in _ANSI.sub("", text).split("\n"):
        lines.append(line.rsplit("\r", 1)[-1].rstrip() if "\r" in line else line.rstrip())
    return "\n".join(lines)


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line if line else line for line in text.split("\n"))


def describe_output(output) -> str | None:
    """The readable text of one output, or None for outputs without text."""
    kind = output.get("output_type")
    if kind == "stream":
        text = _final_text(output.get("text", "")).rstrip("\n")
        if not text.strip():
            return None
        return text if output.get("name") == "stdout" else _indent(text, "[stderr] ")
    if kind in ("execute_result", "display_data"):
        data = output.get("data", {})
        if "text/plain" in data:
            text = _final_text(data["text/plain"]).rstrip("\n")
            return f"Out: {text}" if kind == "execute_result" and "\n" not in text else text
        kinds = ", ".join(sorted(data)) or "nothing"
        return f"[display: {kinds}]"
    if kind == "error":
        traceback = _final_text("\n".join(output.get("traceback", []))).rstrip("\n")
        return traceback or f"{output.get('ename')}: {output.get('evalue')}"
    return None


class _Printer:
    """Prints each code cell as soon as it has run."""

    def __init__(self, nb, stream):
        self.nb, self.stream = nb, stream
        self.total = sum(1 for c in nb.cells if c.cell_type == "code")
        self.number = 0
        self.started = time.monotonic()
        self.cell_started = self.started
        self.expected_errors = 0

    def write(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    def on_cell_start(self, cell, cell_index) -> None:
        self.cell_started = time.monotonic()

    def on_cell_executed(self, cell, cell_index, execute_reply) -> None:
        self.number += 1
        status = (execute_reply or {}).get("content", {}).get("status", "?")
        lines = [line for line in cell.source.strip("\n").splitlines() if not _MARKER.match(line)]
        first = lines[0] if lines else "(empty cell)"
        more = len(lines) - 1
        took = time.monotonic() - self.cell_started
        tags = cell.metadata.get("tags", [])
        note = ""
        if status == "error":
            if "raises-exception" in tags:
                self.expected_errors += 1
                note = "  [raised, as its raises-exception tag expects]"
            else:
                note = "  [ERROR]"
        head = f"[{self.number}/{self.total}] {first}"
        if more > 0:
            head += f"   (+{more} line{'s' if more != 1 else ''})"
        self.write(_RULE)
        self.write(f"{head}   {took:.1f} s{note}")
        for output in cell.get("outputs", []):
            text = describe_output(output)
            if text is not None:
                self.write(_indent(text))


def run(path: str, timeout: float, stream=sys.stdout) -> int:
    try:
        nb = nbformat.read(path, as_version=4)
    except (OSError, ValueError) as exc:
        print(f"run_notebook: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    folder = os.path.dirname(os.path.abspath(path))
    printer = _Printer(nb, stream)
    client = NotebookClient(
        nb, kernel_name=KERNEL_NAME, timeout=timeout, kernel_spec_manager=_CurrentEnvironmentKernels(),
        resources={"metadata": {"path": folder}},
        on_cell_start=printer.on_cell_start, on_cell_executed=printer.on_cell_executed,
    )
    printer.write(f"Running {path} ({printer.total} code cells) in a {KERNEL_NAME} kernel "
                  f"[{sys.executable}], cwd {folder}")
    try:
        client.execute()
    except CellExecutionError as exc:
        printer.write(_RULE)
        name = getattr(exc, "ename", "error")
        printer.write(f"FAILED: code cell {printer.number} of {printer.total} raised {name}; "
                      "the remaining cells were not run.")
        return 1
    except CellTimeoutError:
        printer.write(_RULE)
        printer.write(f"FAILED: code cell {printer.number + 1} of {printer.total} ran longer than "
                      f"--timeout {timeout:g} s.")
        return 1
    except DeadKernelError as exc:
        printer.write(_RULE)
        printer.write(f"FAILED: the kernel died: {exc}")
        return 1
    except RuntimeError as exc:  # kernel did not start
        print(f"run_notebook: the {KERNEL_NAME} kernel could not be started: {exc}", file=sys.stderr)
        return 2
    printer.write(_RULE)
    expected = (f" ({printer.expected_errors} expected error{'s' if printer.expected_errors != 1 else ''})"
                if printer.expected_errors else "")
    printer.write(f"OK: {printer.number} code cells ran in {time.monotonic() - printer.started:.1f} s{expected}.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", help="path of the .ipynb file to run")
    parser.add_argument("--timeout", type=float, default=600,
                        help="seconds one cell may run before the run fails (default: 600)")
    args = parser.parse_args(argv)
    return run(args.notebook, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
