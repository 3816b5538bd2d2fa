"""--resume puts the optimizer back as this device builds it, whatever device wrote the checkpoint: the fused or
foreach SGD make_optimizer chooses here, momentum buffers in each parameter's memory format. A CUDA card with fp16
resuming a CPU-written run is the case that crashed (GradScaler passes its scale to the fused optimizer it was built
with, after load_state_dict had brought back the saved foreach flags); fused SGD and GradScaler("cpu") reproduce it
on the CPU."""
import io
from copy import deepcopy

import numpy as np
import pytest
import torch
import torch.nn as nn

from lib.config import make_config
from lib.recipe import load_optimizer_state, make_optimizer, sgd_implementation

LR, MOMENTUM, WD = 0.1, 0.9, 5e-4


def net(memory_format=torch.contiguous_format):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1), nn.Flatten(),
                          nn.LazyLinear(3))
    model(torch.randn(2, 3, 6, 6))  # materialise the lazy layer
    return model.to(memory_format=memory_format)


def sgd(model, **impl):
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WD, **impl)


def loss_of(model):
    torch.manual_seed(1)
    return model(torch.randn(4, 3, 6, 6)).square().mean()


def foreach_state():
    """What a CPU run's last.pt holds: foreach SGD's state after a step (NCHW momentum buffers), through torch.save."""
    model = net()
    opt = sgd(model, foreach=True)
    loss_of(model).backward()
    opt.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def fp16_style_step(model, opt):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss_of(model)).backward()
    scaler.step(opt)
    scaler.update()


def test_plain_load_state_dict_breaks_fused_sgd_under_grad_scaler():
    """The failure itself, as the CUDA fp16 resume met it: the saved foreach flags replace fused ones."""
    saved = foreach_state()
    model = net(torch.channels_last)
    model.load_state_dict(saved["model"])
    opt = sgd(model, fused=True)
    opt.load_state_dict(saved["optimizer"])
    assert opt.param_groups[0]["fused"] is None and opt.param_groups[0]["foreach"] is True
    with pytest.raises(AssertionError, match="Expected grad_scale and found_inf to be None"):
        fp16_style_step(model, opt)


def test_resumed_optimizer_is_this_devices_and_steps_as_sgd_nesterov():
    saved = foreach_state()
    model = net(torch.channels_last)
    model.load_state_dict(saved["model"])
    opt = sgd(model, fused=True)
    load_optimizer_state(opt, saved["optimizer"])
    assert opt.param_groups[0]["fused"] is True and not opt.param_groups[0]["foreach"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bufs = {n: opt.state[p]["momentum_buffer"].clone() for n, p in model.named_parameters()}
    for n, p in model.named_parameters():  # the buffers are the saved ones, laid out as their parameters
        assert opt.state[p]["momentum_buffer"].stride() == p.stride(), n
        assert torch.equal(bufs[n], saved["optimizer"]["state"][list(before).index(n)]["momentum_buffer"]), n
    assert model[0].weight.stride() != model[0].weight.contiguous().stride()  # the case: channels_last vs NCHW

    copy = net(torch.channels_last)  # same weights: the gradients the hand computation uses
    copy.load_state_dict(model.state_dict())
    grads = dict(zip(before, torch.autograd.grad(loss_of(copy), list(copy.parameters()))))
    fp16_style_step(model, opt)
    for n, p in model.named_parameters():  # SGD-Nesterov by hand (PyTorch's documented update)
        g = grads[n] + WD * before[n]
        buf = MOMENTUM * bufs[n] + g
        expected = before[n] - LR * (g + MOMENTUM * buf)
        assert torch.allclose(p.detach(), expected, rtol=1e-5, atol=1e-7), n
        assert torch.allclose(opt.state[p]["momentum_buffer"], buf, rtol=1e-5, atol=1e-7), n


@pytest.mark.parametrize("device, compile, version, expected", [
    ("cpu", False, "2.11.0", "foreach"), ("cpu", True, "2.4.1", "foreach"),
    ("cuda", False, "2.3.1+cu121", "fused"), ("cuda", False, "2.4.0", "fused"),
    ("cuda", True, "2.3.1+cu121", "foreach"), ("cuda", True, "2.4.1+cu124", "foreach"),  # before PR #134546
    ("cuda", True, "2.5.0", "fused"), ("cuda", True, "2.5.1+cu121", "fused"), ("cuda", True, "2.11.0+cu128", "fused"),
    ("cuda:1", True, "2.10.0a0+git1234abc", "fused"),
])
def test_sgd_implementation_by_device_compile_and_torch_version(device, compile, version, expected):
    assert sgd_implementation(torch.device(device), compile, version) == expected


def test_make_optimizer_on_the_cpu_is_foreach():
    cfg = make_config("smoke", model="light_resnet18")
    opt = make_optimizer(cfg, net())
    assert opt.param_groups[0]["foreach"] is True and not opt.param_groups[0]["fused"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_resumes_a_cpu_written_run(smoke_root, tmp_path, monkeypatch):
    """Start on the CPU (foreach SGD, NCHW), continue on a CUDA card with fp16 (a T4's; forced here on any card):
    fused SGD under GradScaler, momentum buffers channels_last as the parameters."""
    import lib.train as train_mod

    run = tmp_path / "run"
    settings = dict(model="light_resnet18", base_channels=8, progress=False, num_workers=0, data_dir=str(smoke_root),
                    out=str(run), train_size=128, val_size=64, batch_size=32, epochs=2)
    train_mod.train(make_config("smoke", device="cpu", stop_after_epochs=1, **settings))
    monkeypatch.setattr(train_mod, "amp_dtype", lambda device: torch.float16)
    summary = train_mod.train(make_config("smoke", device="cuda", resume=True, **settings))
    assert summary["epochs_done"] == 2
    rows = summary["history"]
    assert all(np.isfinite(r["train_loss"]) for r in rows)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["scaler"] is not None  # fp16 ran with a GradScaler
    assert ckpt["optimizer"]["param_groups"][0]["fused"] is True
    weights = [v for k, v in ckpt["model"].items() if k.endswith("conv1.weight")]
    buffers = [s["momentum_buffer"] for s in ckpt["optimizer"]["state"].values() if s["momentum_buffer"].dim() == 4]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert buffers and all(b.is_contiguous(memory_format=torch.channels_last) for b in buffers)


def test_a_parameter_that_never_had_a_gradient_resumes_without_state():
    """A block stochastic depth dropped at every step before the checkpoint: SGD never stepped its parameters, so
    the saved state has no momentum buffer for them. Resuming keeps it so (foreach, this CPU), and the next step is
    plain SGD-Nesterov's: the same weights as an optimizer given the state by torch's own load_state_dict."""
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(4, 3))  # the second layer: never used, never a gradient
    opt = sgd(model, foreach=True)
    torch.manual_seed(2)
    model[0](torch.randn(5, 4)).square().mean().backward()
    opt.step()
    saved = opt.state_dict()
    assert sorted(saved["state"]) == [0, 1]  # momentum for the first layer's weight and bias only

    def resumed(load):
        copy = nn.Sequential(nn.Linear(4, 3), nn.Linear(4, 3))
        copy.load_state_dict(model.state_dict())
        o = sgd(copy, foreach=True)
        load(o, deepcopy(saved))  # fresh tensors, as from torch.load: load_state_dict keeps them, steps change them
        for p in copy.parameters():
            p.grad = torch.ones_like(p)  # now every parameter has a gradient
        o.step()
        return copy, o

    ours, ours_opt = resumed(load_optimizer_state)
    ref, _ = resumed(lambda o, s: o.load_state_dict(s))
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    # the never-stepped weight: its momentum starts at its first gradient g = 1 + wd * w; Nesterov steps lr * (g + m g)
    w0 = model[1].weight.detach()
    g = torch.ones_like(w0) + WD * w0
    assert torch.allclose(ours[1].weight, w0 - LR * (g + MOMENTUM * g))
    assert torch.equal(ours_opt.state[ours[1].weight]["momentum_buffer"], g)
