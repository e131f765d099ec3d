#!/usr/bin/env python3
"""Write the minimised regression inputs of tests/regress/ (see tests/regress/README.md). Standard library only.

Each file is a small hostile or broken input on a path that once was a bug or is easy to get wrong; the
`fuzz_regressions` test (tests/corrupt_corpus.rs) requires every one to fail cleanly (exit 1, one line naming the
file, no panic, bounded time and memory, nothing left at the output) in `inspect` and in a conversion.
Deterministic: rerunning rewrites the same bytes. A few start from vendored fixtures (tests/fixtures/edge).

    python3 tools/make-regress.py
"""
import io
import json
import os
import struct
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "regress")
EDGE = os.path.join(ROOT, "tests", "fixtures", "edge")


def put(rel, data):
    p = os.path.join(OUT, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(data)


def edge(name):
    with open(os.path.join(EDGE, name), "rb") as f:
        return f.read()


# ---- safetensors ---------------------------------------------------------------------------------------------------
def st(header, data=b""):
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data


put("safetensors/header-len-2p60.safetensors", struct.pack("<Q", 1 << 60) + b"{}")
put("safetensors/numel-2p60.safetensors",
    st({"a": {"dtype": "F32", "shape": [1 << 30, 1 << 30], "data_offsets": [0, 4]}}, b"\0" * 4))
put("safetensors/shape-overflow.safetensors",
    st({"a": {"dtype": "F32", "shape": [1 << 62, 1 << 62, 16], "data_offsets": [0, 4]}}, b"\0" * 4))
put("safetensors/offsets-overlap.safetensors",
    st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12))
put("safetensors/header-not-utf8.safetensors", struct.pack("<Q", 4) + b"{\xff\xfe}")


# ---- MindSpore ckpt ------------------------------------------------------------------------------------------------
def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v == 0:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def field(tag, body):
    return bytes([tag]) + varint(len(body)) + body


def record(name, dims, ty, data):
    t = b"".join(b"\x08" + varint(d) for d in dims) + field(0x12, ty.encode()) + field(0x1A, data)
    return field(0x0A, field(0x0A, name.encode()) + field(0x12, t))


put("ckpt/varint-11-bytes.ckpt", b"\x0a" + b"\xff" * 10 + b"\x01" + b"\0" * 8)
put("ckpt/int4-type.ckpt", record("w", [4], "Int4", b"\0" * 2))
put("ckpt/numel-2p60.ckpt", record("w", [1 << 30, 1 << 30], "Float32", b"\0" * 4))
put("ckpt/payload-short.ckpt", record("w", [4], "Float32", b"\0" * 12))
# A chunked (several same-tag records) tensor cut inside a chunk: the slice bookkeeping must not trust the dims.
sliced = edge("ms_sliced_bytes.ckpt")
put("ckpt/sliced-cut-in-chunk.ckpt", sliced[: len(sliced) // 2])
# Slices of one tag whose dims change between records.
put("ckpt/slices-change-dims.ckpt",
    record("w", [4, 4], "Float32", b"\0" * 32) + record("w", [2, 4], "Float32", b"\0" * 32))
# Valid records under a crc_num trailer whose value does not match.
put("ckpt/wrong-crc.ckpt",
    record("w", [2], "Float32", b"\0" * 8) + b"crc_num" + b"\0" * 6 + struct.pack(">I", 0x12345678))


# ---- torch zip -----------------------------------------------------------------------------------------------------
def torch_zip(pkl, storages=()):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in [("archive/data.pkl", pkl), ("archive/byteorder", b"little")] + \
                [("archive/data/" + k, v) for k, v in storages] + [("archive/version", b"3\n")]:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            z.writestr(info, data)
    return buf.getvalue()


def short_str(s):
    return b"X" + struct.pack("<I", len(s)) + s.encode()


# A pickle that would run a shell command (GLOBAL and STACK_GLOBAL spellings): refused, nothing executed.
put("torch_zip/global-os-system.bin",
    torch_zip(b"\x80\x02cos\nsystem\n" + short_str("true") + b"\x85R."))
put("torch_zip/stack-global-eval.pt",
    torch_zip(b"\x80\x04" + short_str("builtins") + short_str("eval") + b"\x93" + short_str("1") + b"\x85R."))
# LONG_BINGET of a memo index that was never stored (2^32 - 16).
put("torch_zip/memo-missing.bin", torch_zip(b"\x80\x02}j" + struct.pack("<I", 2**32 - 16) + b"."))
# Opcodes after the end: no STOP.
put("torch_zip/no-stop.bin", torch_zip(b"\x80\x02}("))
# A string length of 2^31 - 1 with nothing after it.
put("torch_zip/string-len-2p31.bin", torch_zip(b"\x80\x02X" + struct.pack("<I", 2**31 - 1) + b"abc"))
# A valid fixture whose data.pkl CRC-32 is non-zero and wrong (was a known gap: a wrong CRC went unnoticed).
z = bytearray(edge("torch_dtypes.bin"))
eocd = z.rfind(b"PK\x05\x06")
n, = struct.unpack_from("<H", z, eocd + 10)
p, = struct.unpack_from("<I", z, eocd + 16)
for _ in range(n):
    name_len, extra, comment = struct.unpack_from("<HHH", z, p + 28)
    local, = struct.unpack_from("<I", z, p + 42)
    if z[p + 46: p + 46 + name_len].endswith(b"data.pkl"):
        struct.pack_into("<I", z, p + 16, 0x0BADC0DE)
        struct.pack_into("<I", z, local + 14, 0x0BADC0DE)
    p += 46 + name_len + extra + comment
put("torch_zip/data-pkl-wrong-crc.bin", bytes(z))
# A valid fixture cut inside its central directory.
tz = edge("torch_tied.bin")
put("torch_zip/cut-in-central-directory.bin", tz[: len(tz) - 30])

# ---- torch legacy --------------------------------------------------------------------------------------------------
legacy = edge("torch_legacy.bin")
put("torch_legacy/cut-after-magic.bin", legacy[:40])
put("torch_legacy/short-by-one.bin", legacy[:-1])

for d, _, files in sorted(os.walk(OUT)):
    for f in sorted(files):
        if not f.endswith(".md"):
            print(os.path.relpath(os.path.join(d, f), ROOT), os.path.getsize(os.path.join(d, f)))
