"""The loop the data tests run on both backends: each iteration reads its own CSV part
(``--inputs 'parts/part-{i}.csv'``) and a shared lookup file, and writes a PNG bar plot and
a small CSV under the same names in every iteration (so a clash would show). The body
returns the bytes it wrote, so the test can compare them with what arrived."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

N_PARTS = 5

# The PNG writer lives in the body: the worker has no plotting library, and the bytes must
# be exactly what the body wrote, whoever runs it.
BODY = '''import csv, struct, zlib
with open(f"inputs/parts/part-{i}.csv", newline="") as fh:
    rows = list(csv.reader(fh))[1:]
with open("inputs/scale.txt") as fh:
    scale = int(fh.readline())
ys = [int(y) * scale for _, y in rows]
width, height = 4 * len(ys), 20
pixels = bytearray()
for row in range(height):
    pixels.append(0)
    for x in range(width):
        on = ys[x // 4] * height >= (height - row) * 16 * scale
        pixels += bytes((200, 30 + 10 * i, 60)) if on else b"\\xff\\xff\\xff"
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
png = (b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(bytes(pixels), 9)) + chunk(b"IEND", b""))
with open("plot.png", "wb") as fh:
    fh.write(png)
summary = f"part,n,total\\n{i},{len(ys)},{sum(ys)}\\n".encode()
with open("summary.csv", "wb") as fh:
    fh.write(summary)
{"plot.png": png, "summary.csv": summary}'''


def make_parts(folder: Path, n: int = N_PARTS, salt: str = "") -> None:
    """``parts/part-I.csv`` (different per part) and ``scale.txt`` in ``folder``; ``salt``
    makes the bytes (not the values) unique, so content-addressed uploads start afresh."""
    (folder / "parts").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        lines = [f"x,y{salt}"] + [f"{x},{(x * (i + 3) + 5) % 16}" for x in range(6 + i)]
        (folder / "parts" / f"part-{i}.csv").write_text("\n".join(lines) + "\n")
    (folder / "scale.txt").write_text(f"2\n{salt}\n")


def check_outputs(root: Path, values: list[dict], n: int = N_PARTS) -> None:
    """Every iteration's folder holds exactly its two files, byte-identical to what it wrote."""
    assert sorted(p.name for p in root.iterdir()) == sorted(str(i) for i in range(n))
    for i in range(n):
        folder = root / str(i)
        assert sorted(p.name for p in folder.iterdir()) == ["plot.png", "summary.csv"], i
        for name, data in values[i].items():
            assert (folder / name).read_bytes() == data, (i, name)
        png = (folder / "plot.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and _png_is_valid(png)
        rows = (folder / "summary.csv").read_text().splitlines()
        assert rows[1].startswith(f"{i},{6 + i},")
    # iterations wrote different bytes under the same names: nothing was overwritten
    assert len({values[i]["plot.png"] for i in range(n)}) == n


def _png_is_valid(data: bytes) -> bool:
    """Walk the chunks, checking each CRC, and inflate the image data."""
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            return False
        if kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height = struct.unpack(">II", data[16:24])
    return len(zlib.decompress(idat)) == height * (1 + 3 * width)
