"""A 200 MB input is streamed, never held whole: the peak memory of the process
that moves it, measured (VmHWM, reset first) in a fresh subprocess from the moment its libraries are loaded to the
end (a first small transfer or job included), grows far less than the file's size, both for
an upload to Blob storage (Azure) and for a local-pool job reading it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SIZE = 200 * 1024 * 1024
LIMIT_KB = 64 * 1024  # the peak may grow by at most 64 MB

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def big_file(tmp_path) -> Path:
    """200 MB, cheap to make: sparse, with random bytes at both ends (so its content, hence
    its content address, is new in every run)."""
    path = tmp_path / "big.bin"
    with open(path, "wb") as fh:
        fh.write(os.urandom(1 << 20))
        fh.truncate(SIZE - (1 << 20))
        fh.seek(0, os.SEEK_END)
        fh.write(os.urandom(1 << 20))
    assert path.stat().st_size == SIZE
    return path


def _measure(script: str, env: dict | None = None, cwd: Path = REPO) -> dict:
    prelude = textwrap.dedent("""
        import json, re, resource, sys
        sys.path.insert(0, %r)
        def _status(key):
            with open("/proc/self/status") as fh:
                return int(re.search(key + r":\\s+(\\d+)", fh.read()).group(1))
        def reset_peak():
            # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS, so
            # the peak measured is this transfer's, not the imports' transient high-water mark.
            try:
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")
            except OSError:
                pass
            return _status("VmRSS")
        def peak_kb():
            try:
                return _status("VmHWM")
            except OSError:
                return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    """ % str(REPO))
    done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=200)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.azure
def test_uploading_a_200_mb_input_streams_it(azurite, big_file, blob_service):
    container = f"memtest-{uuid.uuid4().hex[:8]}"
    out = _measure("""
        import os
        from azure.core.credentials import AzureNamedKeyCredential
        from azpar_magic.backends.azure import blobs, storage
        st = storage.Staging(os.environ["T_URL"], os.environ["T_ACCOUNT"],
                             AzureNamedKeyCredential(os.environ["T_ACCOUNT"], os.environ["T_KEY"]))
        st.ensure_container(os.environ["T_CONTAINER"])
        small = os.environ["T_FILE"] + ".small"
        with open(small, "wb") as fh:
            fh.write(os.urandom(5 << 20))
        before = reset_peak()  # the libraries loaded; no transfer yet
        blobs.upload_file_once(st, os.environ["T_CONTAINER"], small)  # 5 MB first: the transfer code warm
        name, sent = blobs.upload_file_once(st, os.environ["T_CONTAINER"], os.environ["T_FILE"])
        print(json.dumps({"before": before, "after": peak_kb(), "name": name, "sent": sent,
                          "blocks": st.stats.calls.get("put_block")}))
    """, env={"T_URL": azurite.blob_endpoint, "T_ACCOUNT": azurite.account_name, "T_KEY": azurite.account_key,
              "T_CONTAINER": container, "T_FILE": str(big_file)})
    try:
        blob = blob_service.get_blob_client(container, out["name"])
        assert out["sent"] and blob.get_blob_properties().size == SIZE
        grown = out["after"] - out["before"]
        print(f"upload of {SIZE >> 20} MB: peak memory grew by {grown / 1024:.1f} MB "
              f"({out['blocks']} blocks staged)")
        assert grown < LIMIT_KB, f"peak memory grew by {grown / 1024:.1f} MB while uploading {SIZE >> 20} MB"
    finally:
        blob_service.delete_container(container)


def test_a_local_job_reading_a_200_mb_input_streams_it(big_file, tmp_path):
    import hashlib

    expected = hashlib.sha256()
    with open(big_file, "rb") as fh:
        while chunk := fh.read(1 << 20):
            expected.update(chunk)
    out = _measure("""
        import azpar_magic
        body = ("import hashlib, os\\nh = hashlib.sha256()\\n"
                "with open('inputs/big.bin', 'rb') as fh:\\n"
                "    for chunk in iter(lambda: fh.read(1 << 20), b''):\\n"
                "        h.update(chunk)\\n"
                "(h.hexdigest(), os.path.realpath('inputs/big.bin'))")
        before = reset_peak()  # the package loaded; no job yet
        azpar_magic.run("for i in range(2)", "i", inputs=["small.txt"], workers=2).result()  # the pool started
        values = azpar_magic.run("for i in range(2)", body, inputs=["big.bin"], workers=2).result()
        print(json.dumps({"before": before, "after": peak_kb(), "values": values}))
    """, cwd=_with_small(tmp_path))
    grown = out["after"] - out["before"]
    print(f"local job reading {SIZE >> 20} MB: the kernel's peak memory grew by {grown / 1024:.1f} MB")
    assert out["values"] == [[expected.hexdigest(), str(big_file.resolve())]] * 2  # read in place, whole
    assert grown < LIMIT_KB, f"peak memory grew by {grown / 1024:.1f} MB"


def _with_small(folder: Path) -> Path:
    (folder / "small.txt").write_text("x")
    return folder
