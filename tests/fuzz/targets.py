"""Fuzz targets for the parsers of bytes nobody vouches for: each takes bytes, and raises
only on a bug: an exception other than the parser's documented refusal (a crash), or a
hang. The CI tests (test_fuzz_*.py) feed them hypothesis examples; `scripts/fuzz` runs
them for minutes, under atheris (coverage-guided) when it is installed.

| target | parser | who hands it the bytes | refusal |
|---|---|---|---|
| pt2 | sparegrid.wire.pt2.inspect_pt2 | a client's model (SDK, coordinator, worker) | UnsafeProgram |
| safetensors | sparegrid.wire.tensors.read_header, header_of | a client's inputs, a node's outputs | BadTensors |
| blend | coordinator kinds.blendfile.blend_version | a client's scene | BlendError |
| png | coordinator services.images.decode_png, png_size | a node's rendered frame | ValueError |
| tile_depth | sdk.render._image_depth (PNG, OpenEXR) | a node's rendered tile | SparegridError |
| receipt | sparegrid.wire.receipt.verify_receipt, decode_statement, verify_countersignature | a coordinator's answer, a node's batch | BadSignature |
"""

import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path

from google.protobuf.message import DecodeError

from sparegrid.coordinator.kinds.blendfile import BlendError, blend_version
from sparegrid.coordinator.services.images import decode_png, png_size
from sparegrid.sdk.errors import SparegridError
from sparegrid.sdk.render import _image_depth
from sparegrid.v1 import common_pb2
from sparegrid.wire import BadSignature, Signer
from sparegrid.wire.pt2 import inspect_pt2
from sparegrid.wire.pt2zip import UnsafeProgram
from sparegrid.wire.receipt import (
    decode_statement,
    make_receipts,
    sign_batch,
    verify_countersignature,
    verify_receipt,
)
from sparegrid.wire.signing import VALIDATION_TAG
from sparegrid.wire.tensors import BadTensors, header_of, read_header

_SCRATCH = Path(tempfile.mkdtemp(prefix="sparegrid-fuzz-files-"))


def _file(data: bytes, name: str) -> Path:
    """The bytes as a file: the parsers read uploaded blobs from disk."""
    path = _SCRATCH / name
    path.write_bytes(data)
    return path


def pt2(data: bytes) -> None:
    with contextlib.suppress(UnsafeProgram):
        inspect_pt2(_file(data, "model.pt2"))


def safetensors(data: bytes) -> None:
    outcomes = []
    for parse in (lambda: read_header(_file(data, "x.safetensors")), lambda: header_of(data, "x")):
        try:
            outcomes.append(sorted(parse().items()))
        except BadTensors:
            outcomes.append(None)
    assert outcomes[0] == outcomes[1], "a file and the same bytes in memory read differently"


def blend(data: bytes) -> None:
    try:
        version = blend_version(_file(data, "scene.blend"))
    except BlendError:
        return
    major, _, minor = version.partition(".")
    assert major.isdigit() and minor.isdigit(), version


def png(data: bytes) -> None:
    try:
        width, _ = png_size(data)
    except ValueError:
        width = -1
    try:
        image = decode_png(data, rows=2, columns=2)
    except ValueError:
        return
    assert width >= 0, "decoded a PNG whose header png_size refused"
    assert image.shape[0] <= 2 and image.shape[1] <= 2


def tile_depth(data: bytes) -> None:
    for fmt in ("png", "exr"):
        try:
            depth = _image_depth(_file(data, f"tile.{fmt}"), fmt)
        except SparegridError:
            continue
        assert depth in (8, 16, 32), depth


_NODE = Signer.generate()
_COORDINATOR = Signer.generate()


def receipt(data: bytes) -> None:
    """The bytes as a receipt, and as the statement and the validation of receipts that
    are properly signed, so that the checks behind the signatures run on them too."""
    try:
        parsed = common_pb2.Receipt.FromString(data)
    except DecodeError:
        parsed = None
    statements = [data, b"another statement"]
    signed = make_receipts(statements, sign_batch(_NODE, statements), _NODE.public_key)[0]
    countersigned = common_pb2.Receipt()
    countersigned.CopyFrom(signed)
    countersigned.validation = data
    countersigned.coordinator_signature = _COORDINATOR.sign(VALIDATION_TAG, data)
    for check in (
        lambda: decode_statement(data),
        lambda: verify_receipt(parsed) if parsed is not None else None,
        lambda: verify_countersignature(parsed, _COORDINATOR.public_key) if parsed else None,
        lambda: verify_receipt(signed),
        lambda: verify_countersignature(countersigned, _COORDINATOR.public_key),
    ):
        with contextlib.suppress(BadSignature):
            check()


TARGETS: dict[str, Callable[[bytes], None]] = {
    "pt2": pt2,
    "safetensors": safetensors,
    "blend": blend,
    "png": png,
    "tile_depth": tile_depth,
    "receipt": receipt,
}
