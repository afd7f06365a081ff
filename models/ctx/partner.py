"""A second process for the coder (``coder.encode_tile`` and ``coder.decode_tile`` with two
threads): memory shared with it, and a forked process that runs the tasks it is sent, in
order, and answers each.

Two threads of one Python process gain at most about 1.3x on the coder's many small numpy
operations, as they queue for the interpreter lock; two processes gain 1.9x
(``eval/results/lossless/explore.md``, "Two threads in one process"). All of the decoder's
work on a step but its range decoding is per sample, so a forked process works the second
half of each big step's samples into arrays it shares with the decoding process
(:func:`shared`), which works the first half. The encoder's second process fits every other
pass, its answers the fitted steps (:func:`pack`). Forked, the process starts with everything
the coder had (the tables, the samples coded so far); what it makes later reaches the coder
only through the shared arrays and its answers. Linux only, and only from a process's only
Python thread (:func:`available`): elsewhere a fork may not be safe with the libraries loaded.
"""

from __future__ import annotations

import builtins
import contextlib
import math
import mmap
import os
import struct
import sys
import threading
from typing import Callable

import numpy as np

ENDED = "the coder's second process ended unexpectedly"
PIPE_BYTES = 1 << 20  # each pipe's buffer, where the system allows it: the encoder's second
# process writes a fitted step (tens to hundreds of kB) and goes on while it waits there


def available() -> bool:
    """Whether :class:`Partner` can run here, now: on Linux, when the calling thread is the
    process's only Python thread. A fork while another thread is inside a multithreaded BLAS
    call hangs that call (OpenBLAS stops its thread pool when the process forks:
    ``explore.md``, "Decoder in two processes"), and which library another thread is in
    cannot be known; with the caller alone, none is."""
    return sys.platform.startswith("linux") and hasattr(os, "fork") \
        and threading.active_count() == 1


def shared(shape: tuple[int, ...], dtype: type = np.float64) -> np.ndarray:
    """A zeroed array in anonymous shared memory: a process forked after it is made reads
    and writes the same memory (its pages are taken when first written)."""
    count = int(np.prod(shape))
    buffer = mmap.mmap(-1, max(1, count * np.dtype(dtype).itemsize))
    return np.frombuffer(buffer, dtype, count).reshape(shape)


class Partner:
    """A forked process that runs ``work(task, data)`` for each task :meth:`ask` sends, in the
    order asked, and answers each with what it returned (:meth:`wait`, in the same order). An
    error in it is raised by :meth:`wait`; it ends when :meth:`close` is called or the asking
    process goes (its pipe closes)."""

    def __init__(self, work: Callable[[int, bytes], bytes | None]) -> None:
        import fcntl  # Unix only, as is the fork (:func:`available`)

        down_read, self.down = os.pipe()
        self.up, up_write = os.pipe()
        for fd in self.down, up_write:
            with contextlib.suppress(OSError, AttributeError):  # the system's default then
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        try:
            self.pid = os.fork()
        except OSError:
            for fd in (down_read, self.down, self.up, up_write):
                os.close(fd)
            raise
        if self.pid == 0:  # the partner: never returns
            status = 1
            try:
                os.close(self.down)
                os.close(self.up)
                _serve(work, down_read, up_write)
                status = 0
            finally:
                os._exit(status)  # no exit handlers, no buffers of the parent's flushed
        os.close(down_read)
        os.close(up_write)

    def ask(self, task: int, data: bytes = b"") -> None:
        """Queue ``work(task, data)`` in the partner. If the partner has ended (a task asked
        earlier failed, and its error is waiting among the answers), that error is raised."""
        try:
            _write(self.down, struct.pack("<qq", task, len(data)) + data)
            return
        except BrokenPipeError:
            pass
        while True:  # the answers it left: its error, else the end of them (ENDED)
            self.wait()

    def wait(self) -> bytes:
        """Wait for the earliest task not yet waited for; its answer, or its error raised."""
        head = _read(self.up, 9)
        if len(head) < 9:
            raise RuntimeError(ENDED)
        failed, size = struct.unpack("<?q", head)
        answer = _read(self.up, size)
        if len(answer) < size:
            raise RuntimeError(ENDED)
        if failed:
            raise _error(answer.decode(errors="replace"))
        return answer

    def close(self) -> None:
        """End the partner (at once, whatever it is doing) and wait for it."""
        os.close(self.down)
        os.close(self.up)
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)

    def __enter__(self) -> Partner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read(fd: int, size: int) -> bytes:
    """``size`` bytes from ``fd``, fewer only at its end."""
    out = b""
    while len(out) < size:
        part = os.read(fd, size - len(out))
        if not part:
            break
        out += part
    return out


def _write(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd``."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _error(text: str) -> BaseException:
    """The partner's error (its type's name, a line break, its message) as the asking process
    raises it: the built-in exception of that name (ValueError of a damaged payload,
    MemoryError, KeyboardInterrupt), anything else as a RuntimeError naming it. Text, not a
    pickle: nothing sent between the processes is unpickled."""
    name, _, message = text.partition("\n")
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, BaseException):
        return kind(message)
    return RuntimeError(f"{name} in the coder's second process: {message}")


def _serve(work: Callable[[int, bytes], bytes | None], down: int, up: int) -> None:
    """The partner's loop: each task asked, ``work(task, data)``, then its answer; an error
    is sent (:func:`_error`) and ends the loop."""
    while len(asked := _read(down, 16)) == 16:
        task, size = struct.unpack("<qq", asked)
        data = _read(down, size)
        if len(data) < size:
            return
        try:
            answer = work(task, data) or b""
        except BaseException as error:  # noqa: BLE001 - the asking process raises it
            message = f"{type(error).__name__}\n{error}".encode()
            _write(up, struct.pack("<?q", True, len(message)) + message)
            return
        _write(up, struct.pack("<?q", False, len(answer)) + answer)


NUMBERS = [np.dtype(t) for t in ("?", "<i1", "<i2", "<i4", "<i8", "<u1", "<u2", "<u4", "<u8",
                                  "<f4", "<f8")]  # the types :func:`pack` takes, by their number
_NUMBER = {kind: k for k, kind in enumerate(NUMBERS)}


def pack(arrays: list[np.ndarray]) -> bytes:
    """Arrays of numbers (:data:`NUMBERS`) as bytes for :func:`unpack`, with no pickle: what
    the encoder's second process answers. One int64 head (the count, then each array's type
    number, dimensions and shape), then each array's data."""
    arrays = [np.asarray(a, order="C") for a in arrays]  # (a 0-d array stays one)
    head = [len(arrays)]
    for a in arrays:
        if a.dtype not in _NUMBER:
            raise ValueError(f"only arrays of numbers are packed, not {a.dtype}")
        head += [_NUMBER[a.dtype], a.ndim, *a.shape]
    return b"".join([struct.pack("<q", len(head)), np.array(head, "<i8").tobytes(),
                     *(a.tobytes() for a in arrays)])


def unpack(data: bytes) -> list[np.ndarray]:
    """The arrays :func:`pack` made ``data`` of: read-only views of it."""
    (size,) = struct.unpack_from("<q", data)
    head = np.frombuffer(data, "<i8", size, 8).tolist()
    at, k, out = 8 + 8 * size, 1, []
    for _ in range(head[0]):
        number, ndim = head[k], head[k + 1]
        if not 0 <= number < len(NUMBERS):
            raise ValueError("only arrays of numbers are unpacked")
        kind, shape = NUMBERS[number], head[k + 2:k + 2 + ndim]
        k += 2 + ndim
        count = math.prod(shape)
        out.append(np.frombuffer(data, kind, count, at).reshape(shape))
        at += count * kind.itemsize
    return out
