"""Where and how a run computes: accelerator, precision, CUDA graph or not, and which GPU."""

from __future__ import annotations

import fcntl
import itertools
import os
import platform
import tempfile
from pathlib import Path

import torch

from ..config import AUTO_BOOL, choice

GRAPHING_COMPILE_MODES = ("reduce-overhead", "max-autotune")  # these capture CUDA graphs themselves


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (x86 with AVX512-BF16 or AMX).

    There bf16 convolutions are 1.4-1.7x faster than fp32 (experiments/bench/README.md);
    elsewhere bf16 is emulated and slower than fp32.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's, x86 only
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def set_threads(t: dict) -> int:
    """Compute with trainer.threads CPU threads (0: every core this process may use) and return
    the number. Set here, never left to the launcher: joblib's workers start with one thread and
    a plain process with all cores, and the same run would differ in its last bits between them.
    """
    n = t.get("threads", 1) or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


def resolve_device(t: dict) -> tuple[str, str]:
    """(accelerator, precision) used: a GPU when there is one, else the CPU; precision auto is
    bf16-mixed where the device computes in bf16 natively (as the GPU runs), else fp32."""
    accelerator = t["accelerator"]
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.accelerator={accelerator} but no CUDA GPU is visible; "
                         f"use auto or cpu")
    use_gpu = accelerator != "cpu" and torch.cuda.is_available()
    precision = t["precision"]
    if precision == "auto":
        native = torch.cuda.is_bf16_supported() if use_gpu else cpu_has_native_bf16()
        precision = "bf16-mixed" if native else "32-true"
    return ("gpu" if use_gpu else "cpu"), precision


def use_cuda_graph(t: dict, accelerator: str, precision: str) -> bool:
    """trainer.cuda_graph: auto (on for a CUDA GPU in bf16-mixed or fp32, unless torch.compile
    captures graphs itself) | true (the same, but an error where it cannot) | false."""
    value = choice("trainer.cuda_graph", t["cuda_graph"], AUTO_BOOL)
    graphing_compile = bool(t["compile"]) and t["compile_mode"] in GRAPHING_COMPILE_MODES
    problem = ("no CUDA GPU is used" if accelerator != "gpu" else
               f"trainer.precision={precision} scales the loss (use bf16-mixed or 32-true)"
               if precision == "16-mixed" else
               f"trainer.compile_mode={t['compile_mode']} captures CUDA graphs itself"
               if graphing_compile else None)
    if value == "true" and problem:
        raise ValueError(f"trainer.cuda_graph=true cannot be used: {problem}; "
                         f"use trainer.cuda_graph=auto or false")
    return value != "false" and problem is None


def check(t: dict) -> None:
    """ValueError (one line) when the trainer settings cannot run on this machine."""
    use_cuda_graph(t, *resolve_device(t))


def device_name(accelerator: str, gpu: int | None) -> str:
    """'NVIDIA H200' or 'x86_64 (2 cores)': the device a run's result names."""
    if accelerator == "gpu":
        return torch.cuda.get_device_name(gpu or 0)
    return (platform.processor() or platform.machine()) + f" ({os.cpu_count()} cores)"


def claim_gpu(n: int, slots: Path | None = None):
    """(index, lock) of the GPU with the fewest runs on it now, out of this machine's n.

    A run holds a lock on one slot file (gpu<i>.<k>.lock) of its GPU while it trains; the lock
    goes when it is closed or its process ends, so a crashed run never leaves a GPU marked busy.
    One process picks at a time (pick.lock).
    """
    slots = Path(slots or Path(tempfile.gettempdir()) / f"resdepth-gpus-{os.getuid()}")
    slots.mkdir(parents=True, exist_ok=True)
    with open(slots / "pick.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        busy, free = [0] * n, [None] * n
        for gpu in range(n):
            for k in itertools.count():  # every slot file so far, and one new one
                path = slots / f"gpu{gpu}.{k}.lock"
                existed = path.exists()
                f = open(path, "a")
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    f.close()
                    busy[gpu] += 1
                    continue
                if free[gpu] is None:
                    free[gpu] = f
                else:
                    f.close()
                if not existed:
                    break
        best = min(range(n), key=busy.__getitem__)
        for gpu, f in enumerate(free):
            if gpu != best:
                f.close()
        return best, free[best]


def claim(t: dict):
    """(gpu index, lock) for a run: on a machine with several GPUs the least busy; else Nones."""
    if resolve_device(t)[0] == "gpu" and torch.cuda.device_count() > 1:
        return claim_gpu(torch.cuda.device_count())
    return None, None
