"""Reading what a child process sends the daemon, without trusting the child.

The child runs job code (inside the sandbox), so its frames may be forged. A plain
`pickle.loads` there would let a compromised child run code in the daemon, outside the
sandbox. This unpickler resolves only the dataclasses of `sparegrid.worker.slots.child.protocol`;
every other global (functions, `os.system`, builtins) is refused, so a frame can build
nothing but those plain records, lists, strings, bytes and numbers.
"""

import dataclasses
import io
import pickle
from typing import Any

from sparegrid.worker.slots.child import protocol

ALLOWED_MODULE = protocol.__name__  # follows the module wherever it moves


class ForgedFrame(ValueError):
    """A child sent a frame that names something other than the protocol's records."""


class _ProtocolUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = getattr(protocol, name, None) if module == ALLOWED_MODULE else None
        if isinstance(found, type) and dataclasses.is_dataclass(found):
            return found
        raise ForgedFrame(f"child frame refers to {module}.{name}, which is not allowed")


def decode_child_frame(payload: bytes) -> object:
    """Like protocol.decode_frame, for frames that come from a child process."""
    try:
        return _ProtocolUnpickler(io.BytesIO(payload)).load()
    except ForgedFrame:
        raise
    except Exception as exc:  # a truncated or nonsensical frame
        raise ForgedFrame(f"child frame does not decode: {exc}") from None
