"""The official Barlow Twins PyTorch training step, timed beside barlow_jax.bench.

Written from the semantics of facebookresearch/barlowtwins ``main.py`` (not a
copy): torchvision ResNet-50 with ``zero_init_residual=True`` and ``fc =
Identity``; projector Linear(2048, 8192, bias=False), BatchNorm1d, ReLU,
Linear(8192, 8192, bias=False), BatchNorm1d, ReLU, Linear(8192, 8192,
bias=False); each view's embedding through BatchNorm1d(affine=False);
C = bn(z1)^T bn(z2) / batch; loss = sum (1 - C_ii)^2 + 0.0051 sum_{i!=j} C_ij^2;
LARS (weight decay and adaptation only for parameters with ndim > 1,
momentum 0.9, eta 0.001, the learning rate applied after the momentum);
SyncBatchNorm + DistributedDataParallel (one process here). Synthetic
views already on the device: input loading is excluded, like the JAX
benchmark.

Modes (FIELD_NOTES §6 rows):
  shipped        fp16 autocast + GradScaler, NCHW: main.py as shipped
  channels_last  the same with channels_last tensors
  bf16_compile   bf16 autocast, channels_last, torch.compile
  fp32           no autocast (the CPU test's mode)

    python launch/h200_torch_reference.py --mode=shipped --batch=256 --json_out=FILE

``--arch=tiny`` replaces ResNet-50 by a small ResNet-like trunk defined
here (for CPU tests where torchvision is not installed).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn as nn

MODES = ("shipped", "channels_last", "bf16_compile", "fp32")


class Lars(torch.optim.Optimizer):
    """main.py's LARS: per parameter p with gradient g and buffer mu,
    d = g + wd p and q = eta |p| / |d| (if both norms > 0, else 1), d = q d, for
    ndim > 1 only; mu = momentum mu + d; p -= lr mu."""

    def __init__(self, params, lr, weight_decay=1.5e-6, momentum=0.9, eta=0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      eta=eta))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:
                    d = d.add(p, alpha=group["weight_decay"])
                    p_norm, d_norm = torch.norm(p), torch.norm(d)
                    ones = torch.ones_like(p_norm)
                    q = torch.where(p_norm > 0, torch.where(d_norm > 0,
                                                            group["eta"] * p_norm / d_norm,
                                                            ones), ones)
                    d = d.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(d)
                p.add_(mu, alpha=-group["lr"])


def bt_loss(z1, z2, bn, lambd=0.0051):
    """(loss, C) of main.py's BarlowTwins.forward after the projector (one process)."""
    c = bn(z1).T @ bn(z2)
    c = c / z1.shape[0]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(c)   # as main.py, outside autograd's reduction
    diag = torch.diagonal(c)
    on_diag = (diag - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - diag.pow(2).sum()
    return on_diag + lambd * off_diag, c


class _TinyBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        nn.init.zeros_(self.bn2.weight)  # zero_init_residual
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                   nn.BatchNorm2d(cout)) if stride != 1 or cin != cout
                     else nn.Identity())

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.down(x))


def tiny_trunk(width=8):
    """A small ResNet-18-like trunk (not torchvision) for CPU tests; 8 * width features."""
    layers = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for i in range(4):
        layers.append(_TinyBlock(cin, width * 2 ** i, 1 if i == 0 else 2))
        cin = width * 2 ** i
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), cin


class BarlowTwins(nn.Module):
    def __init__(self, projector="8192-8192-8192", arch="resnet50", lambd=0.0051):
        super().__init__()
        if arch == "resnet50":
            import torchvision
            self.backbone = torchvision.models.resnet50(zero_init_residual=True)
            self.backbone.fc = nn.Identity()
            features = 2048
        else:
            self.backbone, features = tiny_trunk()
        sizes = [features] + [int(w) for w in projector.split("-")]
        layers = []
        for i in range(len(sizes) - 2):
            layers += [nn.Linear(sizes[i], sizes[i + 1], bias=False),
                       nn.BatchNorm1d(sizes[i + 1]), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
        self.projector = nn.Sequential(*layers)
        self.bn = nn.BatchNorm1d(sizes[-1], affine=False)
        self.lambd = lambd

    def forward(self, y1, y2):
        z1 = self.projector(self.backbone(y1))
        z2 = self.projector(self.backbone(y2))
        return bt_loss(z1, z2, self.bn, self.lambd)[0]


def _init_single_process_group(device):
    if torch.distributed.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, rank=0, world_size=1)


def run(mode="shipped", batch=256, size=224, projector="8192-8192-8192", arch="resnet50",
        steps=20, warmup=5, device=None, ddp=None):
    """Times the step; returns a dict (pairs/s, step time, last loss, settings)."""
    if mode not in MODES:
        raise ValueError(f"--mode={mode!r}: use one of {MODES}.")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    ddp = cuda if ddp is None else ddp
    torch.backends.cudnn.benchmark = True
    model = BarlowTwins(projector, arch).to(device)
    if ddp:
        _init_single_process_group(device)
        if cuda:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    channels_last = mode in ("channels_last", "bf16_compile")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index or 0]
                                              if cuda else None) if ddp else model
    if mode == "bf16_compile":
        net = torch.compile(net)
    opt = Lars(model.parameters(), lr=0.2 * batch / 256)
    amp_dtype = {"shipped": torch.float16, "channels_last": torch.float16,
                 "bf16_compile": torch.bfloat16}.get(mode)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    gen = torch.Generator(device=device).manual_seed(0)
    y1 = torch.randn(batch, 3, size, size, device=device, generator=gen)
    y2 = torch.randn(batch, 3, size, size, device=device, generator=gen)
    if channels_last:
        y1, y2 = (y.contiguous(memory_format=torch.channels_last) for y in (y1, y2))

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            loss = net(y1, y2)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(warmup):
        loss = step()
    sync()
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    dt = (time.perf_counter() - t0) / max(steps, 1)
    mem = torch.cuda.max_memory_allocated(device) if cuda else None
    return {"implementation": "pytorch_official_step", "mode": mode, "arch": arch,
            "projector": projector, "batch_size": batch, "image_size": size,
            "device": torch.cuda.get_device_name(device) if cuda else "cpu",
            "torch": torch.__version__, "ddp": bool(ddp),
            "pairs_per_sec": batch / dt, "step_time_ms": dt * 1e3, "timed_steps": steps,
            "warmup_seconds": warm_s, "peak_memory_bytes": mem,
            "last_loss": float(loss.detach().float())}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", default="shipped", choices=MODES)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--projector", default="8192-8192-8192")
    p.add_argument("--arch", default="resnet50", choices=("resnet50", "tiny"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default=None)
    p.add_argument("--no_ddp", action="store_true", help="plain module, no process group")
    p.add_argument("--json_out", default="")
    a = p.parse_args()
    r = run(a.mode, a.batch, a.size, a.projector, a.arch, a.steps, a.warmup, a.device,
            ddp=False if a.no_ddp else None)
    print(f"PyTorch official step, {r['mode']}: {r['pairs_per_sec']:.1f} image pairs/s, "
          f"{r['step_time_ms']:.2f} ms/step (batch {r['batch_size']}, {r['image_size']}px, "
          f"{r['arch']}, proj {r['projector']}, {r['device']}, torch {r['torch']}); "
          f"loss {r['last_loss']:.4g}", flush=True)
    if a.json_out:
        with open(a.json_out, "a") as f:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
