"""Where a training step's device time goes: kernel time by kind (convolution, batch norm, elementwise, SGD, ...).

  python experiments/bench/profile_step.py [--depth 56] [--steps 20] [--out profile.json]

The step is bench's minimal loop without the CUDA graph (the profiler names each kernel there): the network in
channels_last, bf16 autocast on a GPU, fused SGD, batch 128 of random images. It prints the device time per step
summed over kernels, by kind, and writes the table as JSON. Set against bench's ms/step with the graph, it says
whether a step is the sum of its kernels (the GPU is busy) and which kind of kernel to shrink next: batch norm and
elementwise kernels can be fused by torch.compile, convolutions only by other algorithms or bigger batches.
"""
import argparse
import json
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from resdepth.models import cifar_resnet

KINDS = (  # first match wins: cuDNN's batch-norm kernels would otherwise pass for convolutions
    ("batch norm", ("batch_norm", "batchnorm", "bn_fw", "bn_bw", "bn_")),
    ("SGD update", ("multi_tensor", "fused_sgd", "sgd")),
    ("convolution", ("conv", "implicit_gemm", "wgrad", "dgrad", "fprop", "xmma", "cutlass", "gemm", "sm90_", "sm80_")),
    ("elementwise (relu, add, cast, copy)", ("elementwise", "relu", "threshold", "add", "copy", "cast", "fill", "mul",
                                             "vectorized", "unrolled")),
    ("reduction, loss", ("reduce", "softmax", "nll", "mean", "sum")))


def kind(name: str) -> str:
    low = name.lower()
    return next((k for k, words in KINDS if any(w in low for w in words)), "other")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--depth", type=int, default=56)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default="profile.json")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True
    net = cifar_resnet(depth=args.depth, block="residual", shortcut="A").to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, fused=cuda,
                          foreach=None if cuda else True)
    x = torch.randn(128, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(10):  # cuDNN autotuning, allocator warm-up
        step()
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    per_kind, per_kernel, count = defaultdict(float), defaultdict(float), 0
    for e in prof.events():
        if cuda and e.device_type != torch.autograd.DeviceType.CUDA:  # GPU: kernels only
            continue
        t = e.time_range.elapsed_us() if cuda else e.cpu_time_total  # microseconds
        if not cuda and e.cpu_parent is not None:  # CPU: top-level operators only, no double counting
            continue
        per_kind[kind(e.name)] += t
        per_kernel[e.name] += t
        count += 1
    total = sum(per_kind.values())
    print(f"ResNet-{args.depth}, batch 128, {torch.cuda.get_device_name() if cuda else 'CPU'}: "
          f"{total / args.steps / 1e3:.2f} ms of {'kernel' if cuda else 'operator'} time per step, "
          f"{count / args.steps:.0f} {'kernels' if cuda else 'operators'} per step")
    for k, t in sorted(per_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<40} {t / args.steps / 1e3:7.3f} ms  {100 * t / total:5.1f}%")
    print("top kernels:" if cuda else "top operators:")
    for name, t in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {t / args.steps / 1e3:7.3f} ms  {kind(name):<12.12} {name[:90]}")
    with open(args.out, "w") as f:
        json.dump({"device": torch.cuda.get_device_name() if cuda else "CPU", "depth": args.depth, "batch_size": 128,
                   "steps": args.steps, "torch": torch.__version__, "ms_per_step": total / args.steps / 1e3,
                   "per_step": count / args.steps,
                   "ms_per_step_by_kind": {k: t / args.steps / 1e3 for k, t in per_kind.items()},
                   "top": {n: t / args.steps / 1e3 for n, t in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:40]}},
                  f, indent=2)


if __name__ == "__main__":
    main()
