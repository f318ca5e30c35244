"""Kernels that talk to their client through Unix sockets in a folder of their own.

jupyter_client starts a kernel on TCP ports it picked by binding port 0 and letting it go. When
several kernels start at once (``scripts/execute.py --jobs 2``, ``pytest --nbval-lax -n 2``),
another process can take such a port in between, and the kernel dies on start with "ZMQError:
Address already in use"; its notebook then fails after a minute of "Kernel didn't respond"
(a known race: nteract/papermill#511). A kernel on the ``ipc`` transport, in a fresh folder,
uses no port at all, so there is nothing to race for.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager, KernelManager


class _PrivateSockets:
    """Sets the ``ipc`` transport, its sockets in a temporary folder, removed at shutdown."""

    def __init__(self, **kwargs):
        self._socket_folder = tempfile.mkdtemp(prefix="bnlib-kernel-")
        kwargs.setdefault("transport", "ipc")
        kwargs.setdefault("ip", str(Path(self._socket_folder) / "kernel"))
        super().__init__(**kwargs)

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        # what shutdown_kernel calls, in both managers
        await super()._async_cleanup_resources(restart=restart)
        if not restart:
            shutil.rmtree(self._socket_folder, ignore_errors=True)


class IPCKernelManager(_PrivateSockets, KernelManager):
    """A ``KernelManager`` whose kernel listens on Unix sockets of its own (nbval's)."""


class AsyncIPCKernelManager(_PrivateSockets, AsyncKernelManager):
    """An ``AsyncKernelManager`` whose kernel listens on Unix sockets of its own (nbclient's)."""
