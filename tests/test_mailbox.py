"""The local pool's mailbox on the fast path (``platforms.SelectMailbox``): what the workers
write comes out whole and in order, each chunk its own bytes (the mailbox reads into one
reused buffer: a chunk must not change when the next read fills it)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from azpar_magic import platforms

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the fast path is POSIX only")


def drain(box: platforms.SelectMailbox, wanted: int) -> dict[str, list[bytes]]:
    got: dict[str, list[bytes]] = {}
    total = 0
    while total < wanted:
        for key, chunk in box.wait(5.0):
            assert chunk, "a pipe ended early"
            got.setdefault(key, []).append(chunk)
            total += len(chunk)
    return got


def test_what_workers_write_comes_out_whole_in_order_and_each_chunk_keeps_its_bytes():
    box = platforms.SelectMailbox()
    pipes = {key: os.pipe() for key in ("worker-1", "worker-2")}
    try:
        for key, (r, _) in pipes.items():
            box.watch(key, r)
        small = {key: [f"{key} message {i}\n".encode() for i in range(3)] for key in pipes}
        for key, (_, w) in pipes.items():
            for message in small[key]:
                os.write(w, message)
        got = drain(box, sum(len(m) for ms in small.values() for m in ms))
        kept = {key: list(chunks) for key, chunks in got.items()}
        assert {key: b"".join(chunks) for key, chunks in got.items()} == {k: b"".join(v) for k, v in small.items()}

        # More than one read's worth (the pipe holds 64 KiB: the writer blocks until read).
        big = bytes(range(256)) * ((platforms.READ_SIZE + 300_000) // 256)
        writer = threading.Thread(target=lambda: os.write(pipes["worker-1"][1], big) and None)
        writer.start()
        received = bytearray()
        while len(received) < len(big):
            chunks = drain(box, 1).get("worker-1", [])
            for chunk in chunks:
                assert isinstance(chunk, bytes)
                received += chunk
        writer.join(10)
        assert bytes(received) == big
        # The first reads' chunks were not overwritten by the later ones.
        assert {key: b"".join(chunks) for key, chunks in kept.items()} == {k: b"".join(v) for k, v in small.items()}
    finally:
        for key, (_, w) in pipes.items():
            os.close(w)
            box.forget(key)
        box.close()


def test_a_pipe_that_ends_reads_as_an_empty_chunk():
    box = platforms.SelectMailbox()
    r, w = os.pipe()
    try:
        box.watch("worker-1", r)
        os.write(w, b"last words")
        os.close(w)
        seen: list[bytes] = []
        while not seen or seen[-1]:
            seen += [chunk for _, chunk in box.wait(5.0)]
        assert b"".join(seen) == b"last words" and seen[-1] == b""
    finally:
        box.forget("worker-1")
        box.close()
