"""Loaded by every pytest run under the book (the unit tests, ``--nbval-lax`` on the chapters).

nbval starts each notebook's kernel on TCP ports; two xdist workers starting kernels at once can
race for one (see ``scripts/kernels.py``). Its kernels listen on Unix sockets of their own instead.
"""

import sys
from pathlib import Path

import nbval.kernel

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))

from kernels import IPCKernelManager  # noqa: E402

nbval.kernel.KernelManager = IPCKernelManager
