"""scripts/execute.py: notebooks executed side by side into the cache the book's build reads."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat
from jupyter_cache import get_cache

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("execute", ROOT / "scripts/execute.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["execute"] = module
    spec.loader.exec_module(module)
    return module


def write_notebook(path: Path, *sources: str) -> Path:
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook = nbformat.v4.new_notebook(metadata={"kernelspec": kernelspec})
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path


def test_twins_wait_for_each_other_failures_are_reported_and_only_successes_cached(
    tmp_path, capsys
):
    execute = load_script()
    # the English notebook writes its result late; its French twin reads it: it must wait
    english = write_notebook(
        tmp_path / "en/a.ipynb",
        "import time; time.sleep(2)",
        "open('result.txt', 'w').write('42')",
    )
    french = write_notebook(tmp_path / "fr/a.ipynb", "print(open('../en/result.txt').read())")
    broken = write_notebook(tmp_path / "en/b.ipynb", "raise ValueError('this notebook fails')")
    cache_path = tmp_path / "cache"
    todo = [(english, None), (broken, None), (french, english)]

    failures = execute.execute_all(todo, cache_path, jobs=3, timeout=60)

    assert failures == [broken]
    report = capsys.readouterr().out
    assert f"FAILED {broken}" in report and "raise ValueError('this notebook fails')" in report
    assert execute.uncached([english, french, broken], cache_path) == [broken]
    # what myst-nb's cache mode finds for the French source: its outputs, from its working folder
    _, merged = get_cache(str(cache_path)).merge_match_into_notebook(
        nbformat.read(french, as_version=4)
    )
    assert merged.cells[0].outputs[0]["text"] == "42\n"


def test_the_kernels_listen_on_unix_sockets_of_their_own_not_on_tcp_ports(tmp_path):
    execute = load_script()
    # what the kernel itself was told, read from its connection file
    notebook = write_notebook(
        tmp_path / "en/transport.ipynb",
        "import json; from ipykernel import get_connection_file\n"
        "info = json.load(open(get_connection_file()))\n"
        "print(info['transport'], info['ip'])",
    )
    executed, _, error = execute.execute(notebook, timeout=60, allow_errors=False)
    assert error is None
    transport, ip = executed.cells[0].outputs[0]["text"].split()
    assert transport == "ipc" and Path(ip).name == "kernel"
    assert not Path(ip).parent.exists()  # its folder goes with the kernel


def test_nbval_kernels_listen_on_unix_sockets_too():
    import nbval.kernel

    manager, client = nbval.kernel.start_new_kernel(startup_timeout=60)
    try:
        assert manager.transport == "ipc"
        client.execute_interactive("x = 6 * 7", timeout=30)
        reply = client.execute_interactive("x", timeout=30, user_expressions={"x": "x"})
        assert reply["content"]["user_expressions"]["x"]["data"]["text/plain"] == "42"
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert not Path(manager.ip).parent.exists()


def test_the_book_notebooks_come_in_table_of_contents_order_french_after_english():
    execute = load_script()
    english, french = execute.notebooks("en"), execute.notebooks("fr")
    assert [p.name for p in english] == [p.name for p in french]
    assert english[0].name == "what-is-it.ipynb" and all(p.suffix == ".ipynb" for p in english)
    assert all(p.is_file() for p in english + french)
