"""bnlib.seeds and bnlib.cache: the seed offset moves every seed, and the cache key changes
with everything that changes a result."""

from dataclasses import dataclass, replace

import pytest
import torch

from bnlib import cache
from bnlib.benchmark import BenchmarkConfig
from bnlib.experiments import RunConfig, Seeds, run, with_seed_offset
from bnlib.seeds import OFFSET_VARIABLE, seed, seed_offset

TINY = RunConfig(norm="bnlib", train_limit=600, num_steps=10, eval_every=10, eval_train_size=100)


def test_offset_defaults_to_zero_and_shifts_every_seed(monkeypatch):
    monkeypatch.delenv(OFFSET_VARIABLE, raising=False)
    assert seed_offset() == 0 and seed(3) == 3
    monkeypatch.setenv(OFFSET_VARIABLE, "100")
    assert seed_offset() == 100 and seed() == 100 and seed(3) == 103


@pytest.mark.parametrize("text", ["ten", "1.5", "-3"])
def test_a_bad_offset_is_refused_with_what_was_wrong(monkeypatch, text):
    monkeypatch.setenv(OFFSET_VARIABLE, text)
    with pytest.raises(ValueError, match=f"{OFFSET_VARIABLE} must be a non-negative integer"):
        seed_offset()


def test_run_shifts_the_seed_of_configurations_and_of_seeds(monkeypatch):
    monkeypatch.setenv(OFFSET_VARIABLE, "7")
    assert with_seed_offset(TINY).seed == 7
    assert with_seed_offset(Seeds(replace(TINY, seed=2), n=3)).seeds == [9, 10, 11]
    assert with_seed_offset(BenchmarkConfig()).seed == 7  # the benchmark's inputs too

    @dataclass(frozen=True)
    class NoSeed:
        size: int = 3

    config = NoSeed()
    assert with_seed_offset(config) is config  # nothing random to shift


def test_another_offset_trains_other_seeds(monkeypatch, tmp_path):
    monkeypatch.setenv("BNLIB_CACHE", str(tmp_path))
    monkeypatch.setenv(OFFSET_VARIABLE, "0")
    first = run(TINY)
    monkeypatch.setenv(OFFSET_VARIABLE, "5")
    moved = run(TINY)
    assert first["config"]["seed"] == 0 and moved["config"]["seed"] == 5
    assert moved["test_loss"] != first["test_loss"]
    from bnlib.experiments import train_run

    assert moved == train_run(replace(TINY, seed=5))  # exactly the run of seed 5


def test_the_key_covers_every_computing_module():
    names = {p.name for p in cache.computing_modules()}
    package = {p.name for p in cache._PACKAGE.glob("*.py")}
    assert names == package - cache.NOT_COMPUTING
    assert {"convert.py", "stacked.py", "stats.py", "seeds.py", "experiments.py"} <= names
    assert "plots.py" not in names


def test_the_key_changes_with_what_changes_the_numbers(monkeypatch):
    monkeypatch.delenv(OFFSET_VARIABLE, raising=False)
    key = cache.cache_key()
    assert cache.cache_key() == key  # stable
    monkeypatch.setenv(OFFSET_VARIABLE, "1")
    assert cache.cache_key() != key
    monkeypatch.delenv(OFFSET_VARIABLE)
    environment = cache.environment()
    assert environment["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert environment["threads"] == cache.THREADS
    for name, value in (("torch", "0.0.0"), ("cpu_capability", "DEFAULT"), ("device", "cuda")):
        monkeypatch.setattr(cache, "environment", lambda n=name, v=value: environment | {n: v})
        assert cache.cache_key() != key, name
    monkeypatch.undo()
    monkeypatch.setattr(cache, "_source_digest", lambda: "another version of the code")
    assert cache.cache_key() != key


def test_experiments_run_with_the_fixed_thread_count():
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    with cache.fixed_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
