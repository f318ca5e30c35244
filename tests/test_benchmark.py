"""bnlib.benchmark and benchmarks/batch_norm.py: what they count is right, the script runs.

Timings are printed, never asserted; memory saved for backward is deterministic, so asserted.
"""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from bnlib import benchmark as B

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("bench_script", ROOT / "benchmarks/batch_norm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def inputs(shape):
    x = torch.randn(shape, requires_grad=True)
    gamma = torch.ones(shape[1], requires_grad=True)
    beta = torch.zeros(shape[1], requires_grad=True)
    return x, gamma, beta


@pytest.mark.parametrize("shape", [(16, 8, 6, 6), (32, 16)])
def test_memory_saved_for_backward(shape):
    """bnlib's Functions keep one tensor of the input's size, as PyTorch's kernel does; the
    autograd composition keeps two."""
    x, gamma, beta = inputs(shape)
    saved = {name: B.saved_bytes(f, x, gamma, beta)[0] for name, f in B.TRAINING.items()}
    assert x.nbytes <= saved["native"] < x.nbytes + 1024  # x, plus (C,) vectors
    assert saved["fast"] <= saved["native"] and saved["reference"] <= saved["native"]
    assert saved["naive"] >= 2 * x.nbytes


def test_saved_bytes_counts_each_storage_once():
    x, gamma, beta = inputs((4, 3, 5))

    def twice(x, gamma, beta):
        return (x * x[:, :1]).sum() + beta.sum()  # the product saves x and a view of x

    saved, y = B.saved_bytes(twice, x, gamma, beta)
    assert saved == x.nbytes and y.requires_grad


def test_benchmark_rows_and_table():
    config = B.BenchmarkConfig(
        shapes=((8, 4, 5, 5), (16, 4)),
        implementations=("naive", "fast", "native"),
        repeats=2,
        warmup=1,
    )
    rows = B.benchmark(config)
    assert [(r["shape"], r["implementation"]) for r in rows] == [
        (shape, name) for shape in config.shapes for name in config.implementations
    ]
    native = [r for r in rows if r["implementation"] == "native"]
    assert all(r["time_ratio"] == 1.0 and r["memory_ratio"] == 1.0 for r in native)
    assert all(r["ms"] > 0 and r["floor_ms"] > 0 for r in rows)
    assert rows[0]["floor_bytes"] == 5 * 8 * 4 * 5 * 5 * 4  # five float32 tensors of x's size
    assert all(r["available"] and r["reason"] is None for r in rows)
    table = B.format_table(rows)
    assert "shape (8, 4, 5, 5): floor" in table and table.count("fast ") == 2


def table_rows():
    """Rows as ``benchmark`` returns them, for two shapes; the second's compiled one unavailable."""

    def row(shape, name, ms, saved_mib, first_call_s=0.01):
        return {
            "shape": shape,
            "implementation": name,
            "available": True,
            "reason": None,
            "ms": ms,
            "first_call_s": first_call_s,
            "saved_bytes": saved_mib * 2**20,
            "floor_ms": 0.25,
            "floor_bytes": 3 * 2**20,
            "time_ratio": ms / 1.25,
            "memory_ratio": saved_mib / 2,
        }

    nan = float("nan")
    unavailable = {"available": False, "reason": "BackendCompilerFailed: RuntimeError"}
    return [
        row((8, 4, 5, 5), "fast", 1.5, 2),
        row((8, 4, 5, 5), "compiled", 2.5, 1, first_call_s=12.25),
        row((8, 4, 5, 5), "native", 1.25, 2),
        row((16, 4), "compiled", nan, nan, first_call_s=nan) | unavailable,
        row((16, 4), "native", 1.25, 2),
    ]


def test_table_in_english():
    """The English table, word for word as before it had a ``lang``: the script's, the pages'."""
    assert B.format_table(table_rows()).splitlines() == [
        "shape (8, 4, 5, 5): floor 3.0 MiB moved, 0.25 ms at this machine's copy bandwidth",
        "implementation  fwd+bwd ms  x native  saved MiB  x native",
        "fast                 1.500      1.20       2.00      1.00",
        "compiled             2.500      2.00       1.00      0.50"
        "   (first call, compiling: 12.2 s)",
        "native               1.250      1.00       2.00      1.00",
        "",
        "shape (16, 4): floor 3.0 MiB moved, 0.25 ms at this machine's copy bandwidth",
        "implementation  fwd+bwd ms  x native  saved MiB  x native",
        "compiled      unavailable here: BackendCompilerFailed: RuntimeError",
        "native               1.250      1.00       2.00      1.00",
    ]


def test_table_in_french_has_french_words_and_decimal_commas():
    """The same table for a French page: its words, a decimal comma, the same columns; the
    implementations keep their names and the compiler's reason its words."""
    english = B.format_table(table_rows()).splitlines()
    french = B.format_table(table_rows(), lang="fr").splitlines()
    assert french == [
        "forme (8, 4, 5, 5) : plancher de 3,0 Mio déplacés, "
        "0,25 ms au débit de copie de cette machine",
        "implémentation av.+arr. ms   x natif Mio gardés   x natif",
        "fast                 1,500      1,20       2,00      1,00",
        "compiled             2,500      2,00       1,00      0,50"
        "   (premier appel, compilation comprise : 12,2 s)",
        "native               1,250      1,00       2,00      1,00",
        "",
        "forme (16, 4) : plancher de 3,0 Mio déplacés, 0,25 ms au débit de copie de cette machine",
        "implémentation av.+arr. ms   x natif Mio gardés   x natif",
        "compiled      indisponible ici : BackendCompilerFailed: RuntimeError",
        "native               1,250      1,00       2,00      1,00",
    ]
    columns = [1, 2, 4, 7, 9]  # the headers and the measured rows keep their widths
    assert [len(french[i]) for i in columns] == [len(english[i]) for i in columns]
    with pytest.raises(ValueError, match="lang must be one of"):
        B.format_table(table_rows(), lang="de")


def failing_compiler(error: Exception):
    """A stand-in for ``fast.compiled_kernel`` on a machine whose compiler fails: the compiled
    kernel raises ``error`` on its first call, as torch.compile does."""

    def compiled(*args):
        raise error

    return lambda kernel: compiled


def compiler_failure(message: str) -> Exception:
    from torch._dynamo.exc import BackendCompilerFailed

    return BackendCompilerFailed(torch.compile, RuntimeError(message), None)


def test_benchmark_records_a_compiler_failure_and_measures_the_rest(monkeypatch):
    """Where torch.compile fails, the compiled rows say why; the others are measured."""
    error = compiler_failure("no working C++ compiler\nthe command that failed")
    monkeypatch.setattr(B.fast, "compiled_kernel", failing_compiler(error))
    config = B.BenchmarkConfig(
        shapes=((8, 4, 5, 5), (16, 4)),
        implementations=("fast", "compiled", "native"),
        repeats=2,
        warmup=1,
    )
    rows = B.benchmark(config)
    assert [(r["shape"], r["implementation"]) for r in rows] == [
        (shape, name) for shape in config.shapes for name in config.implementations
    ]
    compiled = [r for r in rows if r["implementation"] == "compiled"]
    reason = "BackendCompilerFailed: RuntimeError: no working C++ compiler"
    assert all(not r["available"] and r["reason"] == reason for r in compiled)
    for key in ("ms", "first_call_s", "saved_bytes", "time_ratio", "memory_ratio"):
        assert all(math.isnan(r[key]) for r in compiled)
    others = [r for r in rows if r["implementation"] != "compiled"]
    assert all(r["available"] and r["reason"] is None and r["ms"] > 0 for r in others)
    assert all(r["saved_bytes"] > 0 and r["floor_ms"] > 0 for r in others)
    native = [r for r in rows if r["implementation"] == "native"]
    assert all(r["time_ratio"] == 1.0 and r["memory_ratio"] == 1.0 for r in native)
    table = B.format_table(rows)
    assert table.count(f"compiled      unavailable here: {reason}") == 2
    assert table.count("\nfast ") == 2 and table.count("\nnative ") == 2


def test_benchmark_raises_an_error_that_is_not_the_compilers(monkeypatch):
    """Only a compiler's failure makes an implementation unavailable; a bug still raises."""
    monkeypatch.setattr(B.fast, "compiled_kernel", failing_compiler(RuntimeError("a bug")))
    config = B.BenchmarkConfig(shapes=((8, 4),), implementations=("compiled",), repeats=1)
    with pytest.raises(RuntimeError, match="a bug"):
        B.benchmark(config)


def test_unavailable_reason_is_the_type_and_first_line():
    from torch._inductor.exc import InductorError

    inductor = InductorError(OSError("No working C++ compiler found\n  g++: not found"), None)
    assert B.unavailable_reason(inductor) == "InductorError: OSError: No working C++ compiler found"
    assert B.unavailable_reason(compiler_failure("")) == "BackendCompilerFailed: RuntimeError"
    assert (
        B.unavailable_reason(ValueError("\n  second line first")) == "ValueError: second line first"
    )
    assert len(B.unavailable_reason(compiler_failure("x" * 500))) == 200


def test_benchmark_refuses_an_unknown_implementation():
    with pytest.raises(ValueError, match=r"unknown implementations \['cudnn'\]"):
        B.benchmark(B.BenchmarkConfig(implementations=("cudnn",)))


def test_training_step_times(fashion_mnist):
    times = B.training_step_times(B.StepTimeConfig(num_steps=2, rounds=1, batch_size=16))
    assert set(times) == {"torch", "bnlib"} and all(t > 0 for t in times.values())


def test_script_prints_the_table(capsys, fashion_mnist):
    script = load_script()
    argv = ["--shapes", "8,4,5,5", "--repeats", "2", "--skip", "compiled", "--cnn-steps", "2"]
    assert script.main(argv) == 0
    out = capsys.readouterr().out
    assert "shape (8, 4, 5, 5): floor" in out and "compiled" not in out
    assert "article's CNN, one training step" in out


def test_script_rejects_a_bad_shape(capsys):
    with pytest.raises(SystemExit):
        load_script().main(["--shapes", "8x4"])
    assert "a shape is integers separated by commas" in capsys.readouterr().err


def test_time_ratio_pairs_each_repetition_with_native_in_the_same_one():
    """A slow moment that hits one repetition of both terms leaves the ratio alone."""
    fast = [2.0, 20.0, 2.0]  # the machine was slow during the second repetition
    native = [1.0, 10.0, 1.0]
    assert B._paired_ratio(fast, native) == 2.0
    assert B._paired_ratio([3.0, 1.0, 2.0], [1.0, 1.0, 1.0]) == 2.0  # the median
    with pytest.raises(ValueError):
        B._paired_ratio([1.0], [1.0, 2.0])  # repetitions unpaired


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_keep_freed_memory_is_accepted_by_glibc():
    """glibc takes both thresholds (mallopt returns 0 for a value out of its range, such as an
    mmap threshold above 32 MiB), and asking again changes nothing."""
    assert B.keep_freed_memory() is True
    assert B.keep_freed_memory() is True
