"""Training speed: images/s of full ATA-GAN iterations, beside a reference.

Measures the product's default configuration (discriminator step with the
attention-transfer loss on real cells + generator step) through the real
training generator, and in the same run the reference: the ATA-GAN demo
architecture re-implemented from its description (G: z -> 4x4 -> 4 x (up,
3x3 conv 512/256/128/64); D: 3x3 convs 1024 s2, 1024 s2, 512, 256, 256, 256,
GAP, FC; a ResNet-18 teacher run on the input upsampled x4 inside every step;
fp32, batch 25). Prints one JSON object with both figures and their ratio.
``--profile`` adds where a step's time goes (torch.profiler over 20 steps:
wall and device-kernel milliseconds per step, operations issued per step, and
the operations that cost the most host and device time).

    python benchmarks/bench_train.py --device cuda --steps 300
    python benchmarks/bench_train.py --device cuda --steps 300 --profile
    python benchmarks/bench_train.py --device cuda --steps 300 --eager --no-reference
    python benchmarks/bench_train.py --device cuda --steps 300 --set g_padding=reflect
    python benchmarks/bench_train.py --device cpu --steps 20 --ref-steps 3
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from _profiling import op_summary  # benchmarks/, beside this script

from napari_atagan.gan.attention import at_loss
from napari_atagan.gan.config import TrainConfig
from napari_atagan.data import from_arrays
from napari_atagan.device import describe, resolve_device, synchronize
from napari_atagan.simulate import simulate_crops
from napari_atagan.gan.training import Finished, Progress, train


def bench_default(device: str, steps: int, batch: int, n_cells: int, teacher: str,
                  **runtime) -> dict:
    """images/s of the default configuration; ``runtime``: ``compile``, ``cuda_graph``."""
    crops = simulate_crops(n_cells, size=64, seed=0)
    names = list(crops.patterns)
    data = from_arrays(crops.images, crops.masks, [names[i] for i in crops.labels])
    cfg = TrainConfig(steps=steps, batch_size=batch, device=device, log_every=max(steps // 10, 1),
                      sample_every=10 ** 9, checkpoint_every=10 ** 9, teacher=teacher,
                      classifier_epochs=1, **runtime)
    import tempfile

    rates, wall = [], None
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for ev in train(cfg, data, tmp):
            if isinstance(ev, Progress):
                rates.append(ev.images_per_s)
            if isinstance(ev, Finished):
                wall = time.perf_counter() - t0
    # the first logging window includes warm-up (cuDNN autotune, compilation)
    steady = rates[1:] if len(rates) > 2 else rates
    return {"images_per_s": float(np.median(steady)), "batch": batch, "steps": steps,
            "wall_s_including_setup": round(wall, 2)}


def profile_steps(device: str, batch: int, n_cells: int, teacher: str, steps: int = 20,
                  top: int = 12, **runtime) -> dict:
    """Where the time of a training step goes: torch.profiler over ``steps`` steps of
    the default configuration (after 10 warm-up steps), as a summary: wall time per
    step, the device's kernel time per step, tensor operations issued per step, and
    the operations that take the most host time and the most device time."""
    from torch.profiler import ProfilerActivity, profile

    crops = simulate_crops(n_cells, size=64, seed=0)
    names = list(crops.patterns)
    data = from_arrays(crops.images, crops.masks, [names[i] for i in crops.labels])
    warm = 10
    cfg = TrainConfig(steps=warm + steps, batch_size=batch, device=device, log_every=1,
                      sample_every=10 ** 9, checkpoint_every=10 ** 9, teacher=teacher,
                      classifier_epochs=1, **runtime)
    activities = [ProfilerActivity.CPU]
    cuda = resolve_device(device).type == "cuda"
    if cuda:
        activities.append(ProfilerActivity.CUDA)
    import tempfile

    prof = profile(activities=activities)
    with tempfile.TemporaryDirectory() as tmp:
        for ev in train(cfg, data, tmp):
            # one Progress per step (log_every=1), each after a device synchronisation
            if isinstance(ev, Progress) and ev.step == warm:
                prof.__enter__()
                t_first = time.perf_counter()
            elif isinstance(ev, Progress) and ev.step == warm + steps:
                wall = time.perf_counter() - t_first
                prof.__exit__(None, None, None)
    out = {"steps": steps, "batch": batch, "wall_ms_per_step": round(wall / steps * 1000, 2)}
    out.update(op_summary(prof.key_averages(), steps, top, cuda))
    return out


# --------------------------------------------------------------------------- reference
class RefG(nn.Module):
    def __init__(self, z=100, widths=(512, 256, 128, 64)):
        super().__init__()
        self.fc = nn.Linear(z, 4 * 4 * widths[0])
        self.w0 = widths[0]
        layers, c = [], widths[0]
        for w in widths:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, w, 3, 1, 1),
                       nn.BatchNorm2d(w), nn.ReLU(True)]
            c = w
        layers += [nn.Conv2d(c, 1, 3, 1, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(F.relu(self.fc(z)).view(-1, self.w0, 4, 4))


class RefD(nn.Module):
    def __init__(self):
        super().__init__()
        spec = [(1024, 2), (1024, 2), (512, 1), (256, 1), (256, 1), (256, 1)]
        layers, c = [], 1
        for i, (w, s) in enumerate(spec):
            layers.append(nn.Conv2d(c, w, 3, s, 1))
            if i < len(spec) - 1:
                layers += [nn.BatchNorm2d(w), nn.LeakyReLU(0.2, True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, 1)

    def forward(self, x):
        a = self.features(x)
        logit = self.fc(a.mean((2, 3)))[:, 0]
        cam = torch.einsum("c,bchw->bhw", self.fc.weight[0], a)
        return logit, cam


def ref_teacher() -> nn.Module:
    net = torchvision.models.resnet18(weights=None, num_classes=6)
    net.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return net.eval()


def teacher_cam(net, x):
    h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    a = net.layer4(net.layer3(net.layer2(net.layer1(h))))
    p = net.fc(a.mean((2, 3))).softmax(1)
    return torch.einsum("bk,kc,bchw->bhw", p, net.fc.weight, a)


def bench_reference(device: torch.device, steps: int, batch: int = 25) -> dict:
    G, D, T = RefG().to(device), RefD().to(device), ref_teacher().to(device)
    oG = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    oD = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
    real = torch.rand(batch * 8, 1, 64, 64, device=device) * 2 - 1

    def step(i):
        x = real[(i * batch) % len(real):][:batch]
        z = torch.randn(batch, 100, device=device)
        fake = G(z)
        lr, cam = D(x)
        lf, _ = D(fake.detach())
        with torch.no_grad():
            t = teacher_cam(T, F.interpolate(x, scale_factor=4, mode="bilinear"))
        loss_d = (F.softplus(-lr).mean() + F.softplus(lf).mean()
                  + at_loss(cam, F.interpolate(t[:, None], size=cam.shape[-2:])[:, 0]))
        oD.zero_grad()
        loss_d.backward()
        oD.step()
        lg, _ = D(fake)
        loss_g = F.softplus(-lg).mean()
        oG.zero_grad()
        loss_g.backward()
        oG.step()

    warm = max(2, steps // 10)
    for i in range(warm):
        step(i)
    synchronize(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    synchronize(device)
    dt = time.perf_counter() - t0
    return {"images_per_s": steps * batch / dt, "batch": batch, "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=300, help="steps of the default config")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--ref-steps", type=int, default=50, help="steps of the reference")
    ap.add_argument("--cells", type=int, default=2000, help="simulated training cells")
    ap.add_argument("--teacher", default="mask", choices=("mask", "classifier", "none"))
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--eager", action="store_true",
                    help="run the step op by op instead of replaying it as a CUDA graph "
                         "(config cuda_graph=false)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="change a training option of the measured configuration, as in "
                         "`napari-atagan train --set` (e.g. g_padding=reflect); repeatable")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="also profile 20 steps: host and device time per step and by operation")
    args = ap.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        options = dict(TrainConfig.parse_option(text) for text in args.set)
    except ValueError as exc:
        ap.error(str(exc))
    runtime = {"compile": args.compile, "cuda_graph": not args.eager, **options}
    ours = bench_default(str(device), args.steps, args.batch, args.cells, args.teacher,
                         **runtime)
    if device.type == "cuda":
        ours["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    result = {"device": describe(device), "torch": torch.__version__, "default": ours,
              "threads": torch.get_num_threads()}
    if options:
        result["options"] = options
    if not args.no_reference:
        ref = bench_reference(device, args.ref_steps)
        result["reference"] = ref
        result["ratio"] = round(ours["images_per_s"] / ref["images_per_s"], 2)
    if args.profile:
        result["profile"] = profile_steps(str(device), args.batch, args.cells, args.teacher,
                                          **runtime)
    result["peak_host_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
