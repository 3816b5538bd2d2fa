"""torchrun: one run data-parallel over 2 gloo processes on the CPU (python -m torch.distributed.run, as torchrun).

Tolerance of the comparison with one process: the two runs compute the same thing -- the same global batches
(one seeded permutation, rank r takes slice r), batch statistics over the whole global batch (--sync-bn) and the
gradient of the global mean loss (DDP averages the ranks' gradients) -- but not in the same order: the 2-process
run sums per-rank partial sums. After one step the losses agree to 1e-7; over 12 steps a tiny net on tiny
batches amplifies that (measured on this test's settings, 2 CPU cores: train loss 2e-5 / 2e-3 / 4e-3 relative
after epochs 1 / 2 / 3, val loss <= 5e-4) and flips the arg-max of near-tied images (val accuracy, near chance
on 40 images, differed by 2 images at epoch 2). Hence: losses within 1% relative, train accuracy within 3 of 80
images, val accuracy within 4 of 40.
The one-process reference is torchrun with --nproc_per_node 1: under torchrun the global batch order comes from
lib.scale.distributed's seeded permutation, while a plain `python -m lib.train` keeps the DataLoader's own shuffle
(unchanged from before torchrun support), so its batches differ. Stochastic depth stays on (the model's 0.1): every
rank draws the same coins (lib.recipe.StochasticDepthCoins). Augmentation and MixUp are off: each rank augments and
mixes its own shard with its own random numbers, so the runs would differ by design.
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def torchrun(nproc, out, smoke_root, *extra, port, wait=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(port), "-m", "lib.train", "--profile", "smoke", "--model",
           "light_resnet18", "--data-dir", str(smoke_root), "--train-size", "80", "--val-size", "40",
           "--batch-size", "20", "--epochs", "3", "--lr", "0.01", "--augment", "none", "--mix-prob", "0",
           "--device", "cpu", "--no-progress", "--sync-bn", "--out", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    if wait:
        out_text = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, out_text[-4000:]
    return proc


def history(run_dir):
    with open(run_dir / "history.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_two_gloo_processes_match_one_and_resume(smoke_root, tmp_path, free_port):
    one, two = tmp_path / "one", tmp_path / "two"
    torchrun(1, one, smoke_root, port=free_port())

    # 2 processes, stopped with SIGTERM (as a cluster scheduler does) after the first epoch, then resumed
    proc = torchrun(2, two, smoke_root, port=free_port(), wait=False)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not (
            (two / "history.csv").exists() and len(history(two)) >= 1):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=120)
    assert 1 <= len(history(two)) < 3, "the run should have been stopped mid-way"
    torchrun(2, two, smoke_root, "--resume", port=free_port())

    # one set of files, written by rank 0
    assert sorted(p.name for p in two.iterdir() if not p.name.startswith(".")) == [
        "best.pt", "config.json", "history.csv", "last.pt"]
    assert json.loads((two / "config.json").read_text())["world_size"] == 2
    assert json.loads((one / "config.json").read_text())["world_size"] == 1
    h1, h2 = history(one), history(two)
    assert [r["epoch"] for r in h2] == [1, 2, 3]
    for a, b in zip(h1, h2):
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-9)  # same steps per epoch: the global batch is kept
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-2)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-2)
        assert abs(b["train_acc"] - a["train_acc"]) <= 3 / 80 + 1e-9
        assert abs(b["val_acc"] - a["val_acc"]) <= 4 / 40 + 1e-9


def test_sync_bn_without_torchrun_is_one_line(tmp_path):
    from lib.common import run_cli
    from lib.train import main
    assert run_cli(main, ["--profile", "smoke", "--sync-bn", "--out", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()


def test_device_loader_shards_are_the_global_batches():
    """Under torchrun each rank slices its share of every global batch from one seeded permutation, moved to the
    device once per epoch and augmented a chunk at a time: the ranks' batches of a step are disjoint, together
    the global batch, the same for every rank count, and a new epoch reorders them."""
    import numpy as np
    import torch

    from lib.augment import make_train_loader
    from lib.config import make_config
    from lib.scale.distributed import ShardedLoader

    n, global_batch = 120, 24
    x = (np.arange(n) % 250).astype(np.uint8).reshape(n, 1, 1, 1).repeat(32, 1).repeat(32, 2).repeat(3, 3)
    cfg = make_config("smoke", augment="none", mix_prob=0.0, batch_size=global_batch)

    def epoch(world_size, rank, epoch_number=0, chunk=None):
        loader = make_train_loader(cfg, x, np.arange(n) % 10, [0.0] * 3, [1.0] * 3, "cpu", "device")
        loader.chunk_images = chunk or loader.chunk_images
        shard = ShardedLoader(loader, global_batch, seed=3, rank=rank, world_size=world_size)
        shard.set_epoch(epoch_number)
        batches = [(xb[:, 0, 0, 0] * 255).round().long() for xb, _ in shard]
        assert len(batches) == len(shard) == n // global_batch
        return batches

    one = epoch(1, 0)
    assert sorted(torch.cat(one).tolist()) == list(range(n))  # 5 global batches of 24: every image once
    for world_size in (2, 3):
        ranks = [epoch(world_size, r, chunk=global_batch) for r in range(world_size)]
        for step, whole in enumerate(one):
            parts = [ranks[r][step] for r in range(world_size)]
            assert all(len(p) == global_batch // world_size for p in parts)
            assert torch.equal(torch.cat(parts), whole)  # rank r holds slice r of the step's global batch
    assert not torch.equal(torch.cat(epoch(1, 0, epoch_number=1)), torch.cat(one))


def _sync_bn_rank(rank, world, workdir, sizes, stats_dtype, compiled):
    """One process of test_sync_batch_norm_*: its slice of the batch through SyncBatchNorm2d, results saved."""
    import torch
    import torch.distributed as dist

    from lib.scale.distributed import SyncBatchNorm2d

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{workdir}/rendezvous", rank=rank, world_size=world)
    data = torch.load(f"{workdir}/data.pt")
    bn = SyncBatchNorm2d(data["x"].shape[1])
    bn.stats_dtype = getattr(torch, stats_dtype) if stats_dtype else None
    with torch.no_grad():
        bn.weight.copy_(data["weight"])
        bn.bias.copy_(data["bias"])
    x = data["x"].split(sizes)[rank].clone().requires_grad_()
    forward = torch.compile(bn) if compiled else bn
    y = forward(x)
    (y * data["g"].split(sizes)[rank]).sum().backward()  # the ranks' losses add up to the whole batch's
    for p in (bn.weight, bn.bias):
        dist.all_reduce(p.grad)  # DDP's reduction, as a sum
    from torch._dynamo.utils import counters
    torch.save({"y": y.detach(), "x_grad": x.grad, "weight_grad": bn.weight.grad, "bias_grad": bn.bias.grad,
                "running_mean": bn.running_mean, "running_var": bn.running_var,
                "graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values())},
               f"{workdir}/rank{rank}.pt")
    dist.destroy_process_group()


def run_sync_bn(tmp_path, sizes, stats_dtype=None, compiled=False):
    """SyncBatchNorm2d over len(sizes) gloo processes (rank r holds sizes[r] images) against PyTorch's own
    nn.BatchNorm2d on the concatenated batch: outputs, input and parameter gradients, running statistics."""
    import torch
    import torch.nn as nn

    gen = torch.Generator().manual_seed(0)
    n, c = sum(sizes), 3
    # channels far from zero mean and unit scale: the statistics must not lose digits to cancellation
    x = torch.randn(n, c, 5, 4, generator=gen) * torch.tensor([1.0, 0.2, 30.0]).view(1, c, 1, 1) \
        + torch.tensor([0.0, 50.0, -200.0]).view(1, c, 1, 1)
    data = {"x": x, "g": torch.randn(n, c, 5, 4, generator=gen), "weight": torch.rand(c, generator=gen) + 0.5,
            "bias": torch.randn(c, generator=gen)}
    torch.save(data, tmp_path / "data.pt")
    torch.multiprocessing.spawn(_sync_bn_rank, args=(len(sizes), str(tmp_path), sizes, stats_dtype, compiled),
                                nprocs=len(sizes))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(len(sizes))]

    # the reference in float64: what float32 arithmetic can get at best (each input is exact in both)
    ref = nn.BatchNorm2d(c).double().train()
    with torch.no_grad():
        ref.weight.copy_(data["weight"])
        ref.bias.copy_(data["bias"])
    x_ref = x.double().requires_grad_()
    y_ref = ref(x_ref)
    (y_ref * data["g"].double()).sum().backward()

    # float32 statistics (the GPUs'): each rank's mean of channel 1 (about 50) is rounded to float32, 3e-6
    # (2^-24 x 50), which is 2e-5 of its spread (0.2 x weight); float64 (the CPU's): as BatchNorm2d in float32
    # against float64 (measured: 8e-7 on the outputs, 3e-6 on the input gradients)
    tol = 4e-5 if stats_dtype == "float32" else 4e-6

    def check(got, want, rtol=1e-5, atol=tol):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want.detach(), rtol=rtol, atol=atol)

    check(torch.cat([r["y"] for r in ranks]), y_ref)
    check(torch.cat([r["x_grad"] for r in ranks]), x_ref.grad, atol=5 * tol)  # channel 1's are 5x (1 / 0.2)
    for r in ranks:
        check(r["weight_grad"], ref.weight.grad)
        check(r["bias_grad"], ref.bias.grad)
        check(r["running_mean"], ref.running_mean)
        check(r["running_var"], ref.running_var)
    return ranks


@pytest.mark.parametrize("sizes, stats_dtype", [((6, 6), None), ((3, 9), "float32")])
def test_sync_batch_norm_is_batch_norm_of_the_whole_batch(tmp_path, sizes, stats_dtype):
    """--sync-bn's layer: 2 ranks compute what one BatchNorm2d computes on both shares together, with the CPU's
    statistics (float64) and with the GPUs' (float32); (3, 9): shares of unequal size weigh by their counts."""
    run_sync_bn(tmp_path, sizes, stats_dtype)
