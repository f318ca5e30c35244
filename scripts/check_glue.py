"""Execute chapter notebooks and check that every glued name their prose quotes is glued.

    python scripts/check_glue.py chapters/en/benefits.ipynb chapters/fr/benefits.ipynb
    GLUE_DUMP=1 python scripts/check_glue.py chapters/en/benefits.ipynb  # and print each value

Faster than the strict book build for one chapter: it reports the cell that raised, the names
the Markdown quotes (``{glue:text}`name```, ``{glue}`name```, ``{glue:figure}`` ...) that no
code cell glued, and the execution time of each notebook. Exits 1 on any problem.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

QUOTED = re.compile(r"\{glue(?::\w+)?\}`([A-Za-z0-9_]+)")
FIGURE = re.compile(r"```\{glue(?::figure)?\}\s+([A-Za-z0-9_]+)")


def glued_values(notebook) -> dict[str, str]:
    """Each glued name and its plain-text value."""
    values = {}
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:
                data = output.get("data", {})  # myst-nb keeps the value under its own mimetype
                text = [v for k, v in data.items() if k.endswith("text/plain")]
                values[name] = "".join(text[0]) if text else ""
    return values


def glued_names(notebook) -> set[str]:
    return set(glued_values(notebook))


def quoted_names(notebook) -> set[str]:
    text = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    return set(QUOTED.findall(text)) | set(FIGURE.findall(text))


def dump(notebook) -> None:
    """With GLUE_DUMP set, print every value glued so far."""
    if os.environ.get("GLUE_DUMP"):
        for name, value in glued_values(notebook).items():
            print(f"  {name} = {value}")


def check(path: Path) -> bool:
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    try:
        resources = {"metadata": {"path": path.parent}}
        NotebookClient(notebook, timeout=1800, resources=resources).execute()
    except CellExecutionError as error:
        dump(notebook)
        print(f"{path}: a cell raised after {time.perf_counter() - start:.0f} s\n{error}")
        return False
    dump(notebook)
    missing = sorted(quoted_names(notebook) - glued_names(notebook))
    print(f"{path}: executed in {time.perf_counter() - start:.1f} s", end="")
    print(f"; quoted but never glued: {missing}" if missing else "; every quoted name is glued")
    return not missing


if __name__ == "__main__":
    ok = [check(Path(p)) for p in sys.argv[1:]]
    sys.exit(0 if all(ok) else 1)
