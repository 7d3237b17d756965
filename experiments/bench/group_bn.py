"""What GroupBatchNorm2d costs: its loop (BatchNorm2d once per group, then a cat) against a one-call
candidate kept here (the groups as the channels of one native batch norm) and against plain
BatchNorm2d over the whole batch. Before timing, the candidate is checked equal to the loop.

  python experiments/bench/group_bn.py [--rounds 11] [--steps 7] [--threads 1] [--bn-batch 64]
                                      [--no-step] [--cuda-only]

Per layer: forward + backward (input, weight and bias gradients) of one BN at batch 128, the CIFAR
ResNet shapes (16 channels at 32x32, 32 at 16x16, 64 at 8x8) and the same K=4 nets packed as one
wide net (4x the channels), channels_last, fp32 and bf16 autocast (the input in bf16, as from a
conv). The variants run interleaved, `--rounds` times; each time printed is the median. On the
CPU with `--threads` threads; on CUDA, when there is one, timed with CUDA events, eagerly and as
replays of a CUDA graph holding the forward and backward. "ops" counts the ATen calls of one
forward + backward other than views and allocations: each is at least one kernel on a GPU.
Then a whole ResNet-56 training step on the CPU (SGD, batch 128, bf16 autocast, channels_last):
bn_batch=64 with the loop and with the one-call candidate, and bn_batch=0; medians of `--steps`.
"""
import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from resdepth.models import GroupBatchNorm2d, check_bn_batch, cifar_resnet

SHAPES = [(16, 32), (32, 16), (64, 8)]  # (channels, height = width) of the three stages
BATCH = 128


def _groups_to_channels(x, groups, channels_last):
    """(G*B, C, H, W) -> (B, G*C, H, W), one copy: channel c of image g*B + b becomes channel
    g*C + c of image b. The copy is channels-last if asked, else contiguous."""
    n, c, h, w = x.shape
    if channels_last:
        z = x.permute(0, 2, 3, 1).reshape(groups, n // groups, h, w, c).permute(1, 2, 3, 0, 4)
        return z.reshape(n // groups, h, w, groups * c).permute(0, 3, 1, 2)
    z = x.reshape(groups, n // groups, c, h, w).transpose(0, 1)
    return z.reshape(n // groups, groups * c, h, w)


def _channels_to_groups(z, groups, channels_last):
    """The inverse of _groups_to_channels."""
    b, gc, h, w = z.shape
    if channels_last:
        x = z.permute(0, 2, 3, 1).reshape(b, h, w, groups, gc // groups).permute(3, 0, 1, 2, 4)
        return x.reshape(groups * b, h, w, gc // groups).permute(0, 3, 1, 2)
    x = z.reshape(b, groups, gc // groups, h, w).transpose(0, 1)
    return x.reshape(groups * b, gc // groups, h, w)


def one_call_forward(self, x):
    """The candidate: the G groups as the G*C channels of one native batch norm (one statistics
    reduction and one normalising pass for all groups), by a copy in and a copy out; the running
    statistics get the G updates r <- (1 - m) r + m s_g, group after group, in closed form:
    r <- (1 - m)^G r + m sum_g (1 - m)^(G - 1 - g) s_g. Static shapes, no host sync."""
    if not self.training or not self.bn_batch or len(x) <= self.bn_batch:
        return nn.BatchNorm2d.forward(self, x)
    check_bn_batch(self.bn_batch, len(x))
    groups = len(x) // self.bn_batch
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    z = _groups_to_channels(x, groups, channels_last)
    stats = self.running_mean.new_zeros(2, z.shape[1])  # momentum 1: each group's batch stats
    y = F.batch_norm(z, stats[0], stats[1], self.weight.repeat(groups), self.bias.repeat(groups),
                     True, 1.0, self.eps)
    with torch.no_grad():
        m = self.momentum
        decay = torch.logspace(groups - 1, 0, groups, base=1 - m, dtype=stats.dtype,
                               device=stats.device)
        new = (stats.view(2, groups, -1) * decay[:, None]).sum(1)
        running = [self.running_mean, self.running_var]
        torch._foreach_mul_(running, (1 - m) ** groups)
        torch._foreach_add_(running, list(new), alpha=m)
        self.num_batches_tracked.add_(groups)
    return _channels_to_groups(y, groups, channels_last)


@contextlib.contextmanager
def one_call_everywhere():
    """Every GroupBatchNorm2d runs the candidate inside `with` (for the whole-step timing)."""
    current = GroupBatchNorm2d.forward
    GroupBatchNorm2d.forward = one_call_forward
    try:
        yield
    finally:
        GroupBatchNorm2d.forward = current


def check_equal(bn_batch):
    """The candidate against the loop: output, input/weight/bias gradients and running statistics
    over two steps, fp32 and bf16 autocast, channels_last and contiguous."""
    for bf16 in (False, True):
        for fmt in (torch.channels_last, torch.contiguous_format):
            torch.manual_seed(1)
            dtype = torch.bfloat16 if bf16 else torch.float32
            x = (torch.randn(BATCH, 8, 6, 6) * 3 + 2).to(dtype).contiguous(memory_format=fmt)
            grad = torch.randn(BATCH, 8, 6, 6).to(dtype).contiguous(memory_format=fmt)
            bns = [GroupBatchNorm2d(8, bn_batch) for _ in range(2)]
            for bn in bns:
                torch.manual_seed(2)
                with torch.no_grad():
                    bn.weight.uniform_(0.5, 1.5), bn.bias.normal_(), bn.running_mean.normal_()
            for step in range(2):
                outs = []
                for bn, forward in zip(bns, (GroupBatchNorm2d.forward, one_call_forward)):
                    xi = (x + step).requires_grad_()
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        y = forward(bn, xi)
                    outs.append((y, *torch.autograd.grad(y, (xi, bn.weight, bn.bias), grad),
                                 bn.running_mean.clone(), bn.running_var.clone()))
                for a, b in zip(*outs):
                    tight = {} if a.dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-5}
                    torch.testing.assert_close(a, b, **tight)
    print(f"the one-call candidate equals the loop (bn_batch {bn_batch}, batch {BATCH}, "
          "fp32 and bf16, two steps)")


VARIANTS = {  # name -> (bn, x) -> output
    "loop": GroupBatchNorm2d.forward,
    "one call": one_call_forward,
    "whole batch": nn.BatchNorm2d.forward,
}


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__
        if not func.is_view and name != "_unsafe_view.default" and not name.startswith("empty"):
            self.n += 1
        return func(*args, **(kwargs or {}))


def layer(variant, bn, x, grad, bf16):
    """One forward + backward of one BN layer."""
    def run():
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            y = VARIANTS[variant](bn, x)
        return torch.autograd.grad(y, (x, bn.weight, bn.bias), grad)
    return run


def cpu_ms(run, reps):
    t = time.perf_counter()
    for _ in range(reps):
        run()
    return (time.perf_counter() - t) / reps * 1e3


def cuda_ms(run, reps, graph):
    """Mean ms per call over `reps` calls, by CUDA events; `graph`: replays of a captured call."""
    call = run
    if graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capturing stream, as CUDA graphs need
            for _ in range(3):
                run()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            run()
        call = g.replay
    for _ in range(3):
        call()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        call()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def bench_layers(args, device):
    modes = ["eager"] if device.type == "cpu" else ["eager", "graph"]
    print(f"\nper layer, forward + backward, batch {BATCH}, bn_batch {args.bn_batch} "
          f"({BATCH // args.bn_batch} groups), channels_last, {device.type}"
          + (f", {args.threads} thread(s)" if device.type == "cpu" else "")
          + f": median ms of {args.rounds} interleaved rounds")
    names = list(VARIANTS)
    print(f"{'dtype':5} {'mode':5} {'C':>4} {'HxW':>5} " + " ".join(f"{n:>11}" for n in names)
          + f" {'one call/loop':>13} {'whole/loop':>10}   ops " + "/".join(names))
    for dtype in args.dtype.split(","):
        bf16 = dtype == "bf16"
        for k in (1, 4):
            for c, hw in SHAPES:
                torch.manual_seed(0)
                x = torch.randn(BATCH, k * c, hw, hw, device=device)
                x = x.to(torch.bfloat16 if bf16 else torch.float32)
                x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
                grad = torch.randn_like(x)
                bn = GroupBatchNorm2d(k * c, args.bn_batch).to(device)
                runs = {n: layer(n, bn, x, grad, bf16) for n in names}
                ops = []
                for n in names:
                    with CountOps() as count:
                        runs[n]()
                    ops.append(count.n)
                reps = max(1, round(2**22 / x.numel()))  # about 2 ms and more per measurement
                for mode in modes:
                    times = {n: [] for n in names}
                    for r in range(args.rounds):
                        for n in names[r % 3:] + names[:r % 3]:  # interleaved, order rotating
                            if device.type == "cpu":
                                times[n].append(cpu_ms(runs[n], reps))
                            else:
                                times[n].append(cuda_ms(runs[n], 20 * reps, mode == "graph"))
                    med = [statistics.median(times[n]) for n in names]
                    print(f"{dtype:5} {mode:5} {k * c:>4} {hw:>2}x{hw:<2} "
                          + " ".join(f"{m:>11.3f}" for m in med)
                          + f" {med[1] / med[0]:>13.2f} {med[2] / med[0]:>10.2f}   "
                          + "/".join(map(str, ops)), flush=True)


def bench_step(args):
    """ms per ResNet-56 SGD step on the CPU, bf16 autocast, channels_last, batch 128."""
    torch.manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,))
    variants = {}
    for name, bn_batch, ctx in [("bn_batch=64, loop", args.bn_batch, contextlib.nullcontext),
                                ("bn_batch=64, one call", args.bn_batch, one_call_everywhere),
                                ("bn_batch=0", 0, contextlib.nullcontext)]:
        torch.manual_seed(0)
        net = cifar_resnet(depth=56, bn_batch=bn_batch).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        variants[name] = (net.train(), opt, ctx)

    def step(name):
        net, opt, ctx = variants[name]
        with ctx():
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return (time.perf_counter() - t) * 1e3

    names = list(variants)
    for n in names:  # warm-up
        step(n)
        step(n)
    times = {n: [] for n in names}
    for r in range(args.steps):
        for n in names[r % 3:] + names[:r % 3]:
            times[n].append(step(n))
    print(f"\nResNet-56 training step on the CPU, {args.threads} thread(s), batch {BATCH}, SGD, "
          f"bf16 autocast, channels_last: median of {args.steps} interleaved steps")
    base = statistics.median(times[names[0]])
    for n in names:
        med = statistics.median(times[n])
        print(f"  {n:24} {med:9.1f} ms  ({med / base:.2f}x the loop; all: "
              + " ".join(f"{t:.0f}" for t in times[n]) + ")")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bn-batch", type=int, default=64)
    p.add_argument("--dtype", default="fp32,bf16")
    p.add_argument("--no-step", action="store_true", help="skip the whole ResNet-56 step")
    p.add_argument("--cuda-only", action="store_true", help="per layer on CUDA only, no CPU")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA"))
    check_equal(args.bn_batch)
    if not args.cuda_only:
        bench_layers(args, torch.device("cpu"))
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        bench_layers(args, torch.device("cuda"))
    if not args.no_step:
        bench_step(args)


if __name__ == "__main__":
    main()
