"""Early shedding: the tokenizer refuses work the model step's queue could not serve in time.

Under overload the model step is the bottleneck, but every arrival is tokenized first: at 4x
capacity most of the tokenizer's CPU went to requests that the model's queue later rejected,
and on a CPU node that CPU is the model's (docs/overload.md). Triton 2.51 cannot refuse an
ensemble request at the door for a full downstream queue, so the two python steps share one
measurement instead:

- the tokenizer stamps each request with the time it left (``tokenized_at_ns``, a monotonic
  clock that every process of the machine shares);
- the model step, when it dequeues requests, publishes when the queue it sees would clear: now
  plus the shortest wait among the requests it just took (a standing queue, as CoDel reads it);
- the tokenizer, before tokenizing, reads how long a request sent on now would wait, and
  refuses the request at once (UNAVAILABLE) when that wait is over a share of the request's
  own timeout: it would be dropped from the model's queue, or answered after its caller left.

The estimate runs down as time passes without a new measurement, so a quiet model step (nothing
dequeued because everything was refused) reopens admission by itself. The measurement lives in
8 bytes of a shared file, one per server and repository; anything wrong with the file turns
early shedding off, never the step.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
import tempfile
import time
from pathlib import Path

TOKENIZED_AT = "tokenized_at_ns"
"""Tensor from the tokenizer to the model step: when the request left the tokenizer (ns, monotonic)."""
SHED_MESSAGE = "shed before tokenizing"
"""Words of an early shed's error; the client counts an UNAVAILABLE with them as a shed."""
_PREFIX = "reranker-queue-wait-"
_SLOT = struct.Struct("<q")


def signal_path(repository: str, directory: str | None = None) -> Path:
    """The shared file of one Triton server and model repository.

    Both python steps' stubs are children of the same ``tritonserver`` process, so its pid and
    the repository name the file; ``/dev/shm`` (where the python backend keeps its own shared
    memory) when it exists, else the temp directory.
    """
    if directory is None:
        directory = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    key = hashlib.sha256(os.path.realpath(repository).encode()).hexdigest()[:16]
    return Path(directory or tempfile.gettempdir()) / f"{_PREFIX}{os.getppid()}-{key}"


def remove_stale_signals(directory: Path) -> None:
    """Delete the files of servers that are gone (their pid no longer runs)."""
    for path in directory.glob(f"{_PREFIX}*"):
        pid = path.name.removeprefix(_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            path.unlink(missing_ok=True)


class QueueWait:
    """The model step's queue wait, written by the model step and read by the tokenizer."""

    def __init__(self, path: Path) -> None:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(descriptor).st_size < _SLOT.size:
                os.ftruncate(descriptor, _SLOT.size)
            self._map: mmap.mmap | None = mmap.mmap(descriptor, _SLOT.size)
        finally:
            os.close(descriptor)

    def publish(self, dequeued_at_ns: int, waits_ns: list[int]) -> None:
        """Requests just dequeued at ``dequeued_at_ns`` had waited ``waits_ns``."""
        if self._map is not None and waits_ns:
            _SLOT.pack_into(self._map, 0, dequeued_at_ns + max(0, min(waits_ns)))

    def expected_wait_s(self, now_ns: int | None = None) -> float:
        """How long a request sent to the model step now would wait, by the last measurement."""
        if self._map is None:
            return 0.0
        (clears_at_ns,) = _SLOT.unpack_from(self._map, 0)
        now = time.monotonic_ns() if now_ns is None else now_ns
        return max(0, clears_at_ns - now) / 1e9

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


def shed_reason(expected_wait_s: float, timeout_s: float, share: float) -> str | None:
    """Why to refuse a request before tokenizing it, or ``None`` to admit it.

    ``timeout_s`` is the request's own timeout (the one Triton's queues drop it at); ``share``
    of it is what the model step's queue may take. ``share`` 0 never refuses.
    """
    if share <= 0 or timeout_s <= 0 or expected_wait_s <= share * timeout_s:
        return None
    return (
        f"{SHED_MESSAGE}: the model step's queue wait ({expected_wait_s:.3g} s) is over "
        f"{share:g} of the request's {timeout_s:g} s timeout"
    )
