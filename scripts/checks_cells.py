"""Put the chapters' plumbing behind a "Checks" / "Vérifications" toggle.

A chapter's code cells teach; the lines that only glue numbers into the prose (``glue``,
``glue_values``, ``glue_interval``) or assert its claims are the proof, kept one click away. This
script finds, in every code cell, the statements that only glue or assert (with the comments above
them) and moves those it can move without changing what runs (``plan``) to a cell of its own,
right after, with the same id plus ``-checks``, in both twins at once; a cell that is all plumbing
is only tagged. Such
cells carry the ``hide-input`` tag and the toggle's words in their language
(``mystnb.code_prompt_show``). ``tests/test_book.py`` checks that no cell is left to split.

    python scripts/checks_cells.py          # split and tag, in place, and print the counts
    python scripts/checks_cells.py --count  # only print the visible code lines per chapter

A cell is not split where its last teaching statement would become an expression it does not
display today (a figure, ``Code(...)``).
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "chapters"
GLUE = frozenset({"glue", "glue_values", "glue_interval"})
TAG = "hide-input"
WORDS = {  # the toggle's words: shown, then hidden (French: a no-break space before the colon)
    "en": ("Checks: the numbers quoted and the claims asserted", "Hide the checks"),
    "fr": (
        "Vérifications\u00a0: les nombres cités et les affirmations vérifiées",
        "Masquer les vérifications",
    ),
}


def _calls(node: ast.AST | None, names) -> bool:
    """Whether ``node`` is a call of one of the functions ``names``, by their plain names."""
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names


def is_plumbing(statement: ast.stmt) -> bool:
    """Whether a statement only glues or asserts: an ``assert``, a call of a glue function (its
    result possibly named, for a later assert), or a loop made of such statements."""
    if isinstance(statement, ast.Assert):
        return True
    if isinstance(statement, ast.Expr | ast.Assign | ast.AnnAssign):
        return _calls(statement.value, GLUE)
    if isinstance(statement, ast.For) and not statement.orelse:
        return all(is_plumbing(s) for s in statement.body)
    return False


def _tree(source: str) -> ast.Module | None:
    if any(line.lstrip().startswith(("%", "!")) for line in source.split("\n")):
        return None  # IPython lines: the Colab install cell, never plumbing
    return ast.parse(source)


def all_plumbing(source: str) -> bool:
    """Whether every statement of a cell only glues or asserts."""
    tree = _tree(source)
    return tree is not None and bool(tree.body) and all(is_plumbing(s) for s in tree.body)


def _loads(statement: ast.stmt) -> set[str]:
    return {n.id for n in ast.walk(statement) if isinstance(n, ast.Name)}


def _changes(statement: ast.stmt) -> set[str]:
    """The names a statement binds or may change in place (``x = ``, ``x[i] = ``, ``x += ``,
    ``x.append(...)``)."""
    changed = set()
    for node in ast.walk(statement):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            changed.add(node.id)
        elif isinstance(node, ast.Subscript | ast.Attribute) and isinstance(
            node.ctx, ast.Store | ast.Del
        ):
            base = node.value
            while isinstance(base, ast.Subscript | ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name):
                changed.add(base.id)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if isinstance(node.func.value, ast.Name):  # a method may change its object
                changed.add(node.func.value.id)
    return changed


def _data(statement: ast.stmt) -> set[str]:
    """The names a statement reads as data (not the functions it calls)."""
    called = {
        n.func.id
        for n in ast.walk(statement)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    return _loads(statement) - called


def plan(source: str) -> tuple[list[int], list[int]] | None:
    """The cell's statements split in two, ``(teaching, checks)`` (indices, in order), the checks
    to run after the rest, without changing what runs:

    - an assert that guards what follows (a later statement reads its data) stays in place, so
      that a failure still stops the cell there, with its message;
    - a check moves only if no later teaching statement changes what it reads or reads what it
      binds; one that cannot move stays too.

    ``teaching`` is empty for a cell that is all plumbing. None: nothing moves (see the module).
    """
    tree = _tree(source)
    if tree is None or not tree.body:
        return None
    body = tree.body
    stays = {i for i, s in enumerate(body) if not is_plumbing(s)}
    for i, statement in enumerate(body):
        later = [body[j] for j in stays if j > i]
        if isinstance(statement, ast.Assert) and any(_data(statement) & _data(s) for s in later):
            stays.add(i)
    moved_one = True
    while moved_one:
        moved_one = False
        for i in sorted(set(range(len(body))) - stays):
            later = [body[j] for j in stays if j > i]
            if any(_loads(body[i]) & _changes(s) or _changes(body[i]) & _loads(s) for s in later):
                stays.add(i)
                moved_one = True
    teaching = sorted(stays)
    checks = sorted(set(range(len(body))) - stays)
    if not checks:
        return None
    if teaching:
        last = body[teaching[-1]]
        shown = isinstance(last, ast.Expr) and not _calls(last.value, {"print"})
        if shown and teaching[-1] != len(body) - 1:
            return None  # the teaching part would start displaying its last expression
    return teaching, checks


def segments(source: str) -> list[str]:
    """The source of each top-level statement, with the comment and blank lines above it (the
    lines after the last statement go with it)."""
    tree = _tree(source)
    lines = source.split("\n")
    starts = [0] + [s.end_lineno for s in tree.body[:-1]]
    ends = [s.end_lineno for s in tree.body[:-1]] + [len(lines)]
    return ["\n".join(lines[a:b]) for a, b in zip(starts, ends, strict=True)]


def split_source(source: str, teaching: list[int], checks: list[int]) -> tuple[str, str]:
    """The teaching statements' source and the checks' source, each in its original order."""
    parts = segments(source)
    head = "\n".join(parts[i] for i in teaching).strip("\n")
    tail = "\n".join(parts[i] for i in checks).strip("\n")
    return head, tail


def is_folded(cell: dict) -> bool:
    """A code cell whose source the website folds: a checks cell, or an exercise's solution."""
    return cell["cell_type"] == "code" and TAG in cell.get("metadata", {}).get("tags", [])


def _as_source(text: str) -> list[str]:
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + [lines[-1]]


def _tag(cell: dict, lang: str) -> None:
    metadata = cell.setdefault("metadata", {})
    if TAG not in metadata.setdefault("tags", []):
        metadata["tags"].append(TAG)
    show, hide = WORDS[lang]
    metadata["mystnb"] = {"code_prompt_show": show, "code_prompt_hide": hide}


def _checks_cell(source: str, cell_id: str, lang: str) -> dict:
    cell = {
        "cell_type": "code",
        "execution_count": None,
        "id": f"{cell_id}-checks",
        "metadata": {},
        "outputs": [],
        "source": _as_source(source),
    }
    _tag(cell, lang)
    return cell


def split_twins(name: str) -> int:
    """Split and tag the plumbing of both twins of chapter ``name``; the number of cells changed."""
    paths = {lang: CHAPTERS / lang / name for lang in WORDS}
    books = {lang: json.loads(path.read_text(encoding="utf-8")) for lang, path in paths.items()}
    changed = 0
    new_cells = {lang: [] for lang in WORDS}
    pairs = zip(books["en"]["cells"], books["fr"]["cells"], strict=True)
    for en, fr in pairs:
        cells = {"en": en, "fr": fr}
        for lang in WORDS:
            new_cells[lang].append(cells[lang])
        if en["cell_type"] != "code" or is_folded(en):
            continue
        planned = plan("".join(en["source"]))
        if planned is None:
            continue
        assert plan("".join(fr["source"])) == planned, f"{name}: twins differ at {en['id']}"
        changed += 1
        teaching, checks = planned
        for lang, cell in cells.items():
            if not teaching:
                _tag(cell, lang)
                continue
            head, tail = split_source("".join(cell["source"]), teaching, checks)
            cell["source"] = _as_source(head)
            new_cells[lang].append(_checks_cell(tail, cell["id"], lang))
    for lang, path in paths.items():
        books[lang]["cells"] = new_cells[lang]
        text = json.dumps(books[lang], ensure_ascii=False, indent=1)
        path.write_text(text + "\n", encoding="utf-8")
    return changed


def visible_code_lines(path: Path) -> int:
    """The non-blank lines of code a reader sees without opening a toggle."""
    book = json.loads(path.read_text(encoding="utf-8"))
    return sum(
        sum(1 for line in "".join(cell["source"]).split("\n") if line.strip())
        for cell in book["cells"]
        if cell["cell_type"] == "code" and not is_folded(cell)
    )


def main(argv: list[str]) -> None:
    names = sorted(p.name for p in (CHAPTERS / "en").glob("*.ipynb"))
    before = {name: visible_code_lines(CHAPTERS / "en" / name) for name in names}
    if "--count" not in argv:
        for name in names:
            print(f"{name}: {split_twins(name)} cells split or tagged")
    for name in names:
        after = visible_code_lines(CHAPTERS / "en" / name)
        print(f"{name:24} visible code lines {before[name]:4} -> {after:4}")


if __name__ == "__main__":
    main(sys.argv[1:])
