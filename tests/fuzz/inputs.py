"""Hypothesis strategies for the bytes each parser target reads: mostly well-formed
files with one part broken (a header field, a length, an entry, a compressed stream), and
raw bytes, so that the parsers' deep paths run, not only their first check."""

import gzip
import io
import json
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import zstandard
from hypothesis import strategies as st

from sparegrid.v1 import common_pb2
from tests.fuzz.protos import messages

SEEDS = Path(__file__).parent / "seeds"
PT2_SEED = (SEEDS / "tiny.pt2").read_bytes()

ints = st.one_of(
    st.sampled_from([0, 1, 2, 3, 4, 8, 13, 16, 255, 65535, 2**31 - 1, 2**32 - 1, 2**63 - 1]),
    st.integers(0, 2**32 - 1),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def mutated(data: bytes) -> st.SearchStrategy[bytes]:
    """The bytes with a few flipped, cut short, or with a run overwritten."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            how = draw(st.sampled_from(["flip", "cut", "splice"]))
            if not out:
                break
            at = draw(st.integers(0, len(out) - 1))
            if how == "flip":
                out[at] ^= draw(st.integers(1, 255))
            elif how == "cut":
                del out[at:]
            else:
                out[at : at + 8] = draw(st.binary(min_size=1, max_size=8))
        return bytes(out)

    return mutate()


# .pt2: the seed archive, its entries edited, renamed, repeated, deflated, or bytes broken


@st.composite
def pt2_archives(draw: st.DrawFn) -> bytes:
    with zipfile.ZipFile(io.BytesIO(PT2_SEED)) as seed:
        entries = [(i.filename, seed.read(i)) for i in seed.infolist()]
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(entries) - 1))
        name, body = entries[at]
        how = draw(st.sampled_from(["json", "bytes", "rename", "repeat", "drop"]))
        if how == "json":
            body = json.dumps(draw(json_values)).encode()
            if name.endswith(".json") and draw(st.booleans()):
                try:
                    doc = json.loads(entries[at][1])
                except ValueError:
                    doc = None
                if isinstance(doc, dict):
                    doc[draw(st.sampled_from(sorted(doc) or ["x"]))] = draw(json_values)
                    body = json.dumps(doc).encode()
        elif how == "bytes":
            body = draw(st.binary(max_size=64))
        elif how == "rename":
            name = draw(
                st.sampled_from(
                    ["../evil", "/abs", "tiny/MODELS/model.json", "tiny/x\x00y", "other/a", "tiny/"]
                )
            )
        elif how == "repeat":
            entries.append((name.upper(), body))
        else:
            del entries[at]
            continue
        entries[at] = (name, body)
    method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a repeated name is the point
        for name, body in entries:
            archive.writestr(name, body)
    data = out.getvalue()
    return draw(st.one_of(st.just(data), mutated(data)))


# safetensors: an 8-byte length, a JSON header, the data


@st.composite
def safetensors_files(draw: st.DrawFn) -> bytes:
    tensors = draw(
        st.dictionaries(
            st.text(max_size=6),
            st.one_of(
                st.fixed_dictionaries(
                    {
                        "dtype": st.sampled_from(["F32", "F16", "I64", "BOOL", "U8", "X"]),
                        "shape": st.lists(st.one_of(ints, st.integers(-3, 3)), max_size=4),
                        "data_offsets": st.lists(st.integers(-5, 2**64), min_size=0, max_size=3),
                    }
                ),
                json_values,
            ),
            max_size=3,
        )
    )
    header = draw(
        st.one_of(
            st.just(json.dumps(tensors).encode()),
            st.just(b"[" * 5000 + b"]" * 5000),  # deeply nested
            st.binary(max_size=32),
        )
    )
    length = draw(st.one_of(st.just(len(header)), ints))
    body = draw(st.binary(max_size=64))
    return struct.pack("<Q", length) + header + body


# .blend: a header, blocks up to ENDB, maybe compressed

BLOCK_CODES = [b"ENDB", b"DATA", b"GLOB", b"DNA1", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff"]


@st.composite
def blend_files(draw: st.DrawFn) -> bytes:
    header = draw(
        st.sampled_from(
            [
                *(b"BLENDER17-01v0500", b"BLENDER17-01V0500", b"BLENDER-v300", b"BLENDER_v293"),
                *(b"BLENDER-V400", b"BLENDER-vabc", b"BLENDER17-01v05x0", b"BLENDER"),
            ]
        )
    )
    v1 = header.startswith(b"BLENDER17")
    fmt = struct.Struct("<4siQqq") if v1 else struct.Struct("<4siQii")
    out = bytearray(header)
    for _ in range(draw(st.integers(0, 4))):
        code = draw(st.one_of(st.sampled_from(BLOCK_CODES), st.binary(min_size=4, max_size=4)))
        payload = draw(
            st.one_of(
                st.binary(max_size=32),
                st.sampled_from([b"GeometryNodeImportOBJ\x00", b"ShaderNodeTexIES\x00"]),
            )
        )
        length = draw(st.one_of(st.just(len(payload)), st.integers(-(2**31), 2**31 - 1)))
        fields = (code, 0, 0, length, 0) if v1 else (code, length, 0, 0, 0)
        out += fmt.pack(*fields) + payload
    if draw(st.booleans()):
        out += fmt.pack(b"ENDB", 0, 0, 0, 0)
    data = bytes(out)
    squeeze = draw(st.sampled_from(["plain", "gzip", "zstd"]))
    if squeeze == "gzip":
        data = gzip.compress(data)
    elif squeeze == "zstd":
        data = zstandard.ZstdCompressor().compress(data)
    return draw(st.one_of(st.just(data), mutated(data)))


# PNG: the signature, IHDR, IDAT, IEND


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@st.composite
def png_files(draw: st.DrawFn) -> bytes:
    width, height = draw(st.integers(0, 5)), draw(st.integers(0, 5))
    if draw(st.booleans()):
        width, height = draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1))
    depth = draw(st.sampled_from([8, 16, 1, 0, 255]))
    color = draw(st.sampled_from([0, 2, 4, 6, 3, 7]))
    interlace = draw(st.sampled_from([0, 0, 1]))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, interlace)
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(color, 1)
    stride = min(width, 64) * channels * max(depth // 8, 1)
    rows = b"".join(
        bytes([draw(st.integers(0, 6))]) + draw(st.binary(min_size=stride, max_size=stride))
        for _ in range(min(height, 8))
    )
    idat = draw(st.one_of(st.just(zlib.compress(rows)), st.binary(max_size=40), st.just(b"")))
    chunks = [_chunk(b"IHDR", draw(st.one_of(st.just(ihdr), st.binary(max_size=16))))]
    chunks += [_chunk(b"IDAT", idat), _chunk(b"IEND", b"")]
    data = b"\x89PNG\r\n\x1a\n" + b"".join(chunks)
    return draw(st.one_of(st.just(data), mutated(data)))


# a rendered tile: PNG, or OpenEXR with its channel list


@st.composite
def tile_files(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(png_files())
    name = draw(st.binary(max_size=6).filter(lambda b: b"\x00" not in b))
    channels = b"channels\x00chlist\x00" + struct.pack("<I", 18) + name + b"\x00"
    channels += struct.pack("<i", draw(st.sampled_from([0, 1, 2, 3, -1])))
    data = b"\x76\x2f\x31\x01\x02\x00\x00\x00" + channels
    return draw(st.one_of(st.just(data), mutated(data), st.just(data[: draw(st.integers(0, 40))])))


receipts = st.one_of(
    messages(common_pb2.Receipt.DESCRIPTOR).map(lambda m: m.SerializeToString()),
    messages(common_pb2.ResultStatement.DESCRIPTOR).map(lambda m: m.SerializeToString()),
    messages(common_pb2.Validation.DESCRIPTOR).map(lambda m: m.SerializeToString()),
    st.binary(max_size=128),
)

INPUTS: dict[str, st.SearchStrategy[bytes]] = {
    "pt2": st.one_of(pt2_archives(), st.binary(max_size=64)),
    "safetensors": st.one_of(safetensors_files(), st.binary(max_size=64)),
    "blend": st.one_of(blend_files(), st.binary(max_size=64)),
    "png": st.one_of(png_files(), st.binary(max_size=64)),
    "tile_depth": st.one_of(tile_files(), st.binary(max_size=64)),
    "receipt": receipts,
}


# examples every run tries first: a good file of each kind, and the smallest inputs that
# found a bug so far (test_fuzz_findings.py)
_BROKEN_FRAME = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x02\x00\x00\x00\x02\x08\x02\x00\x00\x00"
    b"\xfd\xd4\x9as\x00\x00\x00\x04IDAT5\xaf\x06\x1e\x8f\x1b\x01\x95\x00\x00\x00\x00IEND\xaeB`\x82"
)
_NESTED = b"[" * 5000 + b"]" * 5000
EXAMPLES: dict[str, list[bytes]] = {
    "pt2": [PT2_SEED],
    "safetensors": [struct.pack("<Q", len(_NESTED)) + _NESTED],
    "blend": [b"BLENDER17-01v0500" + struct.pack("<4siQqq", b"ENDB", 0, 0, 0, 0)],
    "png": [_BROKEN_FRAME],
    "tile_depth": [b"", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"],
    "receipt": [b""],
}
