"""Blob transfer benchmark: a 100 MB file up to and back from Azurite through ``blobs``.

Prints, for the upload (``blobs.upload_file``) and the download (``blobs.download_file``):
MB/s over a few runs (best and median) and the peak extra memory of one more run measured
with tracemalloc (every Python allocation, the SDK's buffers included), and checks that the
file came back byte-identical. A calibration comes first so figures from different runs or
machines can be compared: a bare interpreter's start time and a pure-Python loop's steps/s.

    .venv/bin/python bench/transfers.py [--mb 100] [--runs 3]

Measured on 2026-12-02 (2 shared cores, Azurite 3.35 with its debug log, 105 MB = 100 MiB), before
issue 18 (HEAD af9dec6: own block loop, whole-transfer retries) and after (the SDK's upload_blob /
download_blob().readinto, 4 MB blocks, 4 in flight). Peak memory is deterministic; MB/s follow
the machine's load, so each pair is quoted with its calibration (loop M steps/s):

    quiet (18.2 / 19.3 M steps/s)  upload median 148 -> 193 MB/s; download median  93 -> 165 MB/s
    loaded (3.6 / 3.2)             upload median  18 ->  41 MB/s; download median  21 ->  24 MB/s
    loaded (7.4 / 3.0)             upload median  51 ->  16 MB/s; download median  57 ->  20 MB/s
    peak extra memory (every run)  upload 21.2 -> 17.0 MB;      download 302 -> 80-84 MB
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/azure.py would hide the azure package if this file's own folder stayed on sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))


def calibrate() -> tuple[float, float]:
    """(median seconds to start and stop a bare interpreter, pure-Python loop steps per second)."""
    starts = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
        starts.append(time.perf_counter() - t0)
    n, total = 3_000_000, 0
    t0 = time.perf_counter()
    for i in range(n):
        total += i
    return statistics.median(starts), n / (time.perf_counter() - t0)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def timed(action) -> float:
    t0 = time.perf_counter()
    action()
    return time.perf_counter() - t0


def peak_extra(action) -> int:
    """Bytes allocated at the peak of ``action`` above what was allocated before it."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        action()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="size of the file moved, in MB")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per direction")
    args = parser.parse_args()

    from azure.core.credentials import AzureNamedKeyCredential

    from azpar_magic.backends.azure import blobs, storage
    from tests.batch_emulator.pytest_plugin import start_azurite, stop_azurite

    start, steps = calibrate()
    print(f"calibration: bare interpreter start {start * 1000:.0f} ms; python loop {steps / 1e6:.1f} M steps/s")
    work = Path(tempfile.mkdtemp(prefix="azpar-bench-transfers-"))
    azurite = start_azurite(work)
    staging = storage.Staging(
        azurite.blob_endpoint,
        azurite.account_name,
        AzureNamedKeyCredential(azurite.account_name, azurite.account_key),
    )
    try:
        source = work / "source.bin"
        with open(source, "wb") as fh:
            for _ in range(args.mb):
                fh.write(os.urandom(1 << 20))
        size = source.stat().st_size
        mb = size / 1e6
        staging.ensure_container("bench")
        back = work / "back.bin"

        def up() -> None:
            blobs.upload_file(staging, "bench", "big.bin", str(source))

        def down() -> None:
            blobs.download_file(staging, "bench", "big.bin", str(back))

        up()  # warm: connections open, code paths imported
        rows = []
        for label, action in (("upload", up), ("download", down)):
            times = [timed(action) for _ in range(args.runs)]
            peak = peak_extra(action)
            rows.append((label, times, peak))
        identical = sha256(back) == sha256(source)
        print(f"{mb:.0f} MB against Azurite ({args.runs} runs each; peak extra memory of one more run, tracemalloc)")
        for label, times, peak in rows:
            print(
                f"  {label:8} best {mb / min(times):6.1f} MB/s  median {mb / statistics.median(times):6.1f} MB/s  "
                f"({min(times):.2f}-{max(times):.2f} s)  peak extra memory {peak / 1e6:5.1f} MB"
            )
        print(f"  byte-identical round trip: {'yes' if identical else 'NO'}")
        return 0 if identical else 1
    finally:
        staging.close()
        stop_azurite(azurite)


if __name__ == "__main__":
    raise SystemExit(main())
