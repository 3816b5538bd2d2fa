"""What only a CUDA GPU can check: the device loader there, the AMP policy, channels_last, fused SGD, --compile
(no recompiles, no CUDA graph skipped), CUDA predictions against CPU ones, a short CUDA training run, and no host
synchronisation inside the training step or in --sync-bn's layer.

Skipped without CUDA (the CPU suite collects them and moves on); `pytest -m cuda` runs them; `make gpu-check` runs
`-m "cuda and not compile"` first and the compile ones when time is left (compilation takes minutes).
"""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from lib.augment import make_train_loader
from lib.common import amp_dtype
from lib.config import make_config
from lib.data import load_kaggle_test
from lib.models import build_model
from lib.predict import load_checkpoint, predict_proba
from lib.recipe import make_criterion, make_optimizer, make_scheduler, train_step
from lib.train import train

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")
MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


def tiny(smoke_root, out, **kw):
    settings = dict(model="light_resnet18", base_channels=16, progress=False, device="cuda",
                    data_dir=str(smoke_root), out=str(out), train_size=320, val_size=200, batch_size=32, epochs=1)
    return make_config("smoke", **{**settings, **kw})


def read_history_rows(run_dir):
    with open(Path(run_dir) / "history.csv") as f:
        return list(csv.DictReader(f))


def random_images(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def expected_amp_dtype():
    """The policy: bf16 where the card computes it natively (compute capability 8.0 and up: A100, H100, ...),
    fp16 with a GradScaler below (T4, V100)."""
    major, _ = torch.cuda.get_device_capability()
    return torch.bfloat16 if major >= 8 else torch.float16


def test_amp_policy_and_its_grad_scaler(smoke_root, tmp_path):
    assert amp_dtype(CUDA) == expected_amp_dtype()
    train(tiny(smoke_root, tmp_path / "run"))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["amp_dtype"] == str(expected_amp_dtype()).replace("torch.", "")
    assert config["device_name"] == torch.cuda.get_device_name()
    ckpt = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert (ckpt["scaler"] is not None) == (expected_amp_dtype() == torch.float16)  # loss scaling for fp16 only


def test_device_loader_on_cuda():
    x, y = random_images(600)
    loader = make_train_loader(make_config("paper", batch_size=128), x, y, MEAN, STD, CUDA, "device")
    batches = list(loader)
    assert len(batches) == len(loader) == 4  # drop_last: 600 // 128
    for xb, soft in batches:
        assert xb.device.type == "cuda" and soft.device.type == "cuda"
        assert xb.dtype == torch.float32 and xb.shape == (128, 3, 32, 32)
        assert xb.is_contiguous(memory_format=torch.channels_last)
        assert torch.isfinite(xb).all()
        torch.testing.assert_close(soft.sum(1), torch.ones(128, device=CUDA))  # soft targets: distributions
    # normalised with the given statistics: roughly zero-mean, unit-scale over the batches (uniform pixels)
    allx = torch.cat([xb for xb, _ in batches])
    assert abs(allx.mean().item()) < 0.5 and 0.5 < allx.std().item() < 2.5


@pytest.mark.parametrize("model_name", ["light_resnet18", "robust_resnet64"])
def test_channels_last_matches_contiguous(model_name):
    torch.manual_seed(0)
    model = build_model(model_name).to(CUDA).eval()
    x = torch.randn(64, 3, 32, 32, device=CUDA)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # compare the memory formats in full fp32
    try:
        with torch.inference_mode():
            ref = model(x)
            model.to(memory_format=torch.channels_last)
            out = model(x.contiguous(memory_format=torch.channels_last))
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert (out - ref).norm() / ref.norm() < 1e-4


@pytest.mark.compile  # compilation takes a minute or more: make gpu-check runs these last
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_compile_flag_trains(smoke_root, tmp_path, monkeypatch, cuda_graphs):
    """--compile (and --cuda-graphs) on CUDA with dropout and stochastic depth on: trains, compiles the step once
    (a recompile after epoch 1, the switch to evaluation and back included, raises), and inductor skips no CUDA
    graph (it falls back to plain kernels silently otherwise, e.g. for a CPU tensor or a mutated input)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    run = tmp_path / "compiled"

    def after_epoch(row):  # from here on a recompile raises
        monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)

    train(tiny(smoke_root, run, compile=True, cuda_graphs=cuda_graphs, epochs=2, dropout=0.1,
               stochastic_depth_rate=0.3), on_epoch=after_epoch)
    rows = read_history_rows(run)
    assert len(rows) == 2 and all(np.isfinite(float(r["train_loss"])) for r in rows)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"], dict(counters["graph_break"])
    assert counters["inductor"]["cudagraph_skips"] == 0
    model, _ = load_checkpoint(run / "last.pt", CUDA)  # the weights load into a plain (uncompiled) model
    config = json.loads((run / "config.json").read_text())
    assert config["compile"] is True and config["cuda_graphs"] == cuda_graphs


def test_fused_sgd_and_a_skipped_first_step():
    """On CUDA the optimizer is fused SGD. Its first step fills fresh momentum buffers only when it runs; a step
    GradScaler skips (fp16 overflow) must leave parameters and buffers as they were, and the next step must be
    the first step of foreach SGD (buf = g)."""
    cfg = make_config("paper")
    torch.manual_seed(0)
    model = build_model("light_resnet18", base_channels=8).to(CUDA)
    reference = build_model("light_resnet18", base_channels=8).to(CUDA)
    reference.load_state_dict(model.state_dict())
    optimizer = make_optimizer(cfg, model)
    assert optimizer.defaults["fused"] is True
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                                    weight_decay=cfg.weight_decay, foreach=True)
    start = [p.detach().clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler("cuda")
    x = torch.randn(16, 3, 32, 32, device=CUDA)
    target = torch.randint(0, 10, (16,), device=CUDA)

    def backward(net):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = nn.functional.cross_entropy(net(x), target)
        scaler.scale(loss).backward()

    backward(model)
    next(model.parameters()).grad.view(-1)[0] = float("inf")  # an overflow: GradScaler skips this step
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    assert all(torch.equal(p, s) for p, s in zip(model.parameters(), start))
    assert all(not optimizer.state[p]["momentum_buffer"].any() for p in model.parameters())

    backward(model)  # now a real step, against foreach SGD's first step on the same (unscaled) gradients
    scale = scaler.get_scale()  # a power of two: dividing by it is exact
    for p, r in zip(model.parameters(), reference.parameters()):
        r.grad = p.grad.detach() / scale
    scaler.step(optimizer)
    ref_optimizer.step()
    for p, r in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)


def test_cuda_predictions_equal_cpu_predictions(smoke_root, tmp_path):
    run = tmp_path / "cpu_run"
    train(tiny(smoke_root, run, device="cpu", epochs=3, augment="none", mix_prob=0.0, lr=0.05))
    images, _ = load_kaggle_test(smoke_root / "kaggle_test.pkl")
    probs = {}
    for device in ("cpu", "cuda"):
        model, ckpt = load_checkpoint(run / "best.pt", device)
        norm = ckpt["normalization"]
        probs[device] = predict_proba(model, images, norm["mean"], norm["std"], tta=True)
    cpu, gpu = probs["cpu"], probs["cuda"]
    assert np.isfinite(gpu).all() and np.allclose(gpu.sum(1), 1, atol=1e-3)
    # CUDA runs in mixed precision (bf16 keeps ~3 significant digits): probabilities agree to a few hundredths,
    # and every prediction whose top two classes are not a near-tie is the same class
    assert np.abs(gpu - cpu).max() < 0.05 and np.abs(gpu - cpu).mean() < 0.01
    top2 = np.sort(cpu, 1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.05
    assert clear.mean() > 0.5  # the check below has something to check
    assert (gpu.argmax(1) == cpu.argmax(1))[clear].all()


def test_short_cuda_training_loss_falls(smoke_root, tmp_path):
    summary = train(tiny(smoke_root, tmp_path / "run", train_size=None, epochs=6, augment="none", mix_prob=0.0,
                         lr=0.05, warmup_epochs=0.5))
    rows = read_history_rows(tmp_path / "run")
    assert len(rows) == 6
    assert float(rows[-1]["train_loss"]) < 0.7 * float(rows[0]["train_loss"])
    assert summary["best_val_acc"] > 0.4  # chance is 0.1
    assert json.loads((tmp_path / "run" / "config.json").read_text())["loader"] == "device"


@pytest.mark.parametrize("precision", ["configured", "fp16"])
def test_no_host_sync_in_the_training_step(precision):
    """The device loader's iteration and train_step queue work on the GPU and never wait for it: any
    synchronising call (.item(), a pageable copy, nonzero, ...) raises under sync debug mode "error". fp16 with
    GradScaler (T4, V100) included: fused SGD takes the scale and the inf flag on the device."""
    dtype = expected_amp_dtype() if precision == "configured" else torch.float16
    cfg = make_config("paper", batch_size=64, augment="full", mix_prob=0.5)
    x, y = random_images(64 * 8)
    loader = make_train_loader(cfg, x, y, MEAN, STD, CUDA, "device")
    model = build_model("light_resnet18").to(CUDA, memory_format=torch.channels_last).train()
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(cfg, optimizer, len(loader))
    criterion = make_criterion(cfg)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    for xb, soft in list(loader)[:2]:  # warm-up: cuDNN plans, allocator, lazy initialisation may sync
        train_step(model, xb, soft, optimizer, scheduler, criterion, scaler, dtype)
    torch.cuda.synchronize()
    losses = []
    torch.cuda.set_sync_debug_mode("error")
    try:
        for xb, soft in loader:  # a whole epoch: the randperm, the chunk's BatchAugment, BatchMix, the step
            loss, *_ = train_step(model, xb, soft, optimizer, scheduler, criterion, scaler, dtype)
            losses.append(loss)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(losses) == 8 and torch.isfinite(torch.stack(losses)).all()


def test_sync_batch_norm_without_host_sync(tmp_path):
    """--sync-bn's layer on CUDA (NCCL; one process here): its forward and backward never wait for the GPU
    (nn.SyncBatchNorm reads a count through a boolean mask in each layer), and over one process it computes what
    BatchNorm2d computes."""
    import torch.distributed as dist

    from lib.scale.distributed import SyncBatchNorm2d

    dist.init_process_group("nccl", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        x = torch.randn(32, 16, 8, 8, device=CUDA) * 3 + 1
        g = torch.randn_like(x)
        ref, bn = nn.BatchNorm2d(16).to(CUDA), SyncBatchNorm2d(16).to(CUDA)

        def step(layer):
            inp = x.clone().requires_grad_()
            y = layer(inp)
            (y * g).sum().backward()
            return y.detach(), inp.grad

        step(bn)  # warm-up: NCCL sets up its communicator at the first collective
        step(ref)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            y, x_grad = step(bn)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        y_ref, x_grad_ref = step(ref)
        torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(x_grad, x_grad_ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(bn.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(bn.running_var, ref.running_var, rtol=1e-4, atol=1e-5)
    finally:
        dist.destroy_process_group()
