"""The experiment cache: each result computed once, and never served to the wrong question.

A result is stored under a key made of its configuration (joblib hashes the arguments) and of
everything else that changes the numbers an experiment computes:

- the source of every computing module of bnlib (all of them but the few that only draw or
  word figures, ``NOT_COMPUTING``): another version of the code never reuses a result;
- the versions of PyTorch and Python, the CPU kernels PyTorch chose (``ATEN_CPU_CAPABILITY``:
  AVX-512, AVX2 or the generic ones round differently), the device, the default dtype, the
  number of threads (the order of floating-point sums depends on it) and the seed offset.

Experiments also run with a fixed number of CPU threads, ``THREADS`` (one), whatever the machine.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from contextlib import contextmanager
from pathlib import Path

import joblib
import torch

from bnlib.seeds import seed_offset

__all__ = [
    "THREADS",
    "NOT_COMPUTING",
    "cache_dir",
    "computing_modules",
    "environment",
    "cache_key",
    "fixed_threads",
    "cached",
]

# Every cached experiment runs with this many CPU threads, whatever the machine. One: the small
# networks of the book keep one core busy with their many small operations, a second thread
# gains little, and on two cores the build can then run two notebooks side by side
# (scripts/execute.py) where two threads each would fight over the cores.
THREADS = 1

# Modules that only draw, word or glue what was computed: editing them retrains nothing.
NOT_COMPUTING = frozenset({"labels.py", "plots.py", "report.py"})

_PACKAGE = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """``$BNLIB_CACHE``; else ``_build/bnlib-cache`` in the book's checkout (``make clean`` empties
    it); else ``~/.cache/bnlib``."""
    if os.environ.get("BNLIB_CACHE"):
        return Path(os.environ["BNLIB_CACHE"])
    checkout = _PACKAGE.parent
    if (checkout / "_config.yml").is_file():
        return checkout / "_build" / "bnlib-cache"
    return Path.home() / ".cache" / "bnlib"


def computing_modules() -> list[Path]:
    """Every module of bnlib whose code can change a result: all ``*.py`` of the package but
    ``NOT_COMPUTING``, so a new module is covered without anyone listing it."""
    return sorted(p for p in _PACKAGE.glob("*.py") if p.name not in NOT_COMPUTING)


def environment() -> dict:
    """What, besides the code and the configuration, decides the numbers an experiment gets."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "dtype": str(torch.get_default_dtype()),
        "threads": THREADS,
        "seed_offset": seed_offset(),
    }


@functools.cache
def _source_digest() -> str:
    """A hash of the computing modules' source (read once: a running kernel keeps the code it
    imported)."""
    digest = hashlib.sha256()
    for path in computing_modules():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cache_key() -> str:
    """A hash of the computing modules' source and of ``environment()``: the name of the
    folder of the cache that holds this code's results on this machine."""
    digest = hashlib.sha256(_source_digest().encode())
    digest.update(json.dumps(environment(), sort_keys=True).encode())
    return digest.hexdigest()[:16]


@contextmanager
def fixed_threads(count: int = THREADS):
    """Run with ``count`` CPU threads: the order of floating-point sums depends on the thread
    count, and a run at the edge of stability can diverge with one and not the other."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _with_fixed_threads(experiment):
    @functools.wraps(experiment)
    def wrapped(config):
        with fixed_threads():
            return experiment(config)

    return wrapped


@functools.cache
def _memory(folder: Path) -> joblib.Memory:
    return joblib.Memory(folder, verbose=0)


def cached(experiment):
    """``experiment`` (a function of one configuration), memoised on disk under ``cache_key()``
    and run with ``THREADS`` threads. The key is computed at each call, so changing the seed
    offset in a running kernel reads and writes another folder."""
    return _memory(cache_dir() / cache_key()).cache(_with_fixed_threads(experiment))
