"""`worker.memory.tune_allocator`: glibc's mmap threshold fixed, so a large block is mapped on
its own (and unmapped when freed) even after a bigger freed block would have raised glibc's
dynamic threshold. Read from glibc itself (`mallinfo2`: bytes in mmapped blocks) in a fresh
interpreter, not from RSS."""

from __future__ import annotations

import subprocess
import sys

import pytest

from worker.memory import _glibc, tune_allocator

pytestmark = pytest.mark.skipif(_glibc() is None, reason="glibc's allocator only")

# Prints how many bytes of mmapped blocks a 1 MiB allocation added, after an 8 MiB block was
# freed (which raises glibc's dynamic threshold above 1 MiB); argv[1] == "tune": tuned first.
_PROBE = """
import ctypes, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                              "usmblks", "fsmblks", "uordblks", "fordblks",
                                              "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "tune":
    from worker.memory import tune_allocator
    assert tune_allocator(environ={})
big = bytearray(8 << 20)
del big
before = libc.mallinfo2().hblkhd
block = bytearray(1 << 20)
print(libc.mallinfo2().hblkhd - before)
"""


def _mapped_by_a_1mib_block(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         check=True, timeout=60)  # fmt: skip
    return int(out.stdout)


def test_a_large_block_is_mapped_on_its_own_once_tuned() -> None:
    assert _mapped_by_a_1mib_block("tune") >= 1 << 20


def test_without_it_glibc_serves_the_block_from_the_heap() -> None:
    """The behaviour the tuning removes (glibc's default): the block lands in the heap, where
    it is kept after it is freed."""
    assert _mapped_by_a_1mib_block("default") == 0


def test_an_explicit_environment_setting_wins() -> None:
    assert tune_allocator(environ={"MALLOC_MMAP_THRESHOLD_": "65536"}) is False
