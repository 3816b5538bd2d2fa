"""Stochastic depth in training: one coin per block per step, drawn on the host from (seed, global step), so every
torchrun rank drops the same blocks and a resumed run draws what a straight one did; a dropped branch behaves as in
the original notebooks, where the block returns its shortcut alone: its own parameters get no gradient, so SGD
moves neither them nor their momentum that step, while the branch is still computed (its BatchNorm statistics
update)."""
import copy
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lib.config import make_config
from lib.models import DropBranch, build_model
from lib.recipe import make_criterion, make_optimizer, make_scheduler, stochastic_depth_coins, train_step

REPO = Path(__file__).resolve().parents[1]


def notebook_block_forward(block):
    """The notebooks' dropped block: the branch is computed (BN statistics move), the shortcut alone returned."""
    def forward(x):
        out = F.relu(block.bn1(x))
        if block.se_in:
            out = block.se(out)
        skip = block.shortcut(out) if block.shortcut is not None else x
        block.conv2(block.dropout(F.relu(block.bn2(block.conv1(out)))))
        return skip
    return forward


def setup(seed=0):
    torch.manual_seed(seed)
    model = build_model("light_resnet18", base_channels=8, stochastic_depth_rate=0.5).train()
    cfg = make_config("smoke", model="light_resnet18", lr=0.1, weight_decay=5e-4)
    optimizer = make_optimizer(cfg, model)
    return cfg, model, optimizer, make_scheduler(cfg, optimizer, 10), make_criterion(cfg)


def batch():
    torch.manual_seed(7)
    return torch.randn(8, 3, 32, 32), F.one_hot(torch.randint(0, 10, (8,)), 10).float()


@pytest.mark.parametrize("dropped", [(0, 0), (1, 0)])  # an identity block, and one with a projection shortcut
def test_a_dropped_block_is_left_alone_by_sgd_as_in_the_notebooks(dropped):
    cfg, model, optimizer, scheduler, criterion = setup()
    coins = stochastic_depth_coins(model, seed=0)
    block = model.groups[dropped[0]][dropped[1]]
    index = [drop for drop, _ in coins.blocks].index(block.drop_path)
    x, y = batch()

    coins.keep = lambda step: [True] * len(coins)  # step 1: every block kept, so momentum buffers are non-zero
    train_step(model, x, y, optimizer, scheduler, criterion, coins=coins)

    # the reference: the notebooks' model for step 2 (this block returns its shortcut alone, the others kept),
    # with PyTorch's reference SGD (for-loop), from the same weights and momentum
    reference = copy.deepcopy(model)
    for m in reference.modules():
        if isinstance(m, DropBranch):
            m.host_coins, m.p = False, 0.0  # kept
    ref_block = reference.groups[dropped[0]][dropped[1]]
    ref_block.forward = notebook_block_forward(ref_block)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=optimizer.param_groups[0]["lr"], momentum=0.9,
                              nesterov=True, weight_decay=5e-4, foreach=False)
    ref_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # its buffers, not ours (load aliases them)
    ref_opt.zero_grad(set_to_none=True)
    criterion(reference(x), y).backward()
    ref_grads = {n: p.grad for n, p in reference.named_parameters()}
    ref_opt.step()

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: optimizer.state[p]["momentum_buffer"].clone() for n, p in model.named_parameters()}
    bn_before = block.bn2.running_mean.clone()
    coins.keep = lambda step: [i != index for i in range(len(coins))]
    train_step(model, x, y, optimizer, scheduler, criterion, coins=coins)

    prefix = f"groups.{dropped[0]}.{dropped[1]}."
    branch = {n for n, p in model.named_parameters() if any(p is q for q in block.branch_parameters())}
    assert branch and all(n.startswith(prefix) for n in branch)
    no_grad = {n for n, g in ref_grads.items() if g is None}
    assert branch == no_grad  # exactly the parameters the notebooks' block leaves without a gradient
    for n, p in model.named_parameters():
        if n in branch:  # untouched: no momentum, no weight decay this step
            assert torch.equal(p.detach(), before[n]), n
            assert torch.equal(optimizer.state[p]["momentum_buffer"], buffers[n]), n
        elif "conv" in n:  # every convolution outside the dropped branch learns
            assert not torch.equal(p.detach(), before[n]), n
        ref = dict(reference.named_parameters())[n]
        assert torch.allclose(p.detach(), ref.detach(), rtol=1e-6, atol=1e-7), n
        assert torch.allclose(optimizer.state[p]["momentum_buffer"], ref_opt.state[ref]["momentum_buffer"],
                              rtol=1e-6, atol=1e-7), n
    assert not torch.equal(block.bn2.running_mean, bn_before)  # the dropped branch was still computed
    assert torch.equal(block.bn2.running_mean, ref_block.bn2.running_mean)
    if dropped == (1, 0):  # the projection shortcut takes bn1's output: bn1 still learns
        assert f"{prefix}bn1.weight" not in branch and f"{prefix}shortcut.weight" not in branch


def test_ranks_seeded_alike_draw_the_same_coins_at_each_rate():
    _, a, *_ = setup(seed=0)
    _, b, *_ = setup(seed=1)  # another process: other weights, same run seed
    coins_a, coins_b = stochastic_depth_coins(a, seed=5), stochastic_depth_coins(b, seed=5)
    draws = [coins_a.keep(t) for t in range(4000)]
    assert draws == [coins_b.keep(t) for t in range(4000)]
    assert draws != [stochastic_depth_coins(a, seed=6).keep(t) for t in range(4000)]
    rates = [0.5 * g / 4 * b / 2 for g in range(1, 5) for b in (1, 2)]  # the notebooks' rule, by hand
    for i, p in enumerate(rates):
        dropped = sum(not d[i] for d in draws) / len(draws)
        assert dropped == pytest.approx(p, abs=4 * (p * (1 - p) / len(draws)) ** 0.5), i
    coins_a.draw(3)  # the blocks read what was drawn, as 0/1 tensors
    assert [d.keep.item() for d, _ in coins_a.blocks] == [float(k) for k in coins_a.keep(3)]


def test_without_host_coins_each_forward_draws_its_own():
    """A model used by itself (notebook 02's demonstration) still drops branches in training mode."""
    drop = build_model("light_resnet18_v2", stochastic_depth_rate=0.6).groups[1][1].drop_path
    torch.manual_seed(0)
    outs = [drop.train()(torch.ones(4, 3))[0, 0].item() for _ in range(400)]
    assert 0 < outs.count(0.0) < 400


def torchrun(nproc, out, smoke_root, port):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(port), "-m", "lib.train", "--profile", "smoke", "--model",
           "light_resnet18", "--base-channels", "8", "--data-dir", str(smoke_root), "--train-size", "80",
           "--val-size", "40", "--batch-size", "20", "--epochs", "2", "--lr", "0.05", "--augment", "none",
           "--mix-prob", "0", "--stochastic-depth-rate", "0.5", "--device", "cpu", "--no-progress", "--sync-bn",
           "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    with open(out / "history.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_two_gloo_processes_with_stochastic_depth_match_one(smoke_root, tmp_path, free_port):
    """The same blocks dropped on both ranks: the two runs compute the same thing, summed in another order.
    Measured on these settings (2 CPU cores): losses within 5e-8 / 4e-7 relative after epochs 1 / 2; with coins
    drawn per rank (the seed offset by the rank) the train loss of epoch 2 differed by 4e-4. Hence 2e-5."""
    h1 = torchrun(1, tmp_path / "one", smoke_root, port=free_port())
    h2 = torchrun(2, tmp_path / "two", smoke_root, port=free_port())
    assert [r["epoch"] for r in h2] == [1, 2]
    for a, b in zip(h1, h2):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=2e-5)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=2e-5)
        assert abs(b["train_acc"] - a["train_acc"]) <= 1 / 80 + 1e-9


def test_host_coins_neither_recompile_nor_break_the_graph():
    """torch.compile's view of a step: the coins are a buffer's value, so a step with other coins reuses the graph
    (no guard on them), and the compiled forward drops what the eager one drops. aot_eager: dynamo and AOTAutograd
    without inductor's C++ compilation (seconds)."""
    torch._dynamo.reset()
    cfg, model, optimizer, scheduler, criterion = setup()
    coins = stochastic_depth_coins(model, seed=0)
    x, y = batch()
    compiled = torch.compile(model, backend="aot_eager", dynamic=False, fullgraph=True)
    patterns = [[True] * 8, [False] * 8, [i % 2 == 0 for i in range(8)]]
    for keep in patterns:  # with autograd on, as in training (no_grad would be another graph)
        coins.keep = lambda step, keep=keep: keep
        coins.draw(0)
        assert torch.equal(compiled(x).detach(), model(x).detach()), keep
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    train_step(compiled, x, y, optimizer, scheduler, criterion, coins=coins)  # and a training step through it
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_evaluation_ignores_the_coins():
    _, model, *_ = setup()
    coins = stochastic_depth_coins(model, seed=0)
    coins.keep = lambda step: [False] * len(coins)
    coins.draw(0)  # every branch dropped in training...
    plain = build_model("light_resnet18", base_channels=8, stochastic_depth_rate=0.0)
    plain.load_state_dict(model.state_dict())
    x, _ = batch()
    with torch.no_grad():  # ...and all of them kept at evaluation, as without stochastic depth
        assert torch.equal(model.eval()(x), plain.eval()(x))


def test_coins_only_for_models_with_stochastic_depth():
    assert stochastic_depth_coins(build_model("robust_resnet64"), seed=0) is None  # rate 0: every p is 0
    assert len(stochastic_depth_coins(build_model("light_resnet18"), seed=0)) == 8  # 4 groups x 2 blocks


def test_every_dropped_block_loses_its_gradients():
    """All eight blocks dropped in one step: what keeps a gradient is the stem conv, the final BN and FC, and in
    each of the 3 projection blocks bn1, the input SE (2 Linear) and the shortcut, shared with the skip path:
    1 + 2 + 2 + 3 x (2 + 4 + 1) = 26 tensors."""
    _, model, *_ = setup()
    coins = stochastic_depth_coins(model, seed=0)
    coins.keep = lambda step: [False] * len(coins)
    coins.draw(0)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    coins.drop_gradients()
    assert sum(p.grad is not None for p in model.parameters()) == 26
    assert all(d.keep.item() == 0.0 for d, _ in coins.blocks)
