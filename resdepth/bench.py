"""`resdepth bench`: how fast the training path is, measured three ways on the current device, in one process.

  ours          the real path as `resdepth train` runs it: device-resident uint8 data, batched crop/flip,
                the LightningModule and Lightning's fit loop (records and checkpoints excluded); on a CUDA GPU
                each iteration is one CUDA-graph replay unless --cuda-graph false
  minimal       the same network, data tensors, augmentation and step (graph or not) in a hand-written
                PyTorch loop (ours / minimal = Lightning's overhead)
  conventional  what popular CIFAR reproductions do: a torchvision-style dataset of PIL images with
                RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize, a DataLoader with
                workers, fp32, a loss.item() and an accuracy read every step (conventional / ours = speed-up)

With --logger csv|tensorboard|wandb, `ours` is timed with that logger and the run's record keeping attached, as
`resdepth train logger=...` attaches them (the one record comes after the timed iterations: loggers act only at
records), then without again; the logger's cost per iteration is its time against the mean of the two without,
and the difference between those two shows the noise.

Each is timed after warm-up, between two device synchronisations. With --concurrent 1,2,4 it also runs k copies
of `ours` at once on this device and reports the aggregate images/s. The projected full paper sweep (5 depths x
plain/residual x 64k iterations) uses the measured ms/step (unmeasured depths: linear in depth between measured
ones, proportional to depth past them).
Prints a table and writes bench.json.

Imports train.build (the run as `resdepth train` builds it), sweep's grid, device, data, models and system.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .rundir import atomic_write_text


@functools.cache
def paper_sweep() -> dict:
    """The paper's sweep as conf/ defines it (experiment=paper): its depths, iterations and records per run."""
    from .config import compose
    from .sweep import expand_grid

    cfg = compose(["experiment=paper"])[0]
    depths = sorted({int(dict(o.split("=", 1) for o in job)["model.depth"]) for job in expand_grid([])})
    return {"depths": depths, "steps": cfg["trainer"]["max_steps"],
            "records": cfg["trainer"]["max_steps"] // cfg["trainer"]["eval_every"]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_config(args, depth: int, block: str, steps: int, logger: str = "none") -> dict:
    """A run config for the benchmark, composed from conf/ like any run."""
    from .config import compose

    overrides = [f"data={args.data}", f"logger={logger}", f"model.depth={depth}", f"model.block={block}",
                 f"optim.batch_size={args.batch_size}", f"optim.bn_batch={args.bn_batch}", f"trainer.max_steps={steps}",
                 f"trainer.eval_every={steps}", f"trainer.precision={args.precision}",
                 f"trainer.compile={str(args.compile).lower()}", f"trainer.compile_mode={args.compile_mode}",
                 f"trainer.cuda_graph={args.cuda_graph}", f"trainer.accelerator={args.accelerator}",
                 "trainer.progress=false"]
    return compose(overrides)[0]


def _barrier(spec: str | None) -> None:
    """'DIR:K': announce readiness in DIR and wait until K processes have (so concurrent timings overlap)."""
    if not spec:
        return
    folder, k = spec.rsplit(":", 1)
    Path(folder, f"ready-{os.getpid()}").touch()
    deadline = time.time() + 600
    while len(list(Path(folder).glob("ready-*"))) < int(k) and time.time() < deadline:
        time.sleep(0.01)


def time_ours(cfg: dict, warmup: int, steps: int, barrier: str | None = None) -> dict:
    """ms/step of the real training path (Lightning's fit loop) between iterations warmup and warmup + steps; with
    cfg's logger, that logger and the run's Recorder attached (in a temporary run directory, removed after)."""
    import pytorch_lightning as pl

    from .training.loggers import RunLogger
    from .training.records import Recorder
    from .training.train import build

    data, system, kwargs = build(cfg)
    marks = {}

    class StepTimer(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == warmup:
                _sync(module.device)
                _barrier(barrier)
                if module.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(module.device)
                marks["t0"] = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == warmup + steps:
                _sync(module.device)
                marks["t1"] = time.perf_counter()
                marks["device"] = module.device

    kwargs["max_steps"] = warmup + steps
    callbacks, logger = [StepTimer()], None
    with tempfile.TemporaryDirectory(prefix="resdepth-bench-") as run_dir:
        if cfg.get("logger"):  # as `resdepth train logger=...` attaches it; the one record comes after the timing
            logger = RunLogger(cfg, Path(run_dir), 0)
            kwargs["logger"] = logger.logger
            callbacks.append(Recorder(Path(run_dir), cfg, {}, logger))
        try:
            pl.Trainer(**kwargs, callbacks=callbacks).fit(system, datamodule=data)
        finally:
            if logger:
                logger.close()
    device = marks["device"]
    system.to(device)  # Lightning's teardown moves the module back to the CPU
    t_eval = time.perf_counter()
    system.evaluate(data.eval_splits["test"])
    t_eval = time.perf_counter() - t_eval
    return {"ms_per_step": 1e3 * (marks["t1"] - marks["t0"]) / steps, "eval_s": t_eval,
            "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            "cuda_graph": system.whole_step, "device": device}


def time_minimal(cfg: dict, warmup: int, steps: int, device: torch.device) -> dict:
    """The same network, data and augmentation in a hand-written loop: no Lightning, no metrics."""
    from .data import DataModule, TrainBatches
    from .models import cifar_resnet
    from .training.device import resolve_device, use_cuda_graph
    from .training.step import WholeStep

    data = DataModule(cfg["data"], batch_size=cfg["optim"]["batch_size"], seed=0).load().to(device)
    m, o, t = cfg["model"], cfg["optim"], cfg["trainer"]
    torch.manual_seed(0)
    net = cifar_resnet(depth=m["depth"], block=m["block"], shortcut=m["shortcut"], num_classes=data.num_classes,
                       bn_batch=o["bn_batch"]).to(device, memory_format=torch.channels_last)
    forward = torch.compile(net, mode=t["compile_mode"]) if t["compile"] else net
    fused = device.type == "cuda"
    opt = torch.optim.SGD(net.parameters(), lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"],
                          fused=fused, foreach=None if fused else True)
    accelerator, precision = resolve_device(t)  # as `ours` resolves them
    bf16 = precision == "bf16-mixed"
    graphed = use_cuda_graph(t, accelerator, precision)
    whole = WholeStep(forward, opt, bf16) if graphed else None
    batches = iter(TrainBatches(data.train, o["batch_size"], seed=0, pad=data.cfg["pad"]))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        images, labels, dy, dx, flip = next(batches)
        x = data.augment(images, dy, dx, flip).contiguous(memory_format=torch.channels_last)
        if whole is not None:
            whole(x, labels)
            continue
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(forward(x), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return {"ms_per_step": 1e3 * (time.perf_counter() - t0) / steps,
            "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            "cuda_graph": graphed}


class PILDataset(torch.utils.data.Dataset):
    """torchvision's CIFAR10 __getitem__: a uint8 HWC array -> PIL image -> transforms."""

    def __init__(self, images: np.ndarray, labels: list[int], transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def time_conventional(cfg: dict, warmup: int, steps: int, device: torch.device, workers: int) -> dict:
    """The usual pipeline: PIL transforms per image in DataLoader workers, fp32, per-step .item()."""
    from torchvision import transforms as T

    from .data import DataModule
    from .models import cifar_resnet

    data = DataModule(cfg["data"], batch_size=cfg["optim"]["batch_size"], seed=0).load()
    m, o = cfg["model"], cfg["optim"]
    mean = data.train.images.double().mean((0, 2, 3)).div(255).tolist()
    std = data.train.images.double().div(255).std((0, 2, 3)).tolist()
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(mean, std)])
    dataset = PILDataset(data.train.images.permute(0, 2, 3, 1).numpy(), data.train.labels.tolist(), transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=o["batch_size"], shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", drop_last=True,
                                         persistent_workers=workers > 0)
    torch.manual_seed(0)
    net = cifar_resnet(depth=m["depth"], block=m["block"], shortcut=m["shortcut"],
                       num_classes=data.num_classes).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    i, correct, seen = 0, 0, 0
    while i < warmup + steps:
        for x, y in loader:
            if i == warmup:
                _sync(device)
                t0 = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = net(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            _ = loss.item()  # the running-average meters of the usual training scripts
            correct += (out.argmax(1) == y).sum().item()
            seen += len(y)
            i += 1
            if i == warmup + steps:
                break
    _sync(device)
    return {"ms_per_step": 1e3 * (time.perf_counter() - t0) / steps,
            "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}


def concurrent(args, k: int, depth: int) -> dict:
    """Aggregate images/s of k copies of `ours` training at once on this device (child processes)."""
    tmp = Path(args.out).with_suffix(f".k{k}")
    tmp.mkdir(parents=True, exist_ok=True)
    for f in tmp.glob("*"):
        f.unlink()
    cmd = [sys.executable, "-m", "resdepth.cli", "bench", "--depths", str(depth), "--blocks", "residual",
           "--pipelines", "ours", "--concurrent", "0", "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--batch-size", str(args.batch_size), "--precision", args.precision, "--data", args.data,
           "--compile", str(args.compile).lower(), "--compile-mode", args.compile_mode,
           "--cuda-graph", args.cuda_graph, "--accelerator", args.accelerator, "--bn-batch", str(args.bn_batch),
           "--quiet", "--barrier", f"{tmp}:{k}"]
    procs = [subprocess.Popen([*cmd, "--out", str(tmp / f"{i}.json")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for i in range(k)]
    errors = [p.communicate()[1] for p in procs]
    try:
        rates = []
        for i, p in enumerate(procs):
            if p.returncode:
                return {"k": k, "error": errors[i].strip().splitlines()[-1] if errors[i].strip() else "failed"}
            rates.append(json.loads((tmp / f"{i}.json").read_text())["rows"][0]["ours_images_per_s"])
        return {"k": k, "depth": depth, "images_per_s": sum(rates), "per_run_images_per_s": rates}
    finally:  # the children's files: their numbers are in the result
        shutil.rmtree(tmp, ignore_errors=True)


def _linear(d: int, xs: list[int], ys: list[float]) -> float:
    """Piecewise-linear in depth through the measured points; past either end, proportional to depth from the
    nearest one (a slope from two noisy points close together, extended far, could even turn negative)."""
    if d <= xs[0] or d >= xs[-1]:
        i = 0 if d <= xs[0] else -1
        return ys[i] * d / xs[i]
    i = int(np.searchsorted(xs, d)) - 1
    return ys[i] + (ys[i + 1] - ys[i]) * (d - xs[i]) / (xs[i + 1] - xs[i])


def run_seconds(ms: dict[int, float], eval_s: dict[int, float]) -> list[float]:
    """Seconds of each run of the paper's sweep alone (64k iterations, 64 test evaluations), in the order
    `resdepth sweep` starts them: deepest first, plain then residual."""
    xs, paper = sorted(ms), paper_sweep()
    out = []
    for d in sorted(paper["depths"], reverse=True):
        step_s = _linear(d, xs, [ms[x] for x in xs]) / 1e3
        eval_once = _linear(d, xs, [eval_s[x] for x in xs]) if eval_s else 0.0
        out += 2 * [paper["steps"] * step_s + paper["records"] * eval_once]
    return out


def project_sweep(ms: dict[int, float], eval_s: dict[int, float]) -> float:
    """Seconds for the paper's sweep (both blocks, 64k iterations, 64 test evaluations each), one run at a time."""
    return sum(run_seconds(ms, eval_s))


def project_sweep_at_once(seconds: list[float], speedup: dict[int, float], k: int) -> float:
    """Seconds for runs of these lengths (alone), started in this order with at most k at once on one device.
    With j runs going, the device does speedup[j] times the work of one run (measured by --concurrent; linear in
    between, flat past the largest measured j), shared evenly. So the end of the sweep, when fewer runs are left
    than k, counts at its own lower speed-up instead of k's."""
    ks = sorted({1, *speedup})
    ys = [1.0 if j == 1 else speedup[j] for j in ks]
    left, waiting, running, t = list(seconds), list(range(len(seconds))), [], 0.0
    while waiting or running:
        while waiting and len(running) < k:
            running.append(waiting.pop(0))
        rate = float(np.interp(len(running), ks, ys)) / len(running)  # of each running run, vs alone
        dt = min(left[i] for i in running) / rate
        t += dt
        for i in running:
            left[i] -= dt * rate
        running = [i for i in running if left[i] > 1e-9 * max(seconds)]
    return t


def _parser(cuda: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resdepth bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", default="20,56,110" if cuda else "20,56", help="comma list of depths 6n+2")
    p.add_argument("--blocks", default="residual", help="comma list: plain,residual")
    p.add_argument("--pipelines", default="ours,minimal,conventional", help="comma list of those to time")
    p.add_argument("--batch-size", type=int, default=128, help="images per step (the paper: 128)")
    p.add_argument("--bn-batch", type=int, default=0,
                   help="images per batch-norm group in training, optim.bn_batch (default 0: the whole batch, as "
                        "earlier measurements; experiment=paper trains with 64)")
    p.add_argument("--steps", type=int, default=200 if cuda else 20, help="timed iterations per measurement")
    p.add_argument("--warmup", type=int, default=30 if cuda else 5, help="untimed iterations first")
    p.add_argument("--precision", default="auto", help="auto | 32-true | bf16-mixed")
    p.add_argument("--compile", default="false", choices=["true", "false"])
    p.add_argument("--compile-mode", default="default", help="torch.compile mode, with --compile true")
    p.add_argument("--cuda-graph", default="auto", choices=["auto", "true", "false"],
                   help="trainer.cuda_graph for ours and minimal (auto: on a CUDA GPU)")
    p.add_argument("--accelerator", default="auto", help="auto | cpu | gpu")
    p.add_argument("--data", default="cifar10_jpeg",
                   help="data preset (default cifar10_jpeg; synthetic needs no files)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="conventional DataLoader workers")
    p.add_argument("--concurrent", default="1,2,4" if cuda else "0", help="k runs at once on this device; 0: skip")
    p.add_argument("--out", default="bench.json", help="the JSON written (an earlier one there is kept, renamed)")
    p.add_argument("--logger", default="none",
                   help="none | csv | tensorboard | wandb: also time ours with this logger attached, as in "
                        "`resdepth train logger=...`")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--barrier", default=None, help=argparse.SUPPRESS)  # DIR:K, set for the concurrent children
    return p


def bench_cli(argv: list[str]) -> int:
    cuda = torch.cuda.is_available()
    args = _parser(cuda).parse_args(argv)
    args.compile = args.compile == "true"
    try:
        depths, blocks, pipelines, ks = _check_options(args, cuda)
    except ValueError as e:
        print(f"resdepth: error: {e}", file=sys.stderr)
        return 2
    if args.barrier is None:
        _keep_earlier(Path(args.out))
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))

    rows, device = [], None
    for depth in depths:
        for block in blocks:
            row, device = measure(args, depth, block, pipelines, device)
            rows.append(row)
            say(_row_line(row))
            _write(args, device, argv, rows)  # after every row, so an interrupted bench keeps what it measured

    out = _write(args, device, argv, rows)
    ours = {r["depth"]: r["ours_ms_per_step"] for r in rows if "ours_ms_per_step" in r and r["block"] == blocks[0]}
    evals = {r["depth"]: r["ours_eval_s"] for r in rows if "ours_eval_s" in r and r["block"] == blocks[0]}
    if ours:
        out["projected_paper_sweep_s"] = project_sweep(ours, evals)
    if ks and ours:
        at_once(args, out, ks, 56 if 56 in depths else depths[0], run_seconds(ours, evals), say)
    _save(args.out, out)
    if "projected_paper_sweep_s" in out:
        say(f"projected full paper sweep (10 nets x 64k iterations, one at a time) on {out['device']}, "
            f"{out['precision_used']}: {out['projected_paper_sweep_s'] / 3600:.2f} h")
    say(f"wrote {args.out}")
    return 0


def measure(args, depth: int, block: str, pipelines: list[str], device) -> tuple[dict, torch.device]:
    """One row of the table: each pipeline's ms/step at this depth and block, and their ratios."""
    cfg = bench_config(args, depth, block, args.warmup + args.steps)
    row = {"depth": depth, "block": block, "batch_size": args.batch_size}
    if "ours" in pipelines:
        r = time_ours(cfg, args.warmup, args.steps, args.barrier)
        device = r.pop("device")
        row.update({f"ours_{k}": v for k, v in r.items()})
        if args.logger != "none":  # ours, with the logger, ours again: drift cancels, and the noise shows
            logged = bench_config(args, depth, block, args.warmup + args.steps, args.logger)
            row["logged_ms_per_step"] = time_ours(logged, args.warmup, args.steps)["ms_per_step"]
            row["ours_again_ms_per_step"] = time_ours(cfg, args.warmup, args.steps)["ms_per_step"]
            ours = (row["ours_ms_per_step"] + row["ours_again_ms_per_step"]) / 2
            row["logger_overhead"] = row["logged_ms_per_step"] / ours - 1
            row["ours_repeat_difference"] = row["ours_again_ms_per_step"] / row["ours_ms_per_step"] - 1
    device = device or torch.device("cuda" if torch.cuda.is_available() and args.accelerator != "cpu" else "cpu")
    if "minimal" in pipelines:
        row.update({f"minimal_{k}": v for k, v in time_minimal(cfg, args.warmup, args.steps, device).items()})
    if "conventional" in pipelines:
        row.update({f"conventional_{k}": v for k, v in
                    time_conventional(cfg, args.warmup, args.steps, device, args.workers).items()})
    for name in ("ours", "minimal", "conventional"):
        if f"{name}_ms_per_step" in row:
            row[f"{name}_images_per_s"] = args.batch_size * 1e3 / row[f"{name}_ms_per_step"]
    if "ours_ms_per_step" in row and "minimal_ms_per_step" in row:
        row["lightning_overhead"] = row["ours_ms_per_step"] / row["minimal_ms_per_step"] - 1
    if "ours_ms_per_step" in row and "conventional_ms_per_step" in row:
        row["speedup_vs_conventional"] = row["conventional_ms_per_step"] / row["ours_ms_per_step"]
    return row, device


def at_once(args, out: dict, ks: list[int], depth: int, seconds: list[float], say) -> None:
    """k runs of `depth` at once for each k: aggregate images/s, speed-up over one, and the paper's sweep with k
    at once (`seconds`: each run alone), into out["concurrent"]."""
    out["concurrent"] = [concurrent(args, k, depth) for k in ks]
    base = next((c["images_per_s"] for c in out["concurrent"] if c.get("k") == 1 and "images_per_s" in c), None)
    speedup = {c["k"]: c["images_per_s"] / base for c in out["concurrent"] if base and "images_per_s" in c}
    for c in out["concurrent"]:
        if c["k"] in speedup:
            c["speedup_vs_k1"] = speedup[c["k"]]
            if "projected_paper_sweep_s" in out:  # the paper's sweep with k runs at once, deepest first
                c["projected_paper_sweep_s"] = project_sweep_at_once(seconds, speedup, c["k"])
        _save(args.out, out)
        say(f"  k={c['k']} concurrent runs of depth {c.get('depth')}: "
            + (f"{c['images_per_s']:,.0f} images/s in all ({c.get('speedup_vs_k1', 1):.2f}x k=1)"
               if "images_per_s" in c else f"error: {c['error']}")
            + (f"; paper sweep with {c['k']} at once: {c['projected_paper_sweep_s'] / 60:.0f} min"
               if "projected_paper_sweep_s" in c else ""))


def _int_list(option: str, value: str, allowed: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise ValueError(f"{option}={value!r}: must be a comma list of {allowed}") from None


def _check_options(args, cuda: bool) -> tuple[list[int], list[str], list[str], list[int]]:
    """Every option checked before anything is measured or written; ValueError with a one-line message."""
    from .config import CONF_DIR, Accelerator, CompileMode, Precision, choice
    from .models import check_depth

    for option, value, enum in (("--precision", args.precision, Precision),
                                ("--accelerator", args.accelerator, Accelerator),
                                ("--compile-mode", args.compile_mode, CompileMode)):
        choice(option, value, tuple(enum.__members__))
    choice("--logger", args.logger, tuple(sorted(p.stem for p in (CONF_DIR / "logger").glob("*.yaml"))))
    depths = _int_list("--depths", args.depths, "depths 6n+2 (20,56,110)")
    for d in depths:
        check_depth(d)
    blocks = args.blocks.split(",")
    if any(b not in ("plain", "residual") for b in blocks):
        raise ValueError(f"--blocks={args.blocks!r}: each must be plain or residual")
    pipelines = args.pipelines.split(",")
    if any(x not in ("ours", "minimal", "conventional") for x in pipelines):
        raise ValueError(f"--pipelines={args.pipelines!r}: each must be ours, minimal or conventional")
    ks = _int_list("--concurrent", args.concurrent, "run counts >= 0 (1,2,4; 0: skip)")
    if any(k < 0 for k in ks):
        raise ValueError(f"--concurrent={args.concurrent!r}: run counts must be >= 0 (0: skip)")
    if args.cuda_graph == "true" and not (cuda and args.accelerator != "cpu"):
        raise ValueError("--cuda-graph=true needs a CUDA GPU; none is used here (use auto or false)")
    for option, value in (("--steps", args.steps), ("--warmup", args.warmup), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ValueError(f"{option}={value} must be a positive integer")
    if args.workers < 0:
        raise ValueError(f"--workers={args.workers}: must be >= 0 (0: load in the main process)")
    _check_config(args, depths[0], blocks[0])
    return depths, blocks, pipelines, [k for k in ks if k > 0]


def _check_config(args, depth: int, block: str) -> None:
    """The run config the options make, checked as `resdepth train` checks it, its dataset loaded once, and --out;
    sets args.precision_used (what precision auto means on this device)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .config import one_line_error, validate
    from .data import DataModule, DatasetError
    from .training.device import check, resolve_device
    from .training.loggers import RunLogger

    try:  # the same checks as `resdepth train`: --data, --precision, --accelerator, --compile-mode
        cfg = bench_config(args, depth, block, args.warmup + args.steps)
        validate(cfg)
        check(cfg["trainer"])
        args.precision_used = resolve_device(cfg["trainer"])[1]  # what auto means on this device
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        message = str(e) if isinstance(e, ValueError) else f"--data={args.data}: {one_line_error(e)}"
        for key in ("precision", "accelerator", "compile_mode", "cuda_graph"):  # name the option the user typed
            message = message.replace(f"trainer.{key}=", f"--{key.replace('_', '-')}=")
        raise ValueError(message) from None
    if args.logger != "none":  # its package installed, its arguments right
        with tempfile.TemporaryDirectory(prefix="resdepth-bench-") as tmp:
            RunLogger(bench_config(args, depth, block, 1, args.logger), Path(tmp), 0).close()
    out = Path(args.out)
    if out.is_dir() or not os.access(_existing_parent(out), os.W_OK):
        raise ValueError(f"--out={args.out}: cannot write a file there")
    try:  # a missing dataset, or a batch larger than it, stops here rather than in the first measurement
        DataModule(cfg["data"], batch_size=args.batch_size, seed=0).load()
    except DatasetError as e:
        raise ValueError(str(e).replace("optim.batch_size=", "--batch-size=")) from None


def _existing_parent(path: Path) -> Path:
    path = path.absolute().parent
    while not path.exists():
        path = path.parent
    return path


def _keep_earlier(out: Path) -> None:
    """An earlier bench's file at --out is renamed with its own time stamp, never overwritten."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(out.stat().st_mtime))
        kept, n = out.with_name(f"{out.stem}.{stamp}{out.suffix}"), 1
        while kept.exists():
            n += 1
            kept = out.with_name(f"{out.stem}.{stamp}-{n}{out.suffix}")
        out.rename(kept)
        print(f"kept the earlier {out.name} as {kept}", file=sys.stderr, flush=True)


def _write(args, device, argv: list[str], rows: list[dict]) -> dict:
    out = {"device": _device_name(device), "torch": torch.__version__, "python": platform.python_version(),
           "precision": args.precision, "precision_used": args.precision_used, "compile": args.compile,
           "compile_mode": args.compile_mode, "cuda_graph": args.cuda_graph, "data": args.data, "logger": args.logger,
           "workers": args.workers, "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size,
           "command": "resdepth bench " + " ".join(argv), "rows": rows}
    _save(args.out, out)
    return out


def _save(path: str, out: dict) -> None:
    atomic_write_text(Path(path), json.dumps(out, indent=2, default=str) + "\n")


def _device_name(device) -> str:
    if device is not None and device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"{cpu} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def _row_line(row: dict) -> str:
    parts = [f"{row['block']:>8}-{row['depth']:<4}" + (" CUDA graph" if row.get("ours_cuda_graph") else "")]
    for name in ("ours", "minimal", "conventional"):
        if f"{name}_ms_per_step" in row:
            parts.append(f"{name} {row[f'{name}_ms_per_step']:8.1f} ms/step ({row[f'{name}_images_per_s']:7.0f} img/s)")
    if "lightning_overhead" in row:
        parts.append(f"Lightning overhead {100 * row['lightning_overhead']:+.1f}%")
    if "logger_overhead" in row:
        parts.append(f"with the logger {row['logged_ms_per_step']:.1f} ms/step ({100 * row['logger_overhead']:+.1f}%; "
                     f"ours timed again: {100 * row['ours_repeat_difference']:+.1f}%)")
    if "speedup_vs_conventional" in row:
        parts.append(f"{row['speedup_vs_conventional']:.2f}x conventional")
    if row.get("ours_peak_mem_mb"):
        conv = row.get("conventional_peak_mem_mb")
        parts.append(f"peak {row['ours_peak_mem_mb']:.0f} MB" + (f" (conv. {conv:.0f})" if conv else ""))
    return "  ".join(parts)
