"""How fast the training path is, measured three ways on this device, in one process.

  ours          the path `resdepth train` runs: device-resident uint8 data, batched crop/flip, the
                LightningModule in Lightning's fit loop (on a GPU, one CUDA-graph replay a step)
  minimal       the same net, data, augmentation and step in a hand-written PyTorch loop
                (ours / minimal = Lightning's overhead)
  conventional  what popular CIFAR reproductions do: PIL transforms in DataLoader workers, fp32, a
                loss.item() and an accuracy read every step (conventional / ours = the speed-up)

Each is timed after warm-up, between two device synchronisations.
"""

from __future__ import annotations

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

from .config import compose, one_line_error, validate
from .models import cifar_resnet
from .rundir import atomic_write_text
from .tables import plural
from .training.device import device_name

# Lightning, torchvision, the data and the training code are imported where they are used:
# `resdepth bench --help` and the projections (experiments/bench) need none of them.


@functools.cache
def paper_sweep() -> dict:
    """The paper's sweep as conf/ defines it (experiment=paper): depths, iterations, records."""
    from .sweep import expand_grid

    cfg = compose(["experiment=paper"])[0]
    grid = expand_grid([])
    depths = sorted({int(dict(o.split("=", 1) for o in job)["model.depth"]) for job in grid})
    return {"depths": depths, "steps": cfg["trainer"]["max_steps"],
            "records": cfg["trainer"]["max_steps"] // cfg["trainer"]["eval_every"]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def bench_config(args, depth: int, block: str, steps: int, logger: str = "none") -> dict:
    """A run config for the benchmark, composed from conf/ like any run."""
    overrides = [f"data={args.data}", f"logger={logger}", f"model.depth={depth}",
                 f"model.block={block}", f"optim.batch_size={args.batch_size}",
                 f"optim.bn_batch={args.bn_batch}", f"trainer.max_steps={steps}",
                 f"trainer.eval_every={steps}", f"trainer.precision={args.precision}",
                 f"trainer.compile={str(args.compile).lower()}",
                 f"trainer.compile_mode={args.compile_mode}",
                 f"trainer.cuda_graph={args.cuda_graph}", f"trainer.accelerator={args.accelerator}",
                 f"trainer.threads={args.thread_counts[0]}", "trainer.progress=false"]
    return compose(overrides)[0]


def _barrier(spec: str | None) -> None:
    """'DIR:K': announce readiness in DIR and wait until K processes have (so timings overlap)."""
    if not spec:
        return
    folder, k = spec.rsplit(":", 1)
    Path(folder, f"ready-{os.getpid()}").touch()
    deadline = time.time() + 600
    while len(list(Path(folder).glob("ready-*"))) < int(k) and time.time() < deadline:
        time.sleep(0.01)


def _step_timer(warmup: int, steps: int, barrier: str | None, marks: dict):
    """A Lightning callback that puts the times of iterations warmup and warmup + steps in marks."""
    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        def on_train_start(self, trainer, module):
            marks["start"] = time.perf_counter()

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == warmup:
                _sync(module.device)
                marks["warmup_s"] = time.perf_counter() - marks["start"]  # capture, compile
                _barrier(barrier)
                _reset_peak(module.device)
                marks["t0"] = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == warmup + steps:
                _sync(module.device)
                marks["t1"] = time.perf_counter()
                marks["device"] = module.device

    return StepTimer()


def _fit(cfg: dict, data, system, kwargs: dict, callbacks: list) -> None:
    """Lightning's fit, with cfg's logger and the run's Recorder attached as `resdepth train`
    attaches them (in a temporary run directory, removed after)."""
    import pytorch_lightning as pl

    from .training.loggers import RunLogger
    from .training.records import Recorder

    logger = None
    with tempfile.TemporaryDirectory(prefix="resdepth-bench-") as run_dir:
        if cfg.get("logger"):  # the one record comes after the timed iterations
            logger = RunLogger(cfg, Path(run_dir), 0)
            kwargs["logger"] = logger.logger
            callbacks.append(Recorder(Path(run_dir), cfg, {}, logger))
        try:
            pl.Trainer(**kwargs, callbacks=callbacks).fit(system, datamodule=data)
        finally:
            if logger:
                logger.close()


def time_ours(cfg: dict, warmup: int, steps: int, barrier: str | None = None,
              pack: int = 1) -> dict:
    """ms/step of the real training path (Lightning's fit loop) between iterations warmup and
    warmup + steps, with cfg's logger attached if it names one; the test set's evaluation time.
    `pack` > 1: that many runs of cfg (seeds 0, 1, ...) as one packed net, as a sweep packs them."""
    from .training.pack import PackData
    from .training.train import build

    cfgs = [{**cfg, "seed": seed} for seed in range(pack)] if pack > 1 else None
    data, system, kwargs = build(cfg, pack=cfgs)
    marks = {}
    kwargs["max_steps"] = warmup + steps
    fit_data = PackData(data, [c["seed"] for c in cfgs]) if cfgs else data
    _fit(cfg, fit_data, system, kwargs, [_step_timer(warmup, steps, barrier, marks)])
    device = marks["device"]
    system.to(device)  # Lightning's teardown moves the module back to the CPU
    t_eval = time.perf_counter()
    system.evaluate(data.eval_splits["test"])
    t_eval = time.perf_counter() - t_eval
    t_probe = time.perf_counter()
    if not cfgs:  # a record's gradients (gradients.csv): taken outside the step, once a record
        system.gradients()
    t_probe = time.perf_counter() - t_probe
    return {"ms_per_step": 1e3 * (marks["t1"] - marks["t0"]) / steps, "eval_s": t_eval,
            "probe_s": t_probe, "warmup_s": marks["warmup_s"],
            "peak_mem_mb": _peak_mb(device), "cuda_graph": system.whole_step, "device": device}


def _minimal_net(cfg: dict, num_classes: int, device: torch.device):
    """(the net's forward, possibly compiled; its SGD optimizer) as the training path makes them."""
    m, o, t = cfg["model"], cfg["optim"], cfg["trainer"]
    torch.manual_seed(0)
    net = cifar_resnet(depth=m["depth"], block=m["block"], shortcut=m["shortcut"],
                       num_classes=num_classes, bn_batch=o["bn_batch"])
    net = net.to(device, memory_format=torch.channels_last)
    forward = torch.compile(net, mode=t["compile_mode"]) if t["compile"] else net
    fused = device.type == "cuda"
    opt = torch.optim.SGD(net.parameters(), lr=o["lr"], momentum=o["momentum"],
                          weight_decay=o["weight_decay"], fused=fused,
                          foreach=None if fused else True)
    return forward, opt


def time_minimal(cfg: dict, warmup: int, steps: int, device: torch.device) -> dict:
    """The same network, data and augmentation in a hand-written loop: no Lightning, no metrics."""
    from .data import DataModule, TrainBatches
    from .training.device import resolve_device, use_cuda_graph
    from .training.step import WholeStep

    o = cfg["optim"]
    data = DataModule(cfg["data"], batch_size=o["batch_size"], seed=0).load().to(device)
    forward, opt = _minimal_net(cfg, data.num_classes, device)
    accelerator, precision = resolve_device(cfg["trainer"])  # as `ours` resolves them
    bf16 = precision == "bf16-mixed"
    graphed = use_cuda_graph(cfg["trainer"], accelerator, precision)
    whole = WholeStep(forward, opt, bf16) if graphed else None
    batches = iter(TrainBatches(data.train, o["batch_size"], seed=0, pad=data.cfg["pad"]))
    _reset_peak(device)
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
            "peak_mem_mb": _peak_mb(device), "cuda_graph": graphed}


class PILDataset(torch.utils.data.Dataset):
    """torchvision's CIFAR10 __getitem__: a uint8 HWC array -> PIL image -> transforms."""

    def __init__(self, images: np.ndarray, labels: list[int], transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def _pil_loader(train, batch_size: int, device: torch.device, workers: int):
    """The usual CIFAR loader: RandomCrop(32, padding=4), flip, ToTensor, Normalize, per image."""
    from torchvision import transforms as T

    mean = train.images.double().mean((0, 2, 3)).div(255).tolist()
    std = train.images.double().div(255).std((0, 2, 3)).tolist()
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(mean, std)])
    dataset = PILDataset(train.images.permute(0, 2, 3, 1).numpy(), train.labels.tolist(), transform)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                       num_workers=workers, pin_memory=device.type == "cuda",
                                       drop_last=True, persistent_workers=workers > 0)


def time_conventional(cfg: dict, warmup: int, steps: int, device: torch.device,
                      workers: int) -> dict:
    """The usual pipeline: PIL transforms in DataLoader workers, fp32, a .item() every step."""
    from .data import DataModule

    data = DataModule(cfg["data"], batch_size=cfg["optim"]["batch_size"], seed=0).load()
    m, o = cfg["model"], cfg["optim"]
    loader = _pil_loader(data.train, o["batch_size"], device, workers)
    torch.manual_seed(0)
    net = cifar_resnet(depth=m["depth"], block=m["block"], shortcut=m["shortcut"],
                       num_classes=data.num_classes).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=o["lr"], momentum=o["momentum"],
                          weight_decay=o["weight_decay"])
    _reset_peak(device)
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
            "peak_mem_mb": _peak_mb(device)}


def concurrent(args, k: int, depth: int, threads: int) -> dict:
    """Aggregate images/s of k copies of `ours` training at once on this device (subprocesses),
    each computing with `threads` CPU threads."""
    tmp = Path(args.out).with_suffix(f".k{k}")
    tmp.mkdir(parents=True, exist_ok=True)
    for f in tmp.glob("*"):
        f.unlink()
    cmd = [sys.executable, "-m", "resdepth.cli", "bench", "--depths", str(depth), "--blocks",
           "residual", "--pipelines", "ours", "--concurrent", "0", "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--precision",
           args.precision, "--data", args.data, "--compile", str(args.compile).lower(),
           "--compile-mode", args.compile_mode, "--cuda-graph", args.cuda_graph, "--accelerator",
           args.accelerator, "--bn-batch", str(args.bn_batch), "--threads", str(threads), "--quiet",
           "--barrier", f"{tmp}:{k}"]
    procs = [subprocess.Popen([*cmd, "--out", str(tmp / f"{i}.json")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for i in range(k)]
    errors = [p.communicate()[1] for p in procs]
    try:
        rates = []
        for i, p in enumerate(procs):
            if p.returncode:
                error = errors[i].strip().splitlines()[-1] if errors[i].strip() else "failed"
                return {"k": k, "threads": threads, "error": error}
            rows = json.loads((tmp / f"{i}.json").read_text())["rows"]
            rates.append(rows[0]["ours_images_per_s"])
        return {"k": k, "threads": threads, "depth": depth, "images_per_s": sum(rates),
                "per_run_images_per_s": rates}
    finally:  # the children's files: their numbers are in the result
        shutil.rmtree(tmp, ignore_errors=True)


def _linear(d: int, xs: list[int], ys: list[float]) -> float:
    """Piecewise-linear in depth through the measured points; past either end, proportional to
    depth from the nearest one (a slope from two noisy close points, extended far, could turn
    negative)."""
    if d <= xs[0] or d >= xs[-1]:
        i = 0 if d <= xs[0] else -1
        return ys[i] * d / xs[i]
    i = int(np.searchsorted(xs, d)) - 1
    return ys[i] + (ys[i + 1] - ys[i]) * (d - xs[i]) / (xs[i + 1] - xs[i])


def run_seconds(ms: dict[int, float], eval_s: dict[int, float]) -> list[float]:
    """Seconds of each run of the paper's sweep alone (its iterations and test evaluations), in the
    order `resdepth sweep` starts them: deepest first, plain then residual."""
    xs, paper = sorted(ms), paper_sweep()
    out = []
    for d in sorted(paper["depths"], reverse=True):
        step_s = _linear(d, xs, [ms[x] for x in xs]) / 1e3
        eval_once = _linear(d, xs, [eval_s[x] for x in xs]) if eval_s else 0.0
        out += 2 * [paper["steps"] * step_s + paper["records"] * eval_once]
    return out


def project_sweep(ms: dict[int, float], eval_s: dict[int, float]) -> float:
    """Seconds for the paper's sweep (both blocks), one run at a time."""
    return sum(run_seconds(ms, eval_s))


def project_sweep_at_once(seconds: list[float], speedup: dict[int, float], k: int) -> float:
    """Seconds for runs of these lengths (alone), started in this order, at most k at once.

    With j runs going, the device does speedup[j] times the work of one run (measured by
    --concurrent; linear in between, flat past the largest j), shared evenly: the end of the sweep,
    with fewer than k runs left, counts at its own lower speed-up.
    """
    ks = sorted({1, *speedup})
    ys = [1.0 if j == 1 else speedup[j] for j in ks]
    left, waiting, running, t = list(seconds), list(range(len(seconds))), [], 0.0
    while waiting or running:
        while waiting and len(running) < k:
            running.append(waiting.pop(0))
        rate = float(np.interp(len(running), ks, ys)) / len(running)  # of each run, vs alone
        dt = min(left[i] for i in running) / rate
        t += dt
        for i in running:
            left[i] -= dt * rate
        running = [i for i in running if left[i] > 1e-9 * max(seconds)]
    return t


def run_bench(args, argv: list[str], depths: list[int], blocks: list[str], pipelines: list[str],
              ks: list[int]) -> None:
    """Measure every depth x block, print a line each, and write args.out (after every row, so an
    interrupted bench keeps what it measured), with the paper's sweep projected."""
    if args.barrier is None:
        _keep_earlier(Path(args.out))
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    rows, device = [], None
    for depth in depths:
        for block in blocks:
            row, device = measure(args, depth, block, pipelines, device)
            rows.append(row)
            say(_row_line(row))
            _write(args, device, argv, rows)
    out = _write(args, device, argv, rows)
    first = [r for r in rows if r["block"] == blocks[0]]
    ours = {r["depth"]: r["ours_ms_per_step"] for r in first if "ours_ms_per_step" in r}
    evals = {r["depth"]: r["ours_eval_s"] for r in first if "ours_eval_s" in r}
    if ours:
        out["projected_paper_sweep_s"] = project_sweep(ours, evals)
    if ks and ours:
        at_once(args, out, ks, 56 if 56 in depths else depths[0], run_seconds(ours, evals), say)
    if any(k > 1 for k in args.packs):
        packs(args, out, depths, blocks[0], say)
    _save(args.out, out)
    if "projected_paper_sweep_s" in out:
        say(f"projected full paper sweep (10 nets x 64k iterations, one at a time) on "
            f"{out['device']}, {out['precision_used']}: "
            f"{out['projected_paper_sweep_s'] / 3600:.2f} h")
    say(f"wrote {args.out}")


def packs(args, out: dict, depths: list[int], block: str, say) -> None:
    """ours with K runs of each depth packed into one net: ms per iteration of the pack, per run,
    and the throughput in runs x iterations against K = 1 measured in the same way and process."""
    out["packs"] = []
    for depth in depths:
        cfg = bench_config(args, depth, block, args.warmup + args.steps)
        alone = None
        for k in sorted(set([1, *args.packs])):
            r = time_ours(cfg, args.warmup, args.steps, pack=k)
            alone = alone or r["ms_per_step"]
            row = {"depth": depth, "block": block, "pack": k, "ms_per_step": r["ms_per_step"],
                   "ms_per_run_step": r["ms_per_step"] / k, "peak_mem_mb": r["peak_mem_mb"],
                   "cuda_graph": r["cuda_graph"], "compile": args.compile,
                   "bn_batch": args.bn_batch, "warmup_s": r["warmup_s"],
                   "throughput_vs_alone": k * alone / r["ms_per_step"]}
            out["packs"].append(row)
            _save(args.out, out)
            mem = f", peak {row['peak_mem_mb']:.0f} MB" if row["peak_mem_mb"] else ""
            mem += f"; its {args.warmup} warm-up iterations took {r['warmup_s']:.1f} s"
            say(f"pack depth {depth} K={k}: {row['ms_per_step']:.2f} ms per iteration of the "
                f"pack, {row['ms_per_run_step']:.2f} ms per run ({row['throughput_vs_alone']:.2f}x "
                f"the run-iterations per second of one run alone{mem})")
    for seeds, k in ((1, 2), (3, 6)):  # a sweep packs each depth's plain and residual nets
        ms = {p["depth"]: p["ms_per_step"] for p in out["packs"] if p["pack"] == k}
        if ms:
            paper = paper_sweep()
            seconds = sum(run_seconds(ms, {})) / 2  # each depth's pack once, evaluations aside
            out[f"projected_paper_sweep_{seeds}_seed_packed_s"] = seconds
            say(f"projected paper sweep with {plural(seeds, 'seed')}, each depth's {k} runs as "
                f"one pack, packs one after another ({len(paper['depths'])} packs x "
                f"{paper['steps']} iterations, test evaluations not counted): "
                f"{seconds / 60:.1f} min")


def measure(args, depth: int, block: str, pipelines: list[str],
            device) -> tuple[dict, torch.device]:
    """One row of the table: each pipeline's ms/step at this depth and block, and their ratios."""
    from .training.device import set_threads

    cfg = bench_config(args, depth, block, args.warmup + args.steps)
    set_threads(cfg["trainer"])  # for every pipeline, as `resdepth train` does
    row = {"depth": depth, "block": block, "batch_size": args.batch_size,
           "threads": torch.get_num_threads()}
    if "ours" in pipelines:
        r = time_ours(cfg, args.warmup, args.steps, args.barrier)
        device = r.pop("device")
        row.update({f"ours_{k}": v for k, v in r.items()})
        if args.logger != "none":
            _time_logger(args, cfg, depth, block, row)
    use_gpu = torch.cuda.is_available() and args.accelerator != "cpu"
    device = device or torch.device("cuda" if use_gpu else "cpu")
    if "minimal" in pipelines:
        r = time_minimal(cfg, args.warmup, args.steps, device)
        row.update({f"minimal_{k}": v for k, v in r.items()})
    if "conventional" in pipelines:
        r = time_conventional(cfg, args.warmup, args.steps, device, args.workers)
        row.update({f"conventional_{k}": v for k, v in r.items()})
    for name in ("ours", "minimal", "conventional"):
        if f"{name}_ms_per_step" in row:
            row[f"{name}_images_per_s"] = args.batch_size * 1e3 / row[f"{name}_ms_per_step"]
    if "ours_ms_per_step" in row and "minimal_ms_per_step" in row:
        row["lightning_overhead"] = row["ours_ms_per_step"] / row["minimal_ms_per_step"] - 1
    if "ours_ms_per_step" in row and "conventional_ms_per_step" in row:
        row["speedup_vs_conventional"] = row["conventional_ms_per_step"] / row["ours_ms_per_step"]
    return row, device


def _time_logger(args, cfg: dict, depth: int, block: str, row: dict) -> None:
    """ours timed with args.logger attached, then without again: its cost per iteration is set
    against the mean of the two without (drift cancels), and their difference shows the noise."""
    logged = bench_config(args, depth, block, args.warmup + args.steps, args.logger)
    row["logged_ms_per_step"] = time_ours(logged, args.warmup, args.steps)["ms_per_step"]
    row["ours_again_ms_per_step"] = time_ours(cfg, args.warmup, args.steps)["ms_per_step"]
    ours = (row["ours_ms_per_step"] + row["ours_again_ms_per_step"]) / 2
    row["logger_overhead"] = row["logged_ms_per_step"] / ours - 1
    row["ours_repeat_difference"] = row["ours_again_ms_per_step"] / row["ours_ms_per_step"] - 1


def at_once(args, out: dict, ks: list[int], depth: int, seconds: list[float], say) -> None:
    """k runs of `depth` at once for each k and each --threads value: aggregate images/s, speed-up
    over one run with the first --threads value (the rows' setting), and the paper's sweep with k
    at once (`seconds`: each run alone, with that setting), into out["concurrent"]."""
    first, several = args.thread_counts[0], len(args.thread_counts) > 1
    out["concurrent"], base = [], None
    for threads in args.thread_counts:
        for k in ks:
            c = concurrent(args, k, depth, threads)
            out["concurrent"].append(c)
            if (k, threads) == (1, first) and "images_per_s" in c:
                base = c["images_per_s"]
            if base and "images_per_s" in c:
                c["speedup_vs_k1"] = c["images_per_s"] / base
            _save(args.out, out)
            say(_concurrent_line(c, first if several else None))
    speedup = {c["k"]: c["speedup_vs_k1"] for c in out["concurrent"]
               if c["threads"] == first and "speedup_vs_k1" in c}
    if "projected_paper_sweep_s" in out:  # with k runs at once, deepest first
        for c in out["concurrent"]:
            if c["threads"] == first and c["k"] in speedup:
                c["projected_paper_sweep_s"] = project_sweep_at_once(seconds, speedup, c["k"])
                say(f"  paper sweep with {c['k']} at once: "
                    f"{c['projected_paper_sweep_s'] / 60:.0f} min")
        _save(args.out, out)


def _concurrent_line(c: dict, base_threads: int | None = None) -> str:
    """One measurement of --concurrent; with several --threads values, each says its own and the
    speed-up is over one run with the first."""
    each = "" if base_threads is None else f", {plural(c['threads'], 'CPU thread')} each"
    line = f"  k={c['k']} concurrent runs of depth {c.get('depth')}{each}: "
    if "images_per_s" not in c:
        return line + f"error: {c['error']}"
    ref = "k=1" if base_threads is None else f"one run with {plural(base_threads, 'CPU thread')}"
    speedup = c.get("speedup_vs_k1", 1)
    return line + f"{c['images_per_s']:,.0f} images/s in all ({speedup:.2f}x {ref})"


def check_config(args, depth: int, block: str) -> None:
    """The run config the options make, checked as `resdepth train` checks it, its logger and
    dataset loaded once, and --out; sets args.precision_used. ValueError naming the option."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .data import DataModule, DatasetError
    from .training.device import check, resolve_device
    from .training.loggers import RunLogger

    try:  # the same checks as `resdepth train`: --data, --precision, --accelerator, --compile-mode
        cfg = bench_config(args, depth, block, args.warmup + args.steps)
        validate(cfg)
        check(cfg["trainer"])
        args.precision_used = resolve_device(cfg["trainer"])[1]  # what auto means on this device
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        message = (str(e) if isinstance(e, ValueError)
                   else f"--data={args.data}: {one_line_error(e)}")
        for key in ("precision", "accelerator", "compile_mode", "cuda_graph"):  # as the user typed
            message = message.replace(f"trainer.{key}=", f"--{key.replace('_', '-')}=")
        raise ValueError(message) from None
    if args.logger != "none":  # its package installed, its arguments right
        with tempfile.TemporaryDirectory(prefix="resdepth-bench-") as tmp:
            RunLogger(bench_config(args, depth, block, 1, args.logger), Path(tmp), 0).close()
    out = Path(args.out)
    if out.is_dir() or not os.access(_existing_parent(out), os.W_OK):
        raise ValueError(f"--out={args.out}: cannot write a file there")
    try:  # a missing dataset, or a batch larger than it, stops here, not in the first measurement
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
    out = {"device": _device_name(device), "torch": torch.__version__,
           "python": platform.python_version(), "precision": args.precision,
           "precision_used": args.precision_used, "compile": args.compile,
           "compile_mode": args.compile_mode, "cuda_graph": args.cuda_graph, "data": args.data,
           "logger": args.logger, "workers": args.workers, "steps": args.steps,
           "warmup": args.warmup, "batch_size": args.batch_size,
           "command": "resdepth bench " + " ".join(argv), "rows": rows}
    _save(args.out, out)
    return out


def _save(path: str, out: dict) -> None:
    atomic_write_text(Path(path), json.dumps(out, indent=2, default=str) + "\n")


def _device_name(device) -> str:
    """device_name, with the threads torch uses on a CPU: 'x86_64 CPU, 2 cores, 1 thread'."""
    if device is not None and device.type == "cuda":
        return device_name("gpu", device.index)
    cpu = device_name("cpu", None).removesuffix(f" ({os.cpu_count()} cores)")
    return f"{cpu} CPU, {os.cpu_count()} cores, {plural(torch.get_num_threads(), 'thread')}"


def _row_line(row: dict) -> str:
    graph = " CUDA graph" if row.get("ours_cuda_graph") else ""
    parts = [f"{row['block']:>8}-{row['depth']:<4}" + graph]
    for name in ("ours", "minimal", "conventional"):
        if f"{name}_ms_per_step" in row:
            parts.append(f"{name} {row[f'{name}_ms_per_step']:8.1f} ms/step "
                         f"({row[f'{name}_images_per_s']:7.0f} img/s)")
    if "lightning_overhead" in row:
        parts.append(f"Lightning overhead {100 * row['lightning_overhead']:+.1f}%")
    if "logger_overhead" in row:
        parts.append(f"with the logger {row['logged_ms_per_step']:.1f} ms/step "
                     f"({100 * row['logger_overhead']:+.1f}%; "
                     f"ours timed again: {100 * row['ours_repeat_difference']:+.1f}%)")
    if "speedup_vs_conventional" in row:
        parts.append(f"{row['speedup_vs_conventional']:.2f}x conventional")
    if row.get("ours_probe_s"):  # taken once per record, outside the training step
        paper = paper_sweep()
        every = paper["steps"] // paper["records"]
        per_step = 1e3 * row["ours_probe_s"] / every
        parts.append(f"gradient records {1e3 * row['ours_probe_s']:.0f} ms each: "
                     f"{per_step:.3f} ms per iteration at one record per {every} "
                     f"({100 * per_step / row['ours_ms_per_step']:.2f}% of the step)")
    if row.get("ours_peak_mem_mb"):
        conv = row.get("conventional_peak_mem_mb")
        parts.append(f"peak {row['ours_peak_mem_mb']:.0f} MB"
                     + (f" (conv. {conv:.0f})" if conv else ""))
    return "  ".join(parts)
