"""The magic through IPython's InteractiveShell: what a user types, what they get."""

import sys

import pytest

import azpar_magic


def test_load_ext_says_which_backend(ip):
    from IPython.utils.capture import capture_output

    with capture_output() as captured:
        ip.run_line_magic("reload_ext", "azpar_magic")
    assert "%%azpar runs loops on the local pool of" in captured.stdout


@pytest.mark.timeout(60)
def test_reloading_the_extension_keeps_a_running_job_and_collect_binds_it(ip, run_cell):
    """``%reload_ext azpar_magic`` (unload, then load) cancelled a running --no-wait job without a word:
    ``%azpar collect`` then said it was cancelled after 0 iterations. Unloading stops idle pools only,
    and says which jobs run on."""
    from IPython.utils.capture import capture_output

    ip.user_ns.pop("kept", None)
    started = run_cell("%%azpar -q --no-wait -o kept for x in range(4):\nimport time\ntime.sleep(0.5)\nx * 3")
    assert started.success, started.error
    job = azpar_magic.jobs()[-1]
    with capture_output() as captured:
        ip.run_line_magic("reload_ext", "azpar_magic")
    assert not job.done, job.state
    assert f"unloading the extension does not stop job {job.id}: it keeps running" in captured.stderr
    collected = run_cell("%azpar collect")
    assert collected.success, collected.error
    assert ip.user_ns["kept"] == [0, 3, 6, 9] and job.state == "succeeded"


def test_help_is_generated_from_the_arguments(ip):
    doc = ip.find_cell_magic("azpar").__doc__
    assert doc.lstrip(": \n").startswith("%%azpar [-o NAME]")
    for option in ("--combine", "--gather", "--errors", "--retries", "--chunk-size", "--seed", "--timeout",
                   "--export", "--no-export", "--no-wait", "--quiet", "--workers"):
        assert option in doc


def test_body_globals_seen_by_notebook_functions(ip, run_cell):
    """Module mode: the body's assignments are globals, as in a notebook cell."""
    ip.run_cell("def reads_y():\n    return y * 10\ny = -1")
    run = run_cell("%%azpar -q -o out for x in range(4):\ny = x\nreads_y()")
    assert run.success, run.stderr
    assert ip.user_ns["out"] == [0, 10, 20, 30]
    assert ip.user_ns["y"] == -1  # iterations never write back into the kernel


def test_iterations_start_from_the_captured_namespace(ip, run_cell):
    ip.run_cell("acc = [0]")
    run = run_cell("%%azpar -q -o out --chunk-size 3 for x in range(6):\nacc = acc + [x]\nlen(acc)")
    assert run.success, run.stderr
    assert ip.user_ns["out"] == [2] * 6


def test_a_body_indented_under_the_for_runs(ip, run_cell):
    run = run_cell("%%azpar -q -o out for x in range(3):\n    y = x * 10\n    y + 1")
    assert run.success, run.stderr
    assert ip.user_ns["out"] == [1, 11, 21]


def test_pool_status_on_the_local_pool_lists_its_workers(ip, run_cell):
    """``%azpar pool status`` (the first action the help lists) was an error without an Azure profile;
    on the local pool it says what ``%azpar pool`` says. The Azure actions still need a profile."""
    assert run_cell("%%azpar -q -o out for x in range(4):\nx").success
    plain, status = run_cell("%azpar pool"), run_cell("%azpar pool status")
    assert plain.success and status.success, (plain.error, status.error)
    assert "local pool of" in status.stdout and "worker-" in status.stdout, status.stdout
    assert status.stdout.split(":")[0] == plain.stdout.split(":")[0]
    resize = run_cell("%azpar pool resize 1 1")
    assert not resize.success and "none is chosen: pass --profile NAME" in str(resize.error)


def test_default_output_name(ip, run_cell):
    run = run_cell("%%azpar -q for x in 'abc':\nx.upper()")
    assert run.success and ip.user_ns["azpar_result"] == ["A", "B", "C"]


def test_display_output_is_replayed_in_order(ip, run_cell):
    ip.run_cell("class Shown:\n    def __init__(self, v):\n        self.v = v\n"
                "    def _repr_html_(self):\n        return f'<b>{self.v}</b>'")
    run = run_cell("%%azpar -q -o out for x in range(3):\nprint('line', x)\ndisplay(Shown(x))\nx")
    assert run.success, run.stderr
    assert run.stdout == "line 0\nline 1\nline 2\n"
    assert [o.data["text/html"] for o in run.outputs] == ["<b>0</b>", "<b>1</b>", "<b>2</b>"]


def test_progress_line_for_longer_runs_only(ip, run_cell):
    quick = run_cell("%%azpar -o out for x in range(3):\nx")
    assert "azpar [local]" not in quick.stdout
    slow = run_cell("%%azpar -o out for x in range(4):\nimport time\ntime.sleep(0.6)\nx")
    assert slow.success
    assert "azpar [local]" in slow.stdout and "4/4 done" in slow.stdout
    assert run_cell("%%azpar -q -o out for x in range(4):\nimport time\ntime.sleep(0.6)\nx").stdout == ""



@pytest.mark.parametrize("errors, kept", [("remove", [-0.5, -1.0, 1.0]), ("pass", None)])
def test_a_quick_cell_says_which_iterations_its_result_leaves_out(ip, run_cell, errors, kept):
    """Under --errors remove|pass a cell that ends before its progress line appears (or with -q) still
    names its failures: the result alone is a shorter list, or holds an exception among its values."""
    run = run_cell(f"%%azpar -q -o out --errors {errors} for x in range(4):\n1 / (x - 2)")
    assert run.success, run.stderr
    out = ip.user_ns["out"]
    assert out == kept if kept else isinstance(out[2], ZeroDivisionError)
    assert f"1 of 4 iterations failed (--errors {errors}" in run.stderr, run.stderr
    assert "iteration 2 (item 2): ZeroDivisionError: division by zero" in run.stderr
    assert "failed" not in run_cell(f"%%azpar -q -o out --errors {errors} for x in range(4):\nx").stderr

def test_concat_of_dicts_merges_them_and_says_which_keys_came_again(ip, run_cell):
    """`--combine concat` over dicts gave a list of their keys; now the dicts merged as `out.update(v)`
    would, with one warning line when an iteration's key replaced another's."""
    run = run_cell("%%azpar -q -o out --combine concat for name in ['a', 'bb']:\n{name: len(name)}")
    assert run.success, run.stderr
    assert ip.user_ns["out"] == {"a": 1, "bb": 2} and "warning" not in run.stderr
    run = run_cell("%%azpar -q -o out --combine concat for x in range(5):\n{'score': x * x, f'k{x}': x}")
    assert run.success, run.stderr
    assert ip.user_ns["out"] == {"score": 16, "k0": 0, "k1": 1, "k2": 2, "k3": 3, "k4": 4}
    assert run.stderr.count("azpar: warning:") == 1, run.stderr
    assert "4 key(s) came again from a later iteration (the first: 'score', from the values for items 0 and 1)" in run.stderr
    assert azpar_magic.jobs()[-1].partial_results()[3] == {"score": 9, "k3": 3}


def test_an_iterator_of_the_notebooks_the_body_advances_is_warned_of_when_tasks_would_repeat_its_values(ip, run_cell):
    """``ids = itertools.count()`` then ``next(ids)`` in the body: each worker took values from its own copy, so
    iterations on different workers got the same ids (here [0, 0, 1, 1] for 0..3), in silence. Said before the run,
    naming the variable; not for one task, which continues one copy as the loop would, nor for itertools.repeat."""
    ip.run_cell("import itertools\nids = itertools.count()\nbatches = iter([[1], [2], [3]])\nfives = itertools.repeat(5)")
    try:
        run = run_cell("%%azpar --workers 2 --chunk-size 1 -o out for x in range(4):\nnext(ids)")
        assert run.success, run.error
        assert ("azpar: warning: the loop body uses `ids` (itertools.count), an iterator: the job's 4 tasks"
                in run.stderr), run.stderr
        assert run.stderr.count("warning") == 1
        both = run_cell("%%azpar -q --chunk-size 1 -o out for x in range(2):\n(next(batches), next(ids))")
        assert "`batches` (list_iterator), `ids` (itertools.count), iterators: the job's 2 tasks" in both.stderr, both.stderr
        assert "own copy of each, starting where the notebook's are now" in both.stderr
        one_task = run_cell("%%azpar -q --chunk-size 4 -o out for x in range(4):\nnext(ids)")
        assert one_task.success and "warning" not in one_task.stderr, one_task.stderr
        assert ip.user_ns["out"] == [0, 1, 2, 3]  # one copy, continued as the loop would
        repeat = run_cell("%%azpar -q --chunk-size 1 -o out for x in range(3):\nnext(fives) + x")
        assert repeat.success and "warning" not in repeat.stderr and ip.user_ns["out"] == [5, 6, 7]
        api = run_cell("import azpar_magic\n_ = azpar_magic.map(lambda x: next(ids), range(2), chunk_size=1)")
        assert "the function given to map uses `ids` (itertools.count), an iterator" in api.stderr, api.stderr
        assert "through the iterables instead" in api.stderr and "loop header" not in api.stderr, api.stderr
    finally:
        for name in ("itertools", "ids", "batches", "fives", "_"):
            ip.user_ns.pop(name, None)


def test_a_cell_run_again_starts_from_the_notebooks_objects_not_what_the_last_run_left_on_the_workers(ip, run_cell):
    """A body changing a captured object in place (``seen.append(x)``, a model trained further) left the change in
    the worker's copy, and the same cell run again started from it: ``[1, 2, 3, 4]`` then ``[5, 6, 7, 8]``, or
    other values as the tasks fell on the workers. On Azure each job has processes of its own; so does each job's
    copy here now."""
    ip.run_cell("seen = []\nclass Model:\n    def __init__(self):\n        self.steps = 0\n"
                "    def partial_fit(self, x):\n        self.steps += 1\n        return self\nmodel = Model()")
    try:
        cell = "%%azpar -q --chunk-size 4 -o out for x in range(4):\nseen.append(x)\n(len(seen), model.partial_fit(x).steps)"
        results = []
        for _ in range(3):
            run = run_cell(cell)
            assert run.success, run.error
            results.append(ip.user_ns["out"])
        assert results == [[(1, 1), (2, 2), (3, 3), (4, 4)]] * 3, results
        assert ip.user_ns["seen"] == [] and ip.user_ns["model"].steps == 0
    finally:
        for name in ("seen", "Model", "model", "out"):
            ip.user_ns.pop(name, None)


def test_python_api_matches_the_magic(ip):
    ns = {"k": 3}
    job = azpar_magic.run("for x in range(5)", "x * k", ns, combine="sum")
    assert job.result() == 30
    snap = job.snapshot()
    assert snap.state == "succeeded" and snap.items_done == 5 and snap.final
    assert "succeeded" in repr(job) and "5/5 done" in repr(job)


def test_python_api_rejects_bad_input():
    with pytest.raises(ValueError, match="run.s loop is a `for TARGET in ITERABLE` clause"):
        azpar_magic.run("x in y", "x")
    with pytest.raises(ValueError, match="errors must be"):
        azpar_magic.run("for x in []", "x", {}, errors="ignore")


def test_workers_report_states(ip, run_cell):
    run = run_cell("%%azpar -q -o out --workers 2 for x in range(2):\nx")
    assert run.success
    nodes = azpar_magic.session.engine(None, 2).backend.nodes()
    live = [n for n in nodes if n.state != "lost"]
    assert len(live) == 2 and {n.state for n in live} <= {"idle", "running", "starting"}


def test_line_magic_commands(ip, run_cell):
    run_cell("%%azpar -q -o out for x in range(2):\nx")
    from IPython.utils.capture import capture_output

    with capture_output() as captured:
        ip.run_line_magic("azpar", "jobs")
        ip.run_line_magic("azpar", "backend")
        ip.run_line_magic("azpar", "pool")
    assert "succeeded" in captured.stdout and "local pool" in captured.stdout
    with pytest.raises(Exception, match="unknown %azpar command"):
        ip.run_line_magic("azpar", "frobnicate")


def test_a_loop_on_one_line_runs_as_the_line_magic_and_reruns(ip, run_cell):
    """What IPython says of a %%azpar cell with nothing below its line ("Did you mean the line magic %azpar?") now
    works: ``%azpar [options] for x in xs: STATEMENT`` runs as a cell with that body, binds -o, shows its line in
    a remote traceback, and reruns. It said "unknown %azpar command '-o'"."""
    try:
        empty = run_cell("%%azpar -o one for x in range(3): x * 3")
        assert "Did you mean the line magic %azpar" in str(empty.error)  # IPython's, before the magic is called
        run = run_cell("%azpar -q -o one for x in range(3): x * 3")
        assert run.success, run.error
        assert ip.user_ns["one"] == [0, 3, 6]
        assert run_cell("%azpar -q --combine sum for i, (a, b) in enumerate([(1, 2), (3, 4)]): a * b + i").success
        assert ip.user_ns["azpar_result"] == 15
        ip.user_ns["bad"] = {2}
        failed = run_cell("%azpar -q -o one for x in range(4): y = 1 / (x - 2) if x in bad else x; y")
        assert "iteration 2 (item 2) raised ZeroDivisionError" in str(failed.error)
        assert "(cell line 1)" in str(failed.error)
        shown = failed.error.remote_traceback
        line = "%azpar -q -o one for x in range(4): y = 1 / (x - 2) if x in bad else x; y\n"
        assert line in shown, shown
        if sys.version_info >= (3, 11):  # the failing part is marked (Python 3.10 marks nothing)
            marks = shown.split(line, 1)[1].splitlines()[0]
            marked = marks.index("^") - 4  # a traceback indents the source line by 4
            assert marks.strip("~^ ") == "" and line.index("1 / (x - 2)") <= marked < line.index(" if"), shown
        ip.user_ns["bad"] = set()
        assert run_cell("%azpar rerun -q").success  # the job's source, one line, parsed again
        assert ip.user_ns["one"] == [0, 1, 2, 3]
        for line, said in (("-q", "%azpar -o squares for x in range(10): x * x"),
                           ("for x in range(2):", "has no body"), ("frob", "unknown %azpar command 'frob'")):
            assert said in str(run_cell(f"%azpar {line}").error)
        listed = run_cell("%azpar help").stdout.splitlines()
        assert listed[0].startswith("%azpar [options] for TARGET in ITERABLE: STATEMENT   a loop written on one line")
    finally:
        for name in ("one", "bad", "azpar_result"):
            ip.user_ns.pop(name, None)


def test_a_notebooks_except_clause_catches_a_failed_iteration_by_its_own_class(ip, run_cell):
    """``try: %azpar ... except MyError:`` in a notebook cell: the class the notebook defined catches the
    iteration's failure (it raised IterationError only), with its attributes; a cell of its own that fails
    still shows the remote traceback alone, not the cause it chains for plain Python tracebacks."""
    try:
        setup = run_cell("class Refused(Exception):\n    def __init__(self, code):\n        super().__init__(code)\n"
                         "        self.code = code\n\ndef check(x):\n    if x == 2:\n        raise Refused(40 + x)\n"
                         "    return x\n")
        assert setup.success, setup.error
        caught = run_cell("try:\n    %azpar -q -o kept for x in range(3): check(x)\nexcept Refused as exc:\n"
                          "    caught = (exc.code, exc.index, type(exc.exception).__name__)\n")
        assert caught.success, caught.error
        assert ip.user_ns["caught"] == (42, 2, "Refused")
        failed = run_cell("%%azpar -q -o kept for x in range(3):\ncheck(x)")
        assert isinstance(failed.error, ip.user_ns["Refused"]) and failed.error.code == 42
        text = failed.stdout + failed.stderr  # what IPython showed for it
        assert text.count("raise Refused(40 + x)") == 1 and "direct cause" not in text, text
    finally:
        for name in ("Refused", "check", "caught", "kept"):
            ip.user_ns.pop(name, None)


def test_a_tqdm_bar_around_the_iterable_moves_as_iterations_end(ip, run_cell):
    """``for x in tqdm(xs)``, as a notebook's loop is often written: listing the items through the bar
    filled it before anything ran. The items are taken from what the bar wraps, and the bar moves as
    iterations end on the workers (failed ones too), gets a total when it wraps a generator, and is
    closed when the job ends."""
    import io

    from tqdm import tqdm

    try:
        shown = io.StringIO()
        bar = tqdm(range(4), file=shown, mininterval=0, ascii=True)
        job = azpar_magic.run("for x in bar", "import time\ntime.sleep(0.4)\nx * 2", {"bar": bar})
        assert bar.n == 0 and not job.done  # nothing has run yet
        assert job.result(timeout=60) == [0, 2, 4, 6]
        assert bar.n == 4 and bar.disable, "moved to the end and closed"
        counts = [int(part.split("/")[0].rsplit(" ", 1)[-1]) for part in shown.getvalue().split("|") if "/4 [" in part]
        assert counts[0] == 0 and counts[-1] == 4 and counts == sorted(counts) and len(set(counts)) >= 3, shown.getvalue()
        ip.user_ns.update(tqdm=tqdm, shown=io.StringIO())
        run = run_cell("%%azpar -q -o moved --errors pass for x in tqdm((i for i in range(3)), file=shown, mininterval=0):"
                       "\n1 / (x - 1)")
        assert run.success, run.error
        assert ip.user_ns["moved"][::2] == [-1.0, 1.0] and "3/3" in ip.user_ns["shown"].getvalue()
        for call in (azpar_magic.map, azpar_magic.starmap):  # map's iterable, and starmap's checked first
            pairs = tqdm([(2, 3), (3, 2)], file=io.StringIO(), mininterval=0)
            assert call(pow if call is azpar_magic.starmap else sum, pairs) in ([8, 9], [5, 5])
            assert pairs.n == 2 and pairs.disable, call
    finally:
        for name in ("tqdm", "shown", "moved"):
            ip.user_ns.pop(name, None)


def test_a_tqdm_bar_inside_enumerate_or_zip_moves_as_iterations_end(ip, run_cell):
    """``for i, x in enumerate(tqdm(xs))``, the common way to number a loop's items: enumerate hid the bar, so
    listing the items through it filled it before anything ran (the README said to put the bar outside). The
    wrapper is made again around what the bar wraps (its start, and zip's strict, kept), and the bar moves."""
    import io

    from IPython.core.error import UsageError
    from tqdm import tqdm

    bar = tqdm([10, 20, 30], file=io.StringIO(), mininterval=0)
    job = azpar_magic.run("for i, x in enumerate(bar, 1)", "import time\ntime.sleep(0.3)\n(i, x)", {"bar": bar})
    assert bar.n == 0 and not job.done  # nothing has run yet, and the bar has not filled
    assert job.result(timeout=60) == [(1, 10), (2, 20), (3, 30)]
    assert bar.n == 3 and bar.disable, "moved to the end and closed"
    try:
        ip.user_ns.update(tqdm=tqdm, shown=io.StringIO(), names="abc")
        run = run_cell("%%azpar -q -o pairs for x, name in zip(tqdm(range(3), file=shown, mininterval=0), names, "
                       "strict=True):\nf'{name}{x}'")
        assert run.success, run.error
        assert ip.user_ns["pairs"] == ["a0", "b1", "c2"] and "3/3" in ip.user_ns["shown"].getvalue()
        uneven = run_cell("%%azpar -q -o pairs for x, name in zip(tqdm(range(4), file=shown), names, strict=True):\nx")
        assert isinstance(uneven.error, UsageError) and "zip()" in str(uneven.error), uneven.error  # strict kept
    finally:
        for name in ("tqdm", "shown", "pairs", "names"):
            ip.user_ns.pop(name, None)


def test_help_and_command_messages_read_the_command_table(ip, run_cell, monkeypatch):
    """One table of %azpar commands: an entry added to it is dispatched with its usage line, listed by
    %azpar help and named by the messages for a missing or unknown command; one taken out is gone from all."""
    from azpar_magic.magics import line

    calls = []

    def frob(context, words, usage):
        calls.append((words, usage))
        return "frobbed"

    table = tuple(c for c in line.COMMANDS if c.name != "use") + (
        line.Command("frob", frob, "%azpar frob THING [--hard]", "frob a thing", synopsis="%azpar frob THING"),)
    monkeypatch.setattr(line, "COMMANDS", table)
    assert ip.run_line_magic("azpar", "frob x --hard") == "frobbed"
    assert calls == [(["x", "--hard"], "usage: %azpar frob THING [--hard]")]
    listing = run_cell("%azpar help").stdout.splitlines()
    assert listing[-1] == "%azpar frob THING" + " " * 16 + "frob a thing"
    assert not [entry for entry in listing if entry.startswith("%azpar use")]
    assert run_cell("%azpar help frob").stdout == "%azpar frob THING" + " " * 16 + "frob a thing\n"
    unknown = str(run_cell("%azpar use local").error)
    assert unknown.startswith("unknown %azpar command 'use'; expected one of ")
    assert "doctor, env, frob, jobs" in unknown and ", use" not in unknown
    missing = str(run_cell("%azpar").error)
    assert "storage, doctor, env, frob;" in missing and " use," not in missing


@pytest.mark.parametrize("command", ["collect", "attach", "logs somejob", "cancel", "rerun somejob", "debug somejob 0",
                                     "delete somejob", "env", "jobs", "pool", "storage ls", "doctor"])
def test_every_command_names_an_unknown_option_with_its_usage(run_cell, command):
    """One reader for the words of every command: an option it does not take is named, with the usage line from
    the command table, before anything is looked up or done."""
    from azpar_magic.magics import line

    run = run_cell(f"%azpar {command} --bogus")
    usage = line.commands()[command.split()[0]].usage
    assert str(run.error) == f"unknown option '--bogus'; usage: {usage}"


def test_a_misspelt_command_option_is_answered_with_the_option_meant(run_cell):
    assert str(run_cell("%azpar jobs --sincee 2d").error).startswith(
        "unknown option '--sincee' (did you mean --since?); usage: %azpar jobs")
    assert "(did you mean --failed?)" in str(run_cell("%azpar rerun somejob --fialed").error)


def test_collect_reads_its_words_as_the_other_commands_do(run_cell):
    assert str(run_cell("%azpar collect a b").error) == "usage: %azpar collect [JOB] [-o NAME] [--errors remove|pass]"
    assert str(run_cell("%azpar collect -o").error) == ("-o needs a variable name; "
                                                         "usage: %azpar collect [JOB] [-o NAME] [--errors remove|pass]")
    # What was given is named: "(not a keyword)" was said of xs[0] too.
    assert str(run_cell("%azpar collect -o xs[0] somejob").error) == (
        "-o needs a variable name, got 'xs[0]'. Usage: %azpar collect [JOB] [-o NAME] [--errors remove|pass]")
    assert str(run_cell("%azpar collect -o for somejob").error) == (
        "-o needs a variable name, got 'for' (a Python keyword). Usage: %azpar collect [JOB] [-o NAME] [--errors remove|pass]")


def test_collect_errors_binds_what_a_failed_job_finished_as_the_error_advises(ip, run_cell):
    """A failed cell said its finished results were in ``%azpar collect JOB``, which raised the same error again.
    The error now names ``%azpar collect JOB --errors remove``, which binds them (and the gathered names) in
    order; ``--errors pass`` puts the exceptions in their places. The last iteration fails: under the job's
    ``--errors stop`` the iterations after a failure may be cancelled before they run (a race this test lost in CI),
    while the ones before it always finish."""
    failed = run_cell("%%azpar -o never_bound_c --gather tag_c --chunk-size 1 for x in range(4):\n"
                      "tag_c = f't{x}'\nif x == 3:\n    raise ValueError('no three')\nx * 10\n")
    assert isinstance(failed.error, azpar_magic.IterationError), failed.error
    job_id = failed.error.job_id
    advice = f"`%azpar collect {job_id} --errors remove` binds them"
    assert advice in str(failed.error), failed.error
    again = run_cell(f"%azpar collect {job_id}")
    assert isinstance(again.error, azpar_magic.IterationError), "the job's own policy still raises"
    kept = run_cell(f"%azpar collect {job_id} --errors remove -o kept_c")
    assert kept.success, kept.error
    assert ip.user_ns["kept_c"] == [0, 10, 20] and ip.user_ns["tag_c"] == ["t0", "t1", "t2"]
    assert "never_bound_c" not in ip.user_ns
    passed = run_cell(f"%azpar collect {job_id} --errors pass -o passed_c")
    assert passed.success, passed.error
    assert ip.user_ns["passed_c"][2] == 20 and isinstance(ip.user_ns["passed_c"][3], ValueError)
    usage = "%azpar collect [JOB] [-o NAME] [--errors remove|pass]"
    assert str(run_cell(f"%azpar collect {job_id} --errors stop").error) == (
        f"--errors takes remove or pass here, not 'stop'; usage: {usage}")
    assert str(run_cell(f"%azpar collect {job_id} --errors").error).endswith(usage)
    assert azpar_magic.collect(job_id, errors="remove") == [0, 10, 20]
    none = run_cell("%%azpar -o never_bound_c for x in range(2):\nraise ValueError('all fail')")
    assert "all fail" in str(none.error) and "finished results" not in str(none.error), "none finished: no advice"


def test_iterations_follow_the_notebooks_warning_filters_and_numpy_errors(ip, run_cell):
    """The workers followed their own warning filters: a notebook that ran ``warnings.filterwarnings("ignore")``
    (or ``np.seterr(all="ignore")``) got every iteration's warnings printed, and one that made them errors
    (``simplefilter("error")``, ``np.seterr(divide="raise")``) got prints where its loop raised. A filter on a
    library's category the worker had not imported yet is followed too."""
    import warnings

    import numpy as np

    body = "import warnings, numpy as np\nwarnings.warn('careful r25')\nnp.log(np.zeros(1))[0]\n"
    cell = f"%%azpar -o warned_r25 --errors pass --chunk-size 1 for x in range(3):\n{body}"
    errors = np.geterr()
    with warnings.catch_warnings():
        try:
            loud = run_cell(cell)
            assert loud.success, loud.error
            assert "UserWarning: careful r25" in loud.stderr and "RuntimeWarning: divide by zero" in loud.stderr
            warnings.filterwarnings("ignore")
            np.seterr(all="ignore")
            quiet = run_cell(cell)
            assert quiet.success, quiet.error
            assert "careful r25" not in quiet.stderr and "divide by zero" not in quiet.stderr, quiet.stderr
            assert ip.user_ns["warned_r25"] == [-np.inf] * 3
            warnings.simplefilter("error", UserWarning)
            strict = run_cell(cell)
            assert [type(v).__name__ for v in ip.user_ns["warned_r25"]] == ["UserWarning"] * 3, strict.stderr
            warnings.resetwarnings()
            warnings.filterwarnings("ignore", category=UserWarning)
            np.seterr(divide="raise")
            assert run_cell(cell).success
            assert [type(v).__name__ for v in ip.user_ns["warned_r25"]] == ["FloatingPointError"] * 3
            np.seterr(**errors)
            warnings.resetwarnings()
            warnings.filterwarnings("ignore", category=pd_warning_path())
            library = run_cell("%%azpar -o lib_r25 for x in range(2):\nimport warnings, pandas\n"
                               "warnings.warn('slow r25', pandas.errors.PerformanceWarning)\nx\n")
            assert library.success and "slow r25" not in library.stderr, library.stderr
        finally:
            np.seterr(**errors)
    again = run_cell(cell)  # the notebook's filters as they were: the warnings are printed again
    assert "UserWarning: careful r25" in again.stderr and "RuntimeWarning: divide by zero" in again.stderr


def test_iterations_follow_the_notebooks_decimal_context_recursion_limit_and_int_digits(ip, run_cell):
    """``decimal.getcontext().prec = 50``, ``sys.setrecursionlimit(5000)`` and ``sys.set_int_max_str_digits(0)`` in
    the notebook changed the sequential loop's results (more digits; a deep recursion that works; a long
    integer printed), while the workers kept Python's defaults: 28 digits silently, a RecursionError, a
    ValueError. The next cell, with the notebook's settings back, gets the defaults again."""
    import decimal
    import sys

    body = ("import decimal, sys\n"
            "def depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\n"
            "(str(decimal.Decimal(1) / decimal.Decimal(7)), depth(3000), len(str(10 ** 5000)), x)\n")
    cell = f"%%azpar -o settled_r25 --errors pass --chunk-size 1 for x in range(2):\n{body}"
    limit, digits = sys.getrecursionlimit(), sys.get_int_max_str_digits()
    context = decimal.getcontext().copy()
    try:
        decimal.getcontext().prec = 50
        sys.setrecursionlimit(10_000)
        sys.set_int_max_str_digits(0)
        run = run_cell(cell)
        assert run.success, run.error
        expected = str(decimal.Decimal(1) / decimal.Decimal(7))
        assert len(expected) == 52 and ip.user_ns["settled_r25"] == [(expected, 3000, 5001, 0), (expected, 3000, 5001, 1)]
    finally:
        decimal.setcontext(context)
        sys.setrecursionlimit(limit)
        sys.set_int_max_str_digits(digits)
    assert run_cell(cell).success
    kinds = [type(v).__name__ for v in ip.user_ns["settled_r25"]]
    assert kinds == ["RecursionError", "RecursionError"] or kinds == ["ValueError", "ValueError"], kinds


def pd_warning_path():
    import pandas

    return pandas.errors.PerformanceWarning


def test_a_negative_number_is_a_word_not_an_option(run_cell):
    """%azpar logs JOB -1 and %azpar pool resize -1 2 reach their own checks."""
    assert "no job 'somejob'" in str(run_cell("%azpar logs somejob -1").error)
    assert str(run_cell("%azpar pool resize -1 2").error) == ("usage: %azpar pool resize DEDICATED SPOT (two whole "
                                                               "numbers, 0 or more)")


def test_a_notebooks_future_annotations_reach_the_body(ip, run_cell):
    """After `from __future__ import annotations` in the notebook, a function defined in the loop body
    may annotate with a name defined later (the notebook's own loop leaves annotations unevaluated);
    the body was compiled without the flag and failed with NameError on the workers only."""
    import __future__

    body = "def g(x: Later) -> Later:\n    return x * 2\ng(i), g.__annotations__['x']"
    try:
        run_cell("from __future__ import annotations")
        run = run_cell("%%azpar -q -o out for i in range(2):\n" + body)
        assert run.success, run.error
        assert ip.user_ns["out"] == [(0, "Later"), (2, "Later")]
        ns = {"annotations": __future__.annotations}
        assert azpar_magic.run("for i in range(2)", body, ns).result() == [(0, "Later"), (2, "Later")]
    finally:
        ip.compile.flags &= ~__future__.annotations.compiler_flag  # later tests' cells compile as before
        for name in ("annotations", "out"):
            ip.user_ns.pop(name, None)
    without = run_cell("%%azpar -q -o out for i in range(2):\n" + body)
    assert not without.success and "NameError: name 'Later' is not defined" in str(without.error)


def test_rerunning_a_cell_over_a_used_up_iterator_says_why_nothing_ran(ip, run_cell):
    """The cell's first run goes through a generator kept in a variable; run again, the loop has no
    items, and a result of [] with no word looks like a loop that ran."""
    ip.run_cell("rows = (r * 10 for r in range(3))\npairs = zip('ab', 'cd')")
    first = run_cell("%%azpar -q -o out for r in rows:\nr + 1")
    assert first.success and ip.user_ns["out"] == [1, 11, 21] and first.stderr == ""
    again = run_cell("%%azpar -q -o out for r in rows:\nr + 1")
    assert again.success and ip.user_ns["out"] == []
    assert "`rows` is an iterator and gave no items" in again.stderr, again.stderr
    assert run_cell("%%azpar -q -o out for a, b in pairs:\na + b").stderr == ""
    assert "`pairs` is an iterator" in run_cell("%%azpar -q -o out for a, b in pairs:\na + b").stderr
    # An iterable the header makes afresh, or a list, may be empty for its own reasons: no word.
    for header in ("for r in (r for r in [])", "for r in iter([])", "for r in []"):
        assert run_cell(f"%%azpar -q -o out {header}:\nr").stderr == "", header


def test_a_body_reading_the_notebooks_output_history_is_told_before_the_run(ip, run_cell):
    """``_`` (the last output), ``Out`` and ``_N`` are never shipped: every iteration reading one fails
    with NameError, which a sequential loop in the notebook would not. The cell says so first."""
    ip.run_cell("41 + 1", store_history=True)
    run = run_cell("%%azpar -q -o out --errors pass for x in range(2):\n_ + x")
    assert "the loop body reads `_`, the notebook's output or input history" in run.stderr, run.stderr
    assert "`value = _`" in run.stderr and all(isinstance(v, NameError) for v in ip.user_ns["out"])
    assert "`value = Out[N]`" in run_cell("%%azpar -q -o out for x in range(2):\nOut[1] if x > 5 else x").stderr
    # Bound by the body (a throwaway name) or the loop: the body's own, nothing to say.
    for cell in ("for x in range(2):\n_, y = x, 1\n_ + y", "for _ in range(2):\n1"):
        run = run_cell(f"%%azpar -q -o out {cell}")
        assert run.success and run.stderr == "", run.stderr


def test_binding_a_result_over_a_builtins_name_is_said_once(ip, run_cell):
    """``-o print`` (or ``--gather max``) hides the builtin from every later cell; an option's word
    does not read as the assignment it is. Said the first time, when the notebook has not rebound it."""
    for name in ("sum", "max"):
        ip.user_ns.pop(name, None)
    run = run_cell("%%azpar -q -o sum --gather max for x in range(3):\nmax = -x\nx")
    assert run.success and ip.user_ns["sum"] == [0, 1, 2] and ip.user_ns["max"] == [0, -1, -2]
    assert "-o sum binds the result to `sum`, the name of Python's builtin sum()" in run.stderr, run.stderr
    assert "--gather max binds the result to `max`" in run.stderr
    again = run_cell("%%azpar -q -o sum --gather max for x in range(3):\nmax = -x\nx")
    assert again.success and again.stderr == "", again.stderr  # the notebook's own names now
    ip.run_cell("del sum, max")
    assert run_cell("%%azpar -q -o total for x in range(3):\nx").stderr == ""


def test_binding_a_result_over_a_notebook_function_class_or_module_is_said(ip, run_cell):
    """``-o helper`` where ``def helper`` is the function the body calls: the result replaced it in silence,
    and the next cell calling helper() failed with "'list' object is not callable" on every iteration. An
    option's word does not read as the assignment it is, as for a builtin's name."""
    ip.run_cell("import json\ndef helper(v):\n    return v * 3\nclass Point:\n    pass")
    try:
        run = run_cell("%%azpar -q -o helper --gather json,Point for x in range(2):\nPoint = json = x\nhelper(x)")
        assert run.success and ip.user_ns["helper"] == [0, 3], run.error
        assert "-o helper binds the result over the notebook's function helper: later cells using helper get " \
               "the result instead" in run.stderr, run.stderr
        assert "--gather json binds the result over the notebook's module json" in run.stderr, run.stderr
        assert "--gather Point binds the result over the notebook's class Point" in run.stderr, run.stderr
        again = run_cell("%%azpar -q -o helper for x in range(2):\nx")  # a list now: nothing to say
        assert again.success and again.stderr == "", again.stderr
    finally:
        for name in ("helper", "json", "Point"):
            ip.user_ns.pop(name, None)


def test_the_commands_that_bind_a_result_warn_of_a_builtins_name_as_the_cell_does(ip, run_cell):
    """``%azpar collect -o max``, ``%azpar attach JOB -o min`` and a rerun of a cell whose -o was a
    builtin's name (deleted since) bound over the builtin without the cell's word."""
    for name in ("sum", "max", "min"):
        ip.user_ns.pop(name, None)
    first = run_cell("%%azpar -q -o total for x in range(3):\nx")
    assert first.success, first.error
    collected = run_cell("%azpar collect -o max")
    assert collected.success and ip.user_ns["max"] == [0, 1, 2], collected.error
    assert "-o max binds the result to `max`" in collected.stderr, collected.stderr
    attached = run_cell("%azpar attach -o min")
    assert attached.success and ip.user_ns["min"] == [0, 1, 2], attached.error
    assert "-o min binds the result to `min`" in attached.stderr, attached.stderr
    summed = run_cell("%%azpar -q -o sum for x in range(3):\nx")
    assert summed.success and "-o sum binds" in summed.stderr
    ip.run_cell("del sum, max, min")
    rerun = run_cell("%azpar rerun --all -q")
    assert rerun.success and ip.user_ns["sum"] == [0, 1, 2], rerun.error
    assert "-o sum binds the result to `sum`" in rerun.stderr, rerun.stderr
    ip.run_cell("del sum")


def test_the_notebooks_package_is_staged_once_per_version_and_an_edit_reaches_the_workers(ip, run_cell, tmp_path):
    """A package of the notebook's own was read, parsed and carried in every job's envelope to every
    worker (300 modules: ~80 ms a cell). The local pool stages each version of the set once, in a file the
    envelope names; an edit (the same size, reloaded in the kernel) is a new version the workers run."""
    import os
    import time

    from azpar_magic import session

    package = tmp_path / "src" / "azpar_staged_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from .core import scale\n")
    (package / "core.py").write_text("def scale(v):\n    return v * 11\n")
    for path, when in ((package / "__init__.py", 1000), (package / "core.py", 1000)):
        os.utime(path, (time.time() - when, time.time() - when))
    src = str(tmp_path / "src")
    assert run_cell(f"import sys, importlib\nsys.path.append({src!r})\nimport azpar_staged_pkg").success

    def staged() -> list[str]:
        stages = {eng.backend._stage for eng in session._engines.values() if getattr(eng.backend, "_stage", None)}
        return sorted(name for stage in stages for name in os.listdir(stage) if name.startswith("mods-"))

    try:
        for _ in range(2):
            run = run_cell("%%azpar -q -o out for x in range(3):\nazpar_staged_pkg.scale(x)")
            assert run.success, run.error
            assert ip.user_ns["out"] == [0, 11, 22]
        (first,) = staged()
        (package / "core.py").write_text("def scale(v):\n    return v * 12\n")
        os.utime(package / "core.py", (time.time() - 500, time.time() - 500))
        assert run_cell("importlib.reload(azpar_staged_pkg.core)\nimportlib.reload(azpar_staged_pkg)").success
        run = run_cell("%%azpar -q -o out for x in range(3):\nazpar_staged_pkg.scale(x)")
        assert run.success, run.error
        assert ip.user_ns["out"] == [0, 12, 24]
        (second,) = staged()  # the earlier version is not kept in the staging folder (RAM)
        assert second != first
    finally:
        run_cell(f"sys.path.remove({src!r})\ndel azpar_staged_pkg")
        for name in ("azpar_staged_pkg", "azpar_staged_pkg.core"):
            __import__("sys").modules.pop(name, None)


def test_a_module_saved_in_latin_1_reaches_the_workers_as_the_kernel_reads_it(ip, run_cell, tmp_path, monkeypatch):
    """A module with ``# -*- coding: latin-1 -*-`` imported in the kernel; the cell failed before submitting
    ("'utf-8' codec can't decode byte 0xe9"), and a copy written as UTF-8 would have read "cafÃ©"."""
    (tmp_path / "azpar_latin.py").write_bytes(b'# -*- coding: latin-1 -*-\ndef name(x):\n    return "caf\xe9" + str(x)\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert run_cell("import azpar_latin").success
    try:
        run = run_cell("%%azpar -q -o out for x in range(2):\nazpar_latin.name(x)")
        assert run.success, run.error
        assert ip.user_ns["out"] == ["caf\xe90", "caf\xe91"]
    finally:
        run_cell("del azpar_latin")
        __import__("sys").modules.pop("azpar_latin", None)


def test_submodules_the_notebook_imported_are_there_on_the_workers(ip, run_cell, tmp_path, monkeypatch):
    """``import xml.dom.minidom`` binds ``xml``; the workers imported ``xml`` alone, and ``xml.dom.minidom``
    in the body (or in a notebook function) failed with AttributeError: module 'xml' has no attribute
    'dom'. The same for a package of the notebook's own whose ``__init__`` imports nothing."""
    (tmp_path / "azpar_subpkg").mkdir()
    (tmp_path / "azpar_subpkg" / "__init__.py").write_text("")
    (tmp_path / "azpar_subpkg" / "helpers.py").write_text("def g(x):\n    return x - 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    setup = run_cell("import xml.dom.minidom, azpar_subpkg.helpers\n"
                     "def tag(x):\n    return xml.dom.minidom.parseString(f'<t{x}/>').documentElement.tagName")
    assert setup.success, setup.error
    try:
        run = run_cell("%%azpar -q -o out for x in range(3):\n(azpar_subpkg.helpers.g(x), tag(x))")
        assert run.success, run.error
        assert ip.user_ns["out"] == [(-1, "t0"), (0, "t1"), (1, "t2")]
    finally:
        run_cell("del tag, azpar_subpkg")
        for name in ("azpar_subpkg", "azpar_subpkg.helpers"):
            __import__("sys").modules.pop(name, None)


def test_a_namespace_package_of_the_notebooks_reaches_the_workers(ip, run_cell, tmp_path, monkeypatch):
    """A folder of modules without ``__init__.py`` (PEP 420), beside the notebook or in a folder the notebook
    put on sys.path, imported as Python 3 allows: it was not shipped, and every iteration failed with
    ModuleNotFoundError."""
    notebook, src = tmp_path / "nb", tmp_path / "src"
    (notebook / "azpar_nsbeside").mkdir(parents=True)
    (notebook / "azpar_nsbeside" / "helpers.py").write_text("def g(x):\n    return x - 1\n")
    (src / "azpar_nsadded" / "sub").mkdir(parents=True)
    (src / "azpar_nsadded" / "sub" / "tools.py").write_text("def f(x):\n    return x * 5\n")
    monkeypatch.chdir(notebook)
    monkeypatch.syspath_prepend(str(notebook))
    setup = run_cell(f"import sys\nsys.path.append({str(src)!r})\nimport azpar_nsbeside.helpers\n"
                     "from azpar_nsadded.sub import tools")
    assert setup.success, setup.error
    try:
        run = run_cell("%%azpar -q -o out for x in range(3):\n(azpar_nsbeside.helpers.g(x), tools.f(x))")
        assert run.success, run.error
        assert ip.user_ns["out"] == [(-1, 0), (0, 5), (1, 10)]
        imported_in_body = run_cell("%%azpar -q -o out for x in range(2):\nfrom azpar_nsadded.sub.tools import f\nf(x)")
        assert imported_in_body.success, imported_in_body.error
        assert ip.user_ns["out"] == [0, 5]
    finally:
        run_cell(f"sys.path.remove({str(src)!r})\ndel tools, azpar_nsbeside")
        for name in ("azpar_nsbeside", "azpar_nsbeside.helpers", "azpar_nsadded", "azpar_nsadded.sub",
                     "azpar_nsadded.sub.tools"):
            __import__("sys").modules.pop(name, None)


def test_a_module_the_notebook_loaded_from_a_file_without_registering_it_reaches_the_workers(ip, run_cell, tmp_path):
    """``importlib.util.module_from_spec`` + ``exec_module`` with no ``sys.modules[name] = module``: modules travel
    by name, and every iteration failed with ModuleNotFoundError after the job was submitted. Its file now travels
    under the name it was loaded as (here not its file's); a module made at run time, which has no file, is
    refused before anything is submitted."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "scoring_v2.py").write_text("K = 9\ndef f(x):\n    return x * K\n")
    setup = run_cell("import importlib.util, types\n"
                     f"spec = importlib.util.spec_from_file_location('azpar_scoring', {str(elsewhere / 'scoring_v2.py')!r})\n"
                     "scoring = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(scoring)\n"
                     "score = scoring.f\nmade = types.ModuleType('azpar_made')\nmade.k = 5")
    assert setup.success, setup.error
    try:
        assert "azpar_scoring" not in __import__("sys").modules
        run = run_cell("%%azpar -q -o out for x in range(3):\n(scoring.f(x), scoring.K, score(x))")
        assert run.success, run.error
        assert ip.user_ns["out"] == [(0, 9, 0), (9, 9, 9), (18, 9, 18)]
        refused = run_cell("%%azpar -q -o made_out for x in range(3):\nmade.k * x")
        assert not refused.success and "made_out" not in ip.user_ns
        message = str(refused.error)
        assert "the module 'azpar_made' was made at run time" in message and "Nothing was submitted" in message, message
    finally:
        run_cell("del scoring, score, made, spec")


def test_a_function_of_a_cython_cell_runs_on_the_local_pool(ip, run_cell):
    """``%%cython`` compiles a cell into ``_cython_magic_<hash>`` under IPython's cache folder; its functions
    travel by name, and the workers found that module nowhere: every iteration failed with
    ModuleNotFoundError. Needs Cython and a C compiler (skipped without them)."""
    pytest.importorskip("Cython")
    import shutil

    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler")
    loaded = run_cell("%load_ext Cython")
    if not loaded.success:  # (Cython's magic imports distutils: setuptools on Python 3.12+)
        pytest.skip(f"%load_ext Cython failed here: {loaded.error!r}")
    compiled = run_cell("%%cython\ndef azpar_csq(int x):\n    return x * x + 1")
    if not compiled.success:
        pytest.skip(f"%%cython could not build here: {compiled.error}")
    try:
        run = run_cell("%%azpar -q -o out for x in range(4):\nazpar_csq(x)")
        assert run.success, run.error
        assert ip.user_ns["out"] == [1, 2, 5, 10]
    finally:
        ip.user_ns.pop("azpar_csq", None)


def test_a_module_imported_before_the_notebook_changed_folder_reaches_the_workers(ip, run_cell, tmp_path, monkeypatch):
    """``import helpers`` (found through the kernel's '' entry in the notebook's folder), then
    ``os.chdir("data")``: the module was no longer beside the current folder nor below a sys.path folder,
    was not shipped, and every iteration failed with ModuleNotFoundError."""
    (tmp_path / "azpar_before_chdir.py").write_text("def g(x):\n    return x * 3\n")
    (tmp_path / "data").mkdir()
    monkeypatch.syspath_prepend("")  # a kernel's sys.path, which follows the current folder
    monkeypatch.chdir(tmp_path)
    assert run_cell("import azpar_before_chdir").success
    monkeypatch.chdir(tmp_path / "data")
    try:
        run = run_cell("%%azpar -q -o out for x in range(3):\nazpar_before_chdir.g(x)")
        assert run.success, run.error
        assert ip.user_ns["out"] == [0, 3, 6]
    finally:
        run_cell("del azpar_before_chdir")
        __import__("sys").modules.pop("azpar_before_chdir", None)


def test_a_body_deleting_a_notebook_variable_deletes_its_own_copy(ip, run_cell):
    """``del xs`` in the body made the body's function treat xs as its own local: every iteration
    failed with UnboundLocalError. Each iteration now deletes its copy; the notebook keeps its xs."""
    ip.user_ns["doomed"] = [1, 2, 3]
    run = run_cell("%%azpar -q -o out for x in range(3):\ndel doomed\nx")
    assert run.success, run.error
    assert ip.user_ns["out"] == [0, 1, 2] and ip.user_ns["doomed"] == [1, 2, 3]
    ip.user_ns.pop("doomed")


def test_a_module_the_body_imports_from_a_folder_the_notebook_added_to_sys_path_reaches_the_workers(
    ip, run_cell, tmp_path
):
    """``sys.path.insert(0, "../src")`` in the notebook, ``import helpers`` in the body only (the notebook never
    imported it): only modules the kernel had imported were looked for there, so every iteration failed with
    ModuleNotFoundError where the loop run in the notebook imported it. A package there, and the module the
    first one imports, travel too; an installed module the body imports still goes by name."""
    src = tmp_path / "src"
    (src / "azpar_body_pkg").mkdir(parents=True)
    (src / "azpar_body_only.py").write_text("import azpar_body_dep\ndef scale(v):\n    return azpar_body_dep.K * v\n")
    (src / "azpar_body_dep.py").write_text("K = 13\n")
    (src / "azpar_body_pkg" / "__init__.py").write_text("from .inner import twice\n")
    (src / "azpar_body_pkg" / "inner.py").write_text("def twice(v):\n    return 2 * v\n")
    setup = run_cell(f"import sys\nsys.path.insert(0, {str(src)!r})")
    assert setup.success, setup.error
    try:
        run = run_cell("%%azpar -q -o body_imported for x in range(3):\n"
                       "import azpar_body_only, azpar_body_pkg, json\n"
                       "(azpar_body_only.scale(x), azpar_body_pkg.twice(x), json.dumps(x))")
        assert run.success, run.error
        assert ip.user_ns["body_imported"] == [(0, 0, "0"), (13, 2, "1"), (26, 4, "2")]
        assert "azpar_body_only" not in __import__("sys").modules, "the capture imported the module itself"
    finally:
        run_cell(f"sys.path.remove({str(src)!r})")


def test_a_module_imported_through_a_folder_the_notebook_added_to_sys_path_reaches_the_workers(
    ip, run_cell, tmp_path
):
    """The common ``sys.path.append("../src")`` then ``import helpers``: every iteration failed with
    ModuleNotFoundError, the workers' sys.path being their own."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "azpar_added_mod.py").write_text("def scale(v):\n    return v * 11\n")
    setup = run_cell(f"import sys\nsys.path.append({str(src)!r})\nimport azpar_added_mod")
    assert setup.success, setup.error
    try:
        run = run_cell("%%azpar -q -o out for x in range(3):\nazpar_added_mod.scale(x)")
        assert run.success, run.error
        assert ip.user_ns["out"] == [0, 11, 22]
    finally:
        run_cell(f"sys.path.remove({str(src)!r})\ndel azpar_added_mod")
        __import__("sys").modules.pop("azpar_added_mod", None)


def test_functions_and_classes_the_body_defines_read_their_own_iterations_names_in_the_notebook(ip, run_cell):
    """A lambda, function or class the body defines reads the iteration's names as globals (the body runs
    as module code, as a cell does). Returned to the notebook, they read the notebook's names instead: a
    NameError when called, or silently the notebook's own ``x``. Each now reads what its own iteration
    bound (each iteration starts from its own copy of the namespace), and the notebook's functions,
    modules and data as before; the notebook's own names are left alone."""
    import math

    ip.user_ns.update(x=1000, model={"k": -1}, offset=5)
    run_cell("import math")
    try:
        run = run_cell("%%azpar -q -o fs for x in range(3):\nlambda y: y + x + offset + math.floor(0.5)")
        assert run.success, run.error
        assert [f(10) for f in ip.user_ns["fs"]] == [15, 16, 17]
        # ... and carry only what they read: they can be the items of another cell (not the whole notebook)
        run = run_cell("%%azpar -q -o again for f in fs:\nf(10)")
        assert run.success, run.error
        assert ip.user_ns["again"] == [15, 16, 17]

        body = (
            "%%azpar -q -o gs --chunk-size 2 for x in range(5):\n"
            "model = {'k': x * 100}\n"
            "def predict(v):\n    return model['k'] + v\n"
            "class Scorer:\n    def score(self):\n        return predict(x)\n"
            "def fact(n):\n    return 1 if n <= 1 else n * fact(n - 1)\n"
            "(predict, Scorer(), fact)"
        )
        run = run_cell(body)
        assert run.success, run.error
        assert [(p(1), s.score(), f(x)) for x, (p, s, f) in enumerate(ip.user_ns["gs"])] == [
            (100 * x + 1, 100 * x + x, math.factorial(x)) for x in range(5)
        ]
        assert (ip.user_ns["x"], ip.user_ns["model"]) == (1000, {"k": -1})

        # a large array beside such a function comes back whole (its buffer travels out of band)
        run = run_cell("%%azpar -q -o arrays for x in range(2):\nimport numpy as np\n(lambda: x, np.full(200_000, x))")
        assert run.success, run.error
        assert [(f(), a.shape, int(a.sum())) for f, a in ip.user_ns["arrays"]] == [(0, (200_000,), 0), (1, (200_000,), 200_000)]

        # --gather of functions the body made; one reading only the notebook's names reads them live, as before
        run = run_cell(
            "%%azpar -q -o out --gather g,h for x in range(2):\ng = lambda: (x, offset)\nh = lambda: offset\nx"
        )
        assert run.success, run.error
        ip.user_ns["offset"] = 6
        assert [g() for g in ip.user_ns["g"]] == [(0, 5), (1, 5)]
        assert [h() for h in ip.user_ns["h"]] == [6, 6]
    finally:
        for name in ("x", "model", "offset", "math", "fs", "gs", "out", "g", "h", "again", "arrays"):
            ip.user_ns.pop(name, None)


@pytest.mark.parametrize("line", ["", "--chunk-size 2 "])
def test_functions_the_body_defines_show_their_source_in_the_notebook_and_in_a_later_cell(ip, run_cell, line):
    """Every cell's code was in the file ``<azpar cell>``: a function the body returned that raised when called in
    the notebook showed "Could not get source" (the kernel's linecache had no such file), and the same function
    raising in a later cell's iteration was said to fail at that later cell's line (the worker's linecache had
    the later cell under that name). The code of functions that leave their task is in a file of their own
    cell's, whose source the kernel's linecache has."""
    import inspect
    import traceback

    run = run_cell(f"%%azpar -q {line}-o made_fs for x in range(3):\ndef f(y):\n    return y / x\n"
                   "def g(v):\n    return v / (v - 1)\nhelper = lambda: 1\n(f, g)")
    assert run.success, run.error
    f, g = ip.user_ns["made_fs"][0]
    with pytest.raises(ZeroDivisionError) as info:
        f(1)
    text = "".join(traceback.format_exception(info.value))
    assert "return y / x" in text and "<azpar cell " in text, text
    assert inspect.getsource(g) == "def g(v):\n    return v / (v - 1)\n"
    later = run_cell("%%azpar -q -o never_bound_m for pair in made_fs:\npair[1](1)")
    assert isinstance(later.error, azpar_magic.IterationError), later.error
    assert "(cell line 2)" in str(later.error) and "cell line 3" not in str(later.error), later.error
    # The later job's workers have only the later cell's source: the kernel gives the remote traceback the
    # line of the earlier cell's function.
    assert "in g\n    return v / (v - 1)\n" in later.error.remote_traceback, later.error.remote_traceback


def test_functions_from_the_cache_or_the_store_show_their_source_in_a_new_kernel(ip, run_cell, monkeypatch):
    """The kernel's linecache had a cell's source only when that cell submitted tasks: a function whose value
    came from ``--cache``, or from a job a new kernel collected from the store, showed "Could not get source"
    in its traceback."""
    import inspect
    import linecache
    import traceback

    from azpar_magic import session

    body = "def h(v):\n    return v / x\nh"
    try:
        first = run_cell(f"%%azpar -q --cache -o cached_h for x in range(2):\n{body}")
        assert first.success, first.error
        name = ip.user_ns["cached_h"][0].__code__.co_filename
        job_id = session.find_job(None).id
        linecache.cache.pop(name)  # a new kernel
        again = run_cell(f"%%azpar -q --cache -o cached_h for x in range(2):\n{body}")
        assert again.success and session.find_job(None).from_cache == 2, again.error
        assert inspect.getsource(ip.user_ns["cached_h"][1]) == "def h(v):\n    return v / x\n"
        linecache.cache.pop(name)
        monkeypatch.setattr(session, "_jobs", {})  # the new kernel knows the job from the store only
        collected = run_cell(f"%azpar collect {job_id} -o stored_h")
        assert collected.success, collected.error
        with pytest.raises(ZeroDivisionError) as info:
            ip.user_ns["stored_h"][0](1)
        assert "return v / x" in "".join(traceback.format_exception(info.value))
    finally:
        for name in ("cached_h", "stored_h"):
            ip.user_ns.pop(name, None)


def test_iterations_follow_the_notebooks_pandas_options(ip, run_cell):
    """``pd.set_option("display.max_columns", None)``, a ``display.float_format`` and the ``future.*`` options in
    the notebook changed what the sequential loop printed and computed, while the workers kept pandas' defaults:
    a body printing a frame printed it truncated, with six decimals; a string column got the other dtype. The
    next cell, with the notebook's options back, gets the defaults again, also after a body set one itself."""
    import warnings

    pd = pytest.importorskip("pandas")
    run_cell("import pandas as pd")
    ip.user_ns["wide"] = pd.DataFrame({f"c{i}": [i + 0.123456] for i in range(30)})
    body = "print(wide)\nstr(pd.Series(['a']).dtype), x"
    cell = f"%%azpar -q -o pandas_seen --chunk-size 1 for x in range(2):\n{body}"
    default_dtype = str(pd.Series(["a"]).dtype)
    try:
        pd.set_option("display.max_columns", None)
        pd.set_option("display.float_format", "{:.1f}".format)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (pandas 3 deprecates the option it flips)
            pd.set_option("future.infer_string", not pd.get_option("future.infer_string"))
        flipped = str(pd.Series(["a"]).dtype)
        assert flipped != default_dtype  # (the guard: the option changes the dtype here)
        run = run_cell(cell)
        assert run.success, run.error
        assert ip.user_ns["pandas_seen"] == [(flipped, 0), (flipped, 1)]
        assert run.stdout.count("c29") == 2 and "..." not in run.stdout and "29.1" in run.stdout, run.stdout
    finally:
        pd.reset_option("display.max_columns")
        pd.reset_option("display.float_format")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pd.reset_option("future.infer_string")
    # a body's own setting, on both workers: gone at the next job
    assert run_cell("%%azpar -q --chunk-size 1 for x in range(4):\npd.set_option('display.precision', 2)").success
    run = run_cell(cell)
    assert run.success, run.error
    assert ip.user_ns["pandas_seen"] == [(default_dtype, 0), (default_dtype, 1)]
    assert "..." in run.stdout and "29.123456" in run.stdout and "29.12 " not in run.stdout, run.stdout
    for name in ("pd", "wide", "pandas_seen"):
        ip.user_ns.pop(name, None)


def test_iterations_follow_the_notebooks_numpy_print_options(ip, run_cell):
    """``np.set_printoptions(precision=3, suppress=True)`` in the notebook changed how the sequential loop printed
    arrays; the workers printed them with numpy's defaults. The next cell, with the notebook's options back, gets
    the defaults again, also after a body set them itself."""
    np = pytest.importorskip("numpy")
    ip.user_ns["arr"] = np.array([1 / 3, 1e-9, 2 / 3])
    cell = "%%azpar -q -o printed_with --chunk-size 1 for x in range(2):\nprint(arr)\nnp.get_printoptions()['precision']"
    run_cell("import numpy as np")
    options = np.get_printoptions()
    try:
        np.set_printoptions(precision=3, suppress=True)
        run = run_cell(cell)
        assert run.success, run.error
        assert run.stdout == f"{ip.user_ns['arr']}\n" * 2 == "[0.333 0.    0.667]\n" * 2, run.stdout
        assert ip.user_ns["printed_with"] == [3, 3]
    finally:
        np.set_printoptions(**options)
    assert run_cell("%%azpar -q --chunk-size 1 for x in range(4):\nnp.set_printoptions(precision=2)").success
    run = run_cell(cell)
    assert run.success, run.error
    assert run.stdout == f"{ip.user_ns['arr']}\n" * 2 and "e-09" in run.stdout and "3.33e-01" not in run.stdout
    for name in ("np", "arr", "printed_with"):
        ip.user_ns.pop(name, None)


def test_a_name_the_body_binds_in_a_with_or_try_block_is_not_taken_from_the_notebook(ip, run_cell, tmp_path):
    """``with open(path) as fh: rows = ...`` then ``len(rows)``: the body never reads the notebook's ``rows``,
    but only top-level assignments counted as binding, so the notebook's ``rows`` went with every job (a large
    frame shipped for nothing) or, unpicklable, refused the cell. Names ``with``, ``if`` and ``try`` blocks bind
    on every way through them now count, in order."""
    import threading

    path = tmp_path / "lines.txt"
    path.write_text("a\nb\nc\n")
    ip.user_ns.update(rows=threading.Lock(), fh=threading.Lock(), parsed=threading.Lock(), lines_path=str(path))
    try:
        run = run_cell("%%azpar -q -o counted for i in range(2):\n"
                       "with open(lines_path) as fh:\n    rows = fh.read().split()\n"
                       "try:\n    parsed = int(rows[0])\nexcept ValueError:\n    parsed = None\n"
                       "(len(rows) + i, parsed)")
        assert run.success, run.error
        assert ip.user_ns["counted"] == [(3, None), (4, None)]
        assert azpar_magic.jobs()[-1].capture.names == ("lines_path",)
        # a block that may swallow its exception binds nothing sure: the notebook's name is needed, and said so
        refused = run_cell("%%azpar -q -o counted for i in range(2):\n"
                           "from contextlib import suppress\nwith suppress(OSError):\n    rows = open(lines_path).read()\nrows")
        assert not refused.success and "`rows`" in str(refused.error), refused.error
    finally:
        for name in ("rows", "fh", "parsed", "lines_path", "counted"):
            ip.user_ns.pop(name, None)
