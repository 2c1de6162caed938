"""Unit test of backends/azure/threads.py: the backend's thread pools while Python exits."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import threading, time
    from concurrent.futures import ThreadPoolExecutor
    from azpar_magic.backends.azure.threads import ThreadPool, refused_by_the_exit

    used = ThreadPool(2)
    used.submit(lambda: 1).result()  # its threads see the exit, and the pool then says "after shutdown"
    fresh = ThreadPool(2)  # no thread yet: "after interpreter shutdown"
    shut = ThreadPool(2)
    shut.shutdown()
    plain = ThreadPoolExecutor(2)  # as the SDK's own

    def after_the_main_thread():
        while threading.main_thread().is_alive():
            time.sleep(0.01)
        time.sleep(0.2)
        print("used:", used.submit(lambda: threading.current_thread().name).result())
        print("fresh:", list(fresh.map(lambda x: x * 2, [1, 2])))
        failing = fresh.submit(lambda: 1 / 0)
        print("failing:", type(failing.exception()).__name__)
        for name, pool in (("shut", shut), ("plain", plain)):
            try:
                pool.submit(lambda: 1)
            except RuntimeError as exc:
                print(f"{name} refuses:", exc, refused_by_the_exit(exc))

    threading.Thread(target=after_the_main_thread).start()
""")


def test_pools_run_calls_in_the_calling_thread_once_the_exit_has_begun():
    """Python's exit stops every pool before it waits for the process's other threads (and before atexit): a
    call submitted then runs in the thread that submits it, its result or exception in the future as from a
    pool. A pool its owner shut still refuses, and a plain pool's refusal is told apart as the exit's."""
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "used: Thread-1 (after_the_main_thread)",
        "fresh: [2, 4]",
        "failing: ZeroDivisionError",
        "shut refuses: cannot schedule new futures after shutdown False",
        "plain refuses: cannot schedule new futures after interpreter shutdown True",
    ]
