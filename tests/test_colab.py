"""A chapter run as a reader runs it on Colab: outside the checkout, bnlib installed by the
chapter's own first cell from a built wheel (not the editable install), with the dependencies
already there (pip must not reinstall torch), in an empty working directory, the data found (or
downloaded) where a reader's copy of bnlib looks for it.

What stands in for Colab: a Python environment of its own that already has the book's
dependencies (Colab has torch, torchvision and matplotlib) but not bnlib, a ``google.colab`` module
imported before the first cell (as on Colab), and the first cell's ``%pip install`` pointed at the
wheel instead of GitHub (this machine has no network).
"""

import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "chapters" / "en" / "method.ipynb"  # short, and it trains on the real data
INSTALL = re.compile(r'%pip install -q "bnlib @ git\+https://[^"]+"')

RUN = """
import sys
import nbformat
from nbclient import NotebookClient

notebook = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(notebook, timeout=900, kernel_name="python3",
               resources={"metadata": {"path": sys.argv[2]}}).execute()
nbformat.write(notebook, sys.argv[1])
"""


def colab_like_environment(tmp_path: Path) -> Path:
    """A fresh environment that sees the book's dependencies (the checkout's site-packages as a
    plain path: its editable bnlib finder is not loaded) and has no bnlib of its own."""
    env = tmp_path / "env"
    subprocess.run([sys._base_executable, "-m", "venv", str(env)], check=True)
    python = env / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    dependencies = sysconfig.get_paths()["purelib"]
    Path(purelib, "book_dependencies.pth").write_text(dependencies + "\n")
    return python


def build_wheel(tmp_path: Path) -> Path:
    """bnlib's wheel, built from a copy of what the wheel is made of (building in the checkout
    would leave a build/ folder there)."""
    source, dist = tmp_path / "source", tmp_path / "dist"
    shutil.copytree(ROOT / "bnlib", source / "bnlib", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(dist), str(source)],
        check=True,
    )
    (wheel,) = dist.glob("bnlib-*.whl")
    return wheel


def colab_notebook(wheel: Path) -> dict:
    """The chapter with its install pointed at the wheel, and a last cell that reports where bnlib
    and its data and cache came from."""
    notebook = json.loads(CHAPTER.read_text(encoding="utf-8"))
    first = notebook["cells"][[c["cell_type"] for c in notebook["cells"]].index("code")]
    source = "".join(first["source"])
    assert INSTALL.search(source), "the first code cell no longer installs bnlib from GitHub"
    first["source"] = INSTALL.sub(f'%pip install -q "{wheel}"', source)
    report = (
        "import json, bnlib, bnlib.cache, bnlib.data\n"
        "print(json.dumps({'bnlib': bnlib.__file__, 'data': str(bnlib.data.default_root()),"
        " 'cache': str(bnlib.cache.cache_dir())}))"
    )
    cell = {"cell_type": "code", "id": "report", "metadata": {}, "source": report}
    notebook["cells"].append(cell | {"outputs": [], "execution_count": None})
    return notebook


@pytest.mark.skipif(not hasattr(sys, "_base_executable"), reason="needs a venv-capable Python")
def test_a_chapter_runs_as_on_colab_from_a_wheel_in_an_empty_directory(tmp_path):
    python = colab_like_environment(tmp_path)
    wheel = build_wheel(tmp_path)
    workdir = tmp_path / "content"  # Colab's working directory: nothing of the book in it
    workdir.mkdir()
    home = tmp_path / "home"
    startup = home / ".ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    # Colab has imported google.colab before the reader's first cell runs
    (startup / "00-colab.py").write_text(
        "import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')\n"
    )
    notebook_path = workdir / CHAPTER.name
    notebook_path.write_text(json.dumps(colab_notebook(wheel)), encoding="utf-8")
    (tmp_path / "run.py").write_text(RUN)
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("BNLIB_", "PYTHON", "JUPYTER", "IPYTHON", "VIRTUAL_ENV"))
    }
    environment |= {"HOME": str(home), "PATH": f"{python.parent}:{os.environ['PATH']}"}
    completed = subprocess.run(
        [str(python), str(tmp_path / "run.py"), str(notebook_path), str(workdir)],
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    cells = json.loads(notebook_path.read_text(encoding="utf-8"))["cells"]
    install = next(c for c in cells if c["cell_type"] == "code")
    assert "error" not in json.dumps(install["outputs"]).lower()
    report = json.loads("".join(cells[-1]["outputs"][0]["text"]))
    installed = Path(report["bnlib"]).resolve()
    assert Path(site.getsitepackages()[0]).resolve() not in installed.parents
    assert ROOT not in installed.parents, f"bnlib came from the checkout: {installed}"
    assert tmp_path in installed.parents, f"bnlib did not come from the wheel: {installed}"
    assert Path(report["data"]) == Path("data")  # the reader's ./data, next to the notebook
    assert (workdir / "data").is_dir()
    assert Path(report["cache"]) == home / ".cache" / "bnlib"
    errors = [o for c in cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert errors == []
    shutil.rmtree(tmp_path / "env")  # 1 file per dependency: keep pytest's tmp folder small
