"""Messages between the referee and its workers. FROZEN (meta-mode only).

A message is a JSON header, and for a tensor a second frame with its raw bytes, over a multiprocessing
Connection on a Unix socket pair; or, for the large logits of scoring, the bytes in a shared buffer (a
mapped file that the receiver copies them out of), which spares the socket gigabytes. Never pickle: a
worker runs the experiment's code, and the referee must not execute anything a worker sends it. What
arrives is checked: the header's size, the tensor's dtype (an allowed list), its shape against its byte
count, and the caller's own limit on the bytes.
"""

import json
import math
from multiprocessing import BufferTooShort
from multiprocessing.connection import Connection

MAX_HEADER_BYTES = 1 << 20
DTYPES = ("uint8", "float32", "float16", "bfloat16")  # torch's names; torch itself is imported where a tensor is


class WireError(ValueError):
    """A message that is not what the protocol allows."""


def send(conn: Connection, header: dict, tensor=None, buffer=None) -> None:
    """The header, and the tensor's bytes after it on the socket, or into `buffer` (a writable mmap)."""
    if tensor is None:
        conn.send_bytes(json.dumps(header).encode())
        return
    import torch

    t = tensor.detach().contiguous().cpu()
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in DTYPES:
        raise WireError(f"a {dtype} tensor cannot be sent: the dtypes are {', '.join(DTYPES)}")
    raw = t.reshape(-1).view(torch.uint8).numpy()
    described = {**header, "dtype": dtype, "shape": list(t.shape), "nbytes": raw.size, "in_buffer": buffer is not None}
    if buffer is not None:
        buffer[: raw.size] = raw.data
    conn.send_bytes(json.dumps(described).encode())
    if buffer is None and raw.size:
        conn.send_bytes(raw)


def recv(conn: Connection, max_tensor_bytes: int = 0, buffer=None) -> tuple[dict, object]:
    """The next message: its header, and its tensor (None without one), read from the socket or copied out of
    `buffer` when the sender put it there. EOFError when the other side is gone."""
    try:
        header = json.loads(conn.recv_bytes(MAX_HEADER_BYTES))
    except (OSError, ValueError) as e:  # (EOFError, the other side gone, is neither)
        raise WireError(f"a message that is not a JSON header: {e}") from e
    if not isinstance(header, dict) or not isinstance(header.get("op"), str):
        raise WireError(f"a header without an op: {str(header)[:200]}")
    if "nbytes" not in header:
        return header, None
    import torch

    name, shape, nbytes = header.get("dtype"), header.get("shape"), header.get("nbytes")
    dtype = getattr(torch, name) if name in DTYPES else None
    if dtype is None or not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in [nbytes, *shape]):
        raise WireError(f"a tensor of dtype {header.get('dtype')!r} and shape {shape!r}: not allowed")
    limit = max_tensor_bytes if buffer is None else min(max_tensor_bytes, len(buffer))
    if nbytes != math.prod(shape) * dtype.itemsize or nbytes > limit:
        raise WireError(f"a tensor of {nbytes} bytes for shape {shape} ({dtype}); at most {limit} expected")
    if not nbytes:
        return header, torch.empty(shape, dtype=dtype)
    if header.get("in_buffer"):
        if buffer is None:
            raise WireError("a tensor in a shared buffer, where none was agreed")
        data = bytearray(buffer[:nbytes])  # a copy: what the referee computes on, the sender can no longer change
    else:
        data = bytearray(nbytes)
        try:
            size = conn.recv_bytes_into(data)
        except (OSError, BufferTooShort) as e:
            raise WireError(f"a tensor's bytes are not the {nbytes} its header announced") from e
        if size != nbytes:
            raise WireError(f"a tensor's bytes are not the {nbytes} its header announced")
    return header, torch.frombuffer(data, dtype=torch.uint8).view(dtype).view(shape)
