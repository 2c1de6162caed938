"""``%azpar storage ls|get|put|rm`` and ``azpar_magic.storage`` against Azurite, through a
profile as a user has one; and what they say without one."""

from __future__ import annotations

import os
import re
import uuid

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

import azpar_magic
from azpar_magic.backends.azure import blobs

pytestmark = [pytest.mark.azure, pytest.mark.timeout(120)]


def _magic(ip, line: str) -> str:
    with capture_output() as captured:
        ip.run_line_magic("azpar", line)
    return captured.stdout


def test_put_ls_get_rm_through_the_magic(azure, ip, tmp_path, blob_service):
    box = f"box{uuid.uuid4().hex[:12]}"
    (tmp_path / "up" / "sub").mkdir(parents=True)
    (tmp_path / "up" / "a.csv").write_bytes(b"a,b\n1,2\n")
    (tmp_path / "up" / "sub" / "b.bin").write_bytes(os.urandom(3000))
    out = _magic(ip, f"storage put up az://{box}/run1")
    assert "uploaded 2 files" in out
    listing = _magic(ip, f"storage ls az://{box}/run1")
    assert f"az://{box}/run1/a.csv" in listing and f"az://{box}/run1/sub/b.bin" in listing
    assert "3.0 KB" in listing and "8 B" in listing
    assert f"az://{box}" in _magic(ip, "storage ls")  # containers

    _magic(ip, f"storage get az://{box}/run1 down")  # a folder of blobs keeps its layout
    assert (tmp_path / "down" / "a.csv").read_bytes() == (tmp_path / "up" / "a.csv").read_bytes()
    assert (tmp_path / "down" / "sub" / "b.bin").read_bytes() == (tmp_path / "up" / "sub" / "b.bin").read_bytes()
    _magic(ip, f"storage get az://{box}/run1/a.csv single/")  # one blob into a folder
    assert (tmp_path / "single" / "a.csv").read_bytes() == b"a,b\n1,2\n"

    said = _magic(ip, f"storage rm -r az://{box}/run1")  # without -y: only says what would go
    assert "2 blobs would be deleted; nothing was" in said
    assert len(list(blob_service.get_container_client(box).list_blobs())) == 2
    with pytest.raises(UsageError, match="is a folder of 2 blobs; removing it needs -r"):
        ip.run_line_magic("azpar", f"storage rm -y az://{box}/run1")
    assert "deleted 2 blobs" in _magic(ip, f"storage rm -r -y az://{box}/run1")
    assert list(blob_service.get_container_client(box).list_blobs()) == []
    with pytest.raises(UsageError, match="does not exist"):
        ip.run_line_magic("azpar", f"storage get az://{box}/run1 again")


def test_under_a_hub_the_account_listing_leaves_out_other_users_containers(azure, ip, blob_service, monkeypatch):
    """Hub users sharing one account listed every container of it: the other users' job containers
    (`azpar-SLUG-DATE-...-in`) named who ran what and when. A hub user's list now has their own
    containers and those azpar did not make (datasets), and says how many it left out; a named
    container of another user's is still listed (access is Azure's to refuse), and outside a hub
    every container is listed as before."""
    from azpar_magic import identity

    tag = uuid.uuid4().hex[:8]
    mine, theirs, shared = f"azpar-{identity.slug('alice')}-{tag}-in", f"azpar-bob-{tag}-in", f"datasets{tag}"
    blob_service.create_container(mine, metadata={"azpar_user": identity.slug("alice")})
    blob_service.create_container(theirs, metadata={"azpar_user": "bob"})
    blob_service.create_container(shared)
    blob_service.get_container_client(theirs).upload_blob("r.bin", b"bob's")
    try:
        monkeypatch.setenv("JUPYTERHUB_USER", "alice")
        listing = _magic(ip, "storage ls")
        assert f"az://{mine}\n" in listing and f"az://{shared}\n" in listing, listing
        assert theirs not in listing, listing
        assert re.search(r"azpar: \d+ containers? of other hub users not listed", listing), listing
        entries = azpar_magic.storage.ls()
        assert entries.hidden >= 1 and f"az://{theirs}" not in {e.path for e in entries}
        assert f"az://{theirs}/r.bin" in _magic(ip, f"storage ls az://{theirs}")
        monkeypatch.delenv("JUPYTERHUB_USER")
        listing = _magic(ip, "storage ls")
        assert all(f"az://{name}\n" in listing for name in (mine, theirs, shared)), listing
        assert "not listed" not in listing
    finally:
        for name in (mine, theirs, shared):
            blob_service.delete_container(name)


def test_large_transfers_report_progress_and_arrive_whole(azure, ip, tmp_path):
    big = tmp_path / "big.bin"
    block = os.urandom(1 << 20)
    with open(big, "wb") as fh:
        for i in range(20):
            fh.write(bytes([i]) + block[1:])
    seen = []
    written = azpar_magic.storage.put(str(big), "az://bigbox/", progress=lambda name, done, total: seen.append(
        (name, done, total)))
    assert written == ["az://bigbox/big.bin"]
    size = big.stat().st_size
    assert seen[-1] == ("big.bin", size, size) and len(seen) == 5  # one report per 4 MB block
    assert [d for _, d, _ in seen] == sorted(d for _, d, _ in seen)
    out = _magic(ip, f"storage get az://bigbox/big.bin {tmp_path / 'back.bin'}")
    assert "azpar: big.bin" in out and "21.0 MB of 21.0 MB (100%)" in out and "downloaded 1 file" in out
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()
    assert azpar_magic.storage.rm("az://bigbox/big.bin") == ["az://bigbox/big.bin"]


def test_storage_needs_an_azure_profile(ip, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    with pytest.raises(UsageError, match="needs an Azure profile|has none active"):
        ip.run_line_magic("azpar", "storage ls")
    with pytest.raises(azpar_magic.storage.StorageError, match="pass --profile NAME"):
        azpar_magic.storage.ls()


def test_bad_storage_commands_say_how(azure, ip):
    for line in ("storage", "storage cp a b", "storage get az://x", "storage ls -y", "storage rm -q az://box/x"):
        with pytest.raises(UsageError, match="usage: %azpar storage"):
            ip.run_line_magic("azpar", line)
    with pytest.raises(UsageError, match="must be an az://CONTAINER/PATH path"):
        ip.run_line_magic("azpar", "storage get /tmp/x y")
    with pytest.raises(UsageError, match="does not name a blob container"):
        ip.run_line_magic("azpar", "storage ls az://Bad_Name/x")


def test_transfers_are_retried_then_reported():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError("connection reset")
        return "ok"

    assert blobs.retried("reading x", flaky, backoff=0.01) == "ok" and len(calls) == 3

    def broken():
        raise OSError("connection reset")

    with pytest.raises(blobs.TransferError, match="reading y failed after 3 attempts: OSError: connection reset"):
        blobs.retried("reading y", broken, backoff=0.01)


def _put_raw(azurite, blob_service, container: str, encoded_name: str, data: bytes) -> None:
    """Store a blob under a name the SDK would not send as is (``..`` segments, a leading
    slash): one plain PUT with a write SAS, the name percent-encoded, as any HTTP client can."""
    import datetime

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from .azure_support import sas_status

    sas = generate_container_sas(blob_service.account_name, container, account_key=azurite.account_key,
                                 permission=ContainerSasPermissions(write=True, create=True),
                                 expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1))
    assert sas_status("PUT", f"{blob_service.url.rstrip('/')}/{container}/{encoded_name}?{sas}", data) == 201


def test_get_never_writes_outside_the_target_folder(azure, ip, tmp_path, azurite, blob_service):
    box = f"dots{uuid.uuid4().hex[:12]}"
    blob_service.create_container(box)
    work = tmp_path / "nb" / "deeper"
    work.mkdir(parents=True)
    _put_raw(azurite, blob_service, box, "run/ok.txt", b"fine")
    _put_raw(azurite, blob_service, box, "run/%2E%2E/%2E%2E/%2E%2E/escape.txt", b"evil")
    names = sorted(b.name for b in blob_service.get_container_client(box).list_blobs())
    assert names == ["run/../../../escape.txt", "run/ok.txt"]  # what a listing hands the helper
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(UsageError) as refused:
        ip.run_line_magic("azpar", f"storage get az://{box}/run {work / 'down'}")
    message = str(refused.value)
    assert f"az://{box}/run/../../../escape.txt" in message and "'..'" in message, message
    assert "outside" in message and "Nothing was downloaded" in message, message
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # not even the good blob, nothing anywhere
    assert not (tmp_path / "escape.txt").exists() and not (work / "down").exists()

    other = f"slash{uuid.uuid4().hex[:12]}"  # a name with a leading slash lands below the target too
    blob_service.create_container(other)
    _put_raw(azurite, blob_service, other, "%2Fabs.txt", b"rooted")
    assert [b.name for b in blob_service.get_container_client(other).list_blobs()] == ["/abs.txt"]
    assert azpar_magic.storage.get(f"az://{other}", str(work / "all")) == [str(work / "all" / "abs.txt")]
    assert (work / "all" / "abs.txt").read_bytes() == b"rooted"


@pytest.mark.parametrize("path", ["az://{box}/run/../x", "az://{box}/..", "az://{box}/a/..\\..\\b"])
def test_az_names_with_dot_dot_segments_are_refused(azure, ip, path):
    path = path.format(box="somebox")
    for line in (f"storage get '{path}' here", f"storage put {__file__} '{path}'", f"storage ls '{path}'",
                 f"storage rm '{path}'"):
        with pytest.raises(UsageError, match=r"'\.\.' segment"):
            ip.run_line_magic("azpar", line)
