"""Execute the book's notebooks several at a time, into the execution cache the build reads.

``jupyter-book build`` executes the notebooks it lacks in the cache one after the other. On a
machine of a few cores, most of a chapter's time is spent in small operations that keep one core
busy: on two cores, two notebooks side by side take about 1.4 times less wall time. This script
executes the notebooks of the table of contents that the cache lacks, ``--jobs`` at a time,
exactly as myst-nb would in ``cache`` mode (the same cache, working directory, timeout, and
error policy; the kernels on Unix sockets, see ``scripts/kernels.py``), and stores each result
where the build finds it, so the build that follows only reads them::

    python scripts/execute.py --jobs 2 en fr

A chapter of a later edition waits for its twin in the first one: the twins run the same
experiments, which the first computes and the second reads from the experiment cache.
A notebook that fails is reported with its traceback, and not cached; the script then exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from editions import BUILD, EDITIONS, edition_toc  # noqa: E402
from kernels import AsyncIPCKernelManager  # noqa: E402

CACHE = BUILD / ".jupyter_cache"  # the cache both editions' builds use (scripts/editions.py)


def notebooks(lang: str) -> list[Path]:
    """The notebooks of an edition, in the order of its table of contents."""
    toc = edition_toc(yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8")), lang)
    paths = [ROOT / f"{toc['root']}.ipynb"] + [ROOT / f"{c['file']}.ipynb" for c in toc["chapters"]]
    return [path for path in paths if path.is_file()]


def shown(path: Path) -> str:
    """A notebook's path as the reader typed it: relative to the book's root when under it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def execute(path: Path, timeout: int, allow_errors: bool) -> tuple[object, float, str | None]:
    """Run one notebook (in a worker process), as myst-nb's cache mode does."""
    from jupyter_cache.executors.utils import single_nb_execution

    notebook = nbformat.read(path, as_version=4)
    result = single_nb_execution(
        notebook,
        cwd=str(path.parent),
        allow_errors=allow_errors,
        timeout=timeout,
        meta_override=True,
        kernel_manager_class=AsyncIPCKernelManager,  # no TCP port to race for (scripts/kernels.py)
    )
    error = None if result.err is None else result.exc_string
    return notebook, result.time, error


def execute_all(
    todo: list[tuple[Path, Path | None]],
    cache_path: Path,
    jobs: int,
    timeout: int,
    allow_errors: bool = False,
) -> list[Path]:
    """Execute each ``(notebook, twin)`` of ``todo`` once its twin (``None``: nothing) is done,
    ``jobs`` at a time, and cache the notebooks that succeed in ``cache_path`` as myst-nb does.
    Returns the notebooks that failed (each reported with its traceback)."""
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    cache = get_cache(str(cache_path))
    todo = list(todo)
    pending = {path for path, _ in todo}
    failures = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        running = {}
        while todo or running:
            for path, twin in list(todo):
                if len(running) < jobs and twin not in pending:
                    todo.remove((path, twin))
                    running[pool.submit(execute, path, timeout, allow_errors)] = path
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                path = running.pop(future)
                pending.discard(path)
                notebook, seconds, error = future.result()
                where = shown(path)
                if error is not None:
                    failures.append(path)
                    print(f"FAILED {where} ({seconds:.0f} s)\n{error}", flush=True)
                    continue
                record = cache.add_nb_to_project(str(path))
                cache.cache_notebook_bundle(
                    CacheBundleIn(notebook, record.uri, data={"execution_seconds": seconds}),
                    check_validity=False,
                    overwrite=True,
                )
                print(f"executed {where} in {seconds:.1f} s", flush=True)
    return failures


def uncached(paths: list[Path], cache_path: Path) -> list[Path]:
    """The notebooks of ``paths`` that the cache does not hold with their current code."""
    from jupyter_cache import get_cache

    cache = get_cache(str(cache_path))
    missing = []
    for path in paths:
        try:
            cache.match_cache_notebook(nbformat.read(path, as_version=4))
        except KeyError:
            missing.append(path)
    return missing


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("editions", nargs="+", choices=list(EDITIONS))
    parser.add_argument("--jobs", type=int, default=2, help="notebooks run at once (default 2)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    execution = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))["execute"]
    # the kernels' own operations on one thread too, as the experiments' (bnlib.cache.THREADS):
    # two notebooks with two threads each on two cores run slower than one after the other
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    # each notebook waits for its twin in an earlier edition (same path under chapters/<lang>)
    first, twins, paths = {}, {}, []
    for lang in args.editions:
        for path in notebooks(lang):
            twin = first.setdefault(path.relative_to(ROOT / "chapters" / lang), path)
            twins[path] = None if twin == path else twin
            paths.append(path)
    todo = [(path, twins[path]) for path in uncached(paths, CACHE)]
    start = time.perf_counter()
    failures = execute_all(
        todo, CACHE, args.jobs, execution.get("timeout", 30), execution.get("allow_errors", False)
    )
    elapsed = time.perf_counter() - start
    names = ", ".join(shown(path) for path in failures)
    print(f"{len(failures)} failed: {names}" if failures else f"{len(todo)} executed", end="")
    print(f" in {elapsed:.0f} s, {args.jobs} at a time", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
