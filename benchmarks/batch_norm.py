"""Batch norm implementations side by side: forward + backward time, memory saved for backward.

    python benchmarks/batch_norm.py                      # the shapes of issue #9, CPU (and GPU)
    python benchmarks/batch_norm.py --shapes 32,16,8,8 --repeats 5 --skip compiled

Prints, for each shape, the median time of each implementation and its ratio to PyTorch's
native kernel measured in the same run, the bytes kept for the backward pass, and the floor:
the time to move the five tensors no batch norm avoids at this machine's copy bandwidth. Then
the time per training step of the article's CNN with PyTorch's and with bnlib's batch norm.
"""

from __future__ import annotations

import argparse
import sys

import torch

from bnlib.benchmark import (
    TRAINING,
    BenchmarkConfig,
    StepTimeConfig,
    benchmark,
    format_table,
    training_step_times,
)
from bnlib.data import DatasetUnavailableError


def shape(text: str) -> tuple[int, ...]:
    """'128,64,24,24' -> (128, 64, 24, 24)."""
    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a shape is integers separated by commas, got {text!r}"
        ) from None
    if len(dims) < 2:
        raise argparse.ArgumentTypeError(f"a batch norm input has shape (N, C, *), got {text!r}")
    return dims


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", type=shape, nargs="+", default=BenchmarkConfig.shapes)
    parser.add_argument("--repeats", type=int, default=BenchmarkConfig.repeats)
    parser.add_argument("--skip", nargs="*", default=[], choices=list(TRAINING)[:-1])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument("--cnn-steps", type=int, default=10, help="0 skips the CNN timing")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    implementations = tuple(name for name in TRAINING if name not in args.skip)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        print(f"== {device} ({torch.get_num_threads()} threads on the CPU), float32 ==")
        config = BenchmarkConfig(
            shapes=tuple(args.shapes),
            implementations=implementations,
            repeats=args.repeats,
            device=device,
        )
        print(format_table(benchmark(config)))
        if args.cnn_steps:
            try:
                steps = training_step_times(StepTimeConfig(num_steps=args.cnn_steps, device=device))
            except DatasetUnavailableError as error:
                print(f"CNN timing skipped: {error}")
                continue
            ratio = steps["bnlib"] / steps["torch"]
            print(
                f"article's CNN, one training step: PyTorch's batch norm "
                f"{1000 * steps['torch']:.1f} ms, bnlib's {1000 * steps['bnlib']:.1f} ms "
                f"({ratio:.2f}x)\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
