"""What is kept of what iterations print, and the note that says so wherever text was cut
(issue 13, item 8): the worker keeps at most worker.OUTPUT_LIMIT characters per iteration,
and a cell shows at most magics.SHOWN_OUTPUT_LIMIT characters after its run."""

from __future__ import annotations

import re

import pytest

from azpar_magic import worker
from azpar_magic.magics.display import SHOWN_OUTPUT_LIMIT

BIG = 3_000_000  # one print of 3 MB, three times the worker's cap


@pytest.mark.timeout(120)
def test_a_single_huge_print_is_cut_with_notes_in_the_cell_and_in_output(ip, run_cell):
    run = run_cell(f'''%%azpar -q -o r --workers 1 --chunk-size 2 for i in range(2):
print("x" * {BIG} if i == 0 else "small")
i''')
    assert run.success, run.error
    import azpar_magic

    job = azpar_magic.jobs()[-1]
    # The cell: the first SHOWN_OUTPUT_LIMIT characters, then one note naming what was not
    # shown and where the rest is (before, a single large write was cut without a word).
    assert run.stdout.count("x") == SHOWN_OUTPUT_LIMIT
    note = re.search(r"\[azpar: output truncated after ([\d,]+) characters: ([\d,]+) more characters not "
                     r"shown \(iterations 0, 1\)", run.stderr)
    assert note, run.stderr
    assert int(note.group(1).replace(",", "")) == SHOWN_OUTPUT_LIMIT
    assert f"azpar_magic.attach('{job.id}').output(i)" in run.stderr and f"%azpar logs {job.id}" in run.stderr
    assert f"iteration 0 printed more than a worker keeps ({worker.OUTPUT_LIMIT:,} characters each)" in run.stderr
    # job.output(0): what the worker kept, and a note on what it dropped.
    text = job.output(0)
    assert text.startswith("x" * worker.OUTPUT_LIMIT) and not text.startswith("x" * (worker.OUTPUT_LIMIT + 1))
    dropped = BIG + 1 - worker.OUTPUT_LIMIT  # the print's newline is past the cap too
    assert f"the worker kept the first {worker.OUTPUT_LIMIT:,} characters and dropped the other {dropped:,}" in text
    assert job.output(1) == "small\n"  # under the cap: exactly what was printed, no note
    assert ip.user_ns["r"] == [0, 1]


@pytest.mark.timeout(120)
def test_one_iteration_printing_past_the_shown_limit_gets_the_note(ip, run_cell):
    run = run_cell(f'''%%azpar -q -o r --workers 1 for i in range(1):
print("y" * {SHOWN_OUTPUT_LIMIT + 500}, end="")
i''')
    assert run.success, run.error
    assert run.stdout == "y" * SHOWN_OUTPUT_LIMIT
    assert f"output truncated after {SHOWN_OUTPUT_LIMIT:,} characters: 500 more characters not shown " \
           "(iteration 0)" in run.stderr, run.stderr
    assert "more than a worker keeps" not in run.stderr  # the worker kept all of it


@pytest.mark.timeout(120)
def test_output_under_the_limits_is_shown_whole_without_a_note(ip, run_cell):
    run = run_cell('''%%azpar -q -o r --workers 1 for i in range(3):
print("line", i)
i''')
    assert run.success, run.error
    assert run.stdout == "line 0\nline 1\nline 2\n" and "truncated" not in run.stderr


def test_the_recorder_counts_what_it_drops_across_writes_and_displays():
    rec = worker._Recorder()
    rec.add("stdout", "a" * (worker.OUTPUT_LIMIT - 10))
    rec.add("stderr", "b" * 25)
    rec.add("display", {"text/plain": "shown after the cap"})
    rec.add("stdout", "c" * 5)
    (out, out_text), (err, err_text) = rec.finish()
    assert (out, err) == ("stdout", "stderr") and out_text == "a" * (worker.OUTPUT_LIMIT - 10)
    assert err_text.startswith("b" * 10 + "\n[azpar: this iteration printed 1,000,020 characters;")
    assert "kept the first 1,000,000 characters and dropped the other 20 and 1 display " in err_text
