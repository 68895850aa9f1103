"""What fuzzing found, one regression test each (the smallest input it found, or one
written to the same effect)."""

import io
import struct
import zipfile
import zlib
from pathlib import Path

import grpc
import pytest

from sparegrid.coordinator.services.images import decode_png
from sparegrid.sdk.errors import SparegridError
from sparegrid.sdk.render import _image_depth
from sparegrid.v1 import client_pb2
from sparegrid.wire.pt2 import check_archive, inspect_pt2
from sparegrid.wire.pt2zip import UnsafeProgram
from sparegrid.wire.tensors import BadTensors, header_of
from tests.fuzz.harness import started
from tests.fuzz.inputs import PT2_SEED


def _deflated_with_a_broken_entry(entry: str) -> bytes:
    """The seed archive, deflated, with `entry`'s compressed bytes broken (its CRC and
    sizes still as declared)."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(PT2_SEED)) as seed,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive,
    ):
        for info in seed.infolist():
            archive.writestr(info.filename, seed.read(info))
    data = bytearray(out.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = archive.getinfo(f"tiny/{entry}")
    header = info.header_offset
    name_length, extra_length = struct.unpack("<HH", data[header + 26 : header + 30])
    start = header + 30 + name_length + extra_length
    data[start : start + 8] = b"\xff" * 8  # an invalid deflate block
    return bytes(data)


def test_a_pt2_entry_whose_deflate_stream_is_broken_is_refused(tmp_path: Path) -> None:
    """zlib.error escaped the checker (found by the pt2 target)."""
    path = tmp_path / "broken.pt2"
    path.write_bytes(_deflated_with_a_broken_entry("models/model.json"))
    with pytest.raises(UnsafeProgram, match="cannot be read"):
        inspect_pt2(path)


def test_the_worker_refuses_a_payload_whose_deflate_stream_is_broken(tmp_path: Path) -> None:
    """The same, in the copy the worker loads: payloads are read only then."""
    pytest.importorskip("torch")
    from sparegrid.worker.executors.inference.loader import sanitized_copy

    data = _deflated_with_a_broken_entry("data/weights/weight_0")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        checked = check_archive(archive, len(data))  # payloads are checked by size only
        with pytest.raises(UnsafeProgram, match="cannot be read"):
            sanitized_copy(archive, checked, tmp_path / "clean.pt2")


def test_a_safetensors_header_nested_past_the_stack_is_refused() -> None:
    """RecursionError escaped the header parser (found by the safetensors target)."""
    header = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(BadTensors, match="not JSON"):
        header_of(struct.pack("<Q", len(header)) + header, "x")


@pytest.mark.parametrize(
    ("fmt", "data"),
    [
        ("png", b""),  # IndexError
        ("png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),  # IndexError: cut short
        ("png", b"\x91\xd0\xeaqq\xf7\xb3av\x9c\xc9\x08\x892#fC\xeb\x1b\xe9\x00\x04\xe2"),  # 233
        ("exr", b"channels\x00chlist\x00\x12\x00\x00\x00R"),  # ValueError: no NUL
        ("exr", b"\x76\x2f\x31\x01channels\x00chlist\x00\x12\x00\x00\x00R\x00\x07\x00\x00\x00"),
    ],
)
def test_a_broken_tile_is_refused_not_guessed(tmp_path: Path, fmt: str, data: bytes) -> None:
    """A node's tile: the SDK read a depth out of any bytes, or crashed (found by the
    tile_depth target)."""
    path = tmp_path / f"tile.{fmt}"
    path.write_bytes(data)
    with pytest.raises(SparegridError) as err:
        _image_depth(path, fmt)
    assert err.value.code == "BAD_TILE"


def _png(idat: bytes, depth: int = 8) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", 2, 2, depth, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("depth", [8, 16])  # Pillow's path, and the exact 16-bit one
def test_a_frame_whose_pixels_do_not_inflate_is_a_value_error(depth: int) -> None:
    with pytest.raises(ValueError, match="does not"):
        decode_png(_png(b"5\xaf\x06\x1e", depth))


def test_a_refusal_that_echoes_a_huge_value_keeps_its_status_and_code() -> None:
    """A 70,000-character job id came back in the status message: the trailers outgrew what
    a client accepts, and it saw RESOURCE_EXHAUSTED without the stable code (found by the
    RPC fuzzing); the message is cut short instead."""
    server, tmp = started()
    try:
        with pytest.raises(grpc.RpcError) as err:
            server.stubs["ClientService"].GetJob(
                client_pb2.GetJobRequest(job_id="a" * 70_000),
                metadata=server.auth("alice"),
                timeout=10,
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        trailers = dict(err.value.trailing_metadata() or ())  # type: ignore[attr-defined]
        assert trailers["sparegrid-code"] == "JOB_NOT_FOUND"
        assert (err.value.details() or "").endswith("(cut short)")  # type: ignore[attr-defined]
    finally:
        server.stop()
        tmp.cleanup()


def _central_entry_edited(offset: int, value: bytes) -> bytes:
    """The seed archive with bytes at `offset` of its first central directory entry set
    (the seed holds another zip, torch's sample inputs: search from the directory)."""
    data = bytearray(PT2_SEED)
    with zipfile.ZipFile(io.BytesIO(PT2_SEED)) as seed:
        at = seed.start_dir  # type: ignore[attr-defined]
    data[at + offset : at + offset + len(value)] = value
    return bytes(data)


# the first name flagged UTF-8 (general purpose bit 11), its first byte made invalid
_NOT_UTF8 = bytearray(_central_entry_edited(8, b"\x00\x08"))
_NOT_UTF8[zipfile.ZipFile(io.BytesIO(PT2_SEED)).start_dir + 46] = 0x87  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "data",
    [_central_entry_edited(6, b"\xff"), bytes(_NOT_UTF8)],
    ids=["zip-version", "name-not-utf8"],
)
def test_an_archive_zipfile_cannot_open_is_refused(tmp_path: Path, data: bytes) -> None:
    """NotImplementedError (a zip version it does not know) and UnicodeDecodeError escaped
    the check at open (found by the pt2 target under atheris, scripts/fuzz)."""
    path = tmp_path / "model.pt2"
    path.write_bytes(data)
    with pytest.raises(UnsafeProgram, match=r"not a \.pt2"):
        inspect_pt2(path)
