"""Train the article's CNN with DistributedDataParallel on CPU processes, the standard way:

    torchrun --nproc_per_node=2 scripts/train_ddp.py --sync --per-process-batch 4 --steps 300

Each process trains on its slice of every global mini-batch; ``--sync`` replaces batch norm by
``bnlib.SyncBatchNorm``, whose statistics span all the processes. Process 0 prints the history.
"""

import argparse

import torch.distributed as dist

from bnlib.experiments import DDPConfig, ddp_worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sync", action="store_true", help="synchronised batch norm")
    parser.add_argument("--per-process-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--model", choices=["cnn", "mlp"], default="cnn")
    args = parser.parse_args()

    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    config = DDPConfig(
        world_size=dist.get_world_size(),
        sync=args.sync,
        per_process_batch=args.per_process_batch,
        model=args.model,
        num_steps=args.steps,
        eval_every=args.eval_every,
    )
    history = ddp_worker(dist.get_rank(), dist.get_world_size(), config)
    if dist.get_rank() == 0:
        print(f"{'step':>6} {'train loss':>11} {'test accuracy':>14}")
        for step, loss, accuracy in zip(
            history["step"], history["train_loss"], history["test_accuracy"], strict=True
        ):
            print(f"{step:>6} {loss:>11.4f} {100 * accuracy:>13.1f}%")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
