"""fp32 against bf16 on this CPU: paired runs (same nets, seeds and batches), set against the seed-to-seed spread.

    python experiments/precision-cpu/compare.py RUNS_ROOT

RUNS_ROOT holds the runs of `run.sh`. For each (depth, seed) it pairs the fp32 and the bf16 run and prints their
final training error (mean over the last record's 250 iterations) and test error (10,000 test images), the
bf16 - fp32 difference, and the seed spread (|seed 0 - seed 1| within one precision). Then it evaluates every
run's final weights on the test set twice, in fp32 and in bf16 autocast, to see whether evaluating in fp32 changes
a bf16 run's test error, and what that costs (a run whose model.pt is gone keeps the evaluation of compare.json,
where an earlier call made one). Writes compare.json beside this script. Errors in %.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from resdepth.config import compose
from resdepth.data import DataModule
from resdepth import load_run
from resdepth.rundir import read_json, read_metrics


def evaluate(run_dir: Path, data: DataModule, bf16: bool) -> tuple[float, float]:
    """(test error %, seconds) of the run's final weights on data's test split, in fp32 or bf16 autocast."""
    net = load_run(run_dir).net.eval()
    split, wrong, t0 = data.eval_splits["test"], 0, time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for s in range(0, len(split), 1000):
            wrong += int((net(split.images[s:s + 1000]).argmax(1) != split.labels[s:s + 1000]).sum())
    return 100 * wrong / len(split), time.perf_counter() - t0


def main(root: Path) -> dict:
    runs = {}
    for path in sorted(root.rglob("result.json")):
        r = read_json(path)
        if r.get("status") == "done":
            runs[(r["depth"], r["seed"], r["precision"])] = path.parent
    cfg = compose(["experiment=demo", "data.test_subset=0"])[0]
    data = DataModule(cfg["data"], batch_size=128, seed=0).load()
    earlier = {(r["depth"], r["seed"], r["precision"]): r for r in read_json(OUT)["rows"]} if OUT.exists() else {}
    rows = []
    for (depth, seed, precision), run_dir in sorted(runs.items()):
        r, last = read_json(run_dir / "result.json"), read_metrics(run_dir / "metrics.csv")[-1]
        row = {"depth": depth, "seed": seed, "precision": precision, "steps": r["steps"],
               "train_error": 100 * last["train_error"], "test_error": 100 * r["final_test_error"]}
        if (run_dir / "model.pt").exists():
            (fp32_eval, fp32_s), (bf16_eval, bf16_s) = evaluate(run_dir, data, False), evaluate(run_dir, data, True)
            row.update(test_error_eval_fp32=fp32_eval, test_error_eval_bf16=bf16_eval, eval_s_fp32=fp32_s,
                       eval_s_bf16=bf16_s)
        else:  # the weights are not kept in the repository: the evaluation of an earlier call, if it made one
            row.update({k: earlier.get((depth, seed, precision), {}).get(k) for k in EVALUATED})
        rows.append(row)
    return {"rows": rows, "pairs": pairs(rows)}


OUT = Path(__file__).with_name("compare.json")
EVALUATED = ("test_error_eval_fp32", "test_error_eval_bf16", "eval_s_fp32", "eval_s_bf16")


def pairs(rows: list[dict]) -> list[dict]:
    """Per depth: bf16 - fp32 differences per seed, and the seed spread within each precision."""
    out = []
    at = {(r["depth"], r["seed"], r["precision"]): r for r in rows}
    for depth in sorted({r["depth"] for r in rows}):
        seeds = sorted({r["seed"] for r in rows if r["depth"] == depth})
        item = {"depth": depth}
        for key in ("train_error", "test_error"):
            item[f"{key}_bf16_minus_fp32"] = [at[depth, s, "bf16-mixed"][key] - at[depth, s, "32-true"][key]
                                              for s in seeds if (depth, s, "bf16-mixed") in at
                                              and (depth, s, "32-true") in at]
            item[f"{key}_seed_spread"] = {p: abs(at[depth, seeds[0], p][key] - at[depth, seeds[-1], p][key])
                                          for p in ("32-true", "bf16-mixed") if len(seeds) > 1
                                          and (depth, seeds[0], p) in at and (depth, seeds[-1], p) in at}
        out.append(item)
    return out


if __name__ == "__main__":
    result = main(Path(sys.argv[1]))
    for r in result["rows"]:
        print(f"ResNet-{r['depth']:<3} seed {r['seed']} {r['precision']:<10} it {r['steps']}: train "
              f"{r['train_error']:5.2f}%  test {r['test_error']:5.2f}%  " + (
                  f"(weights evaluated in fp32 {r['test_error_eval_fp32']:5.2f}% in {r['eval_s_fp32']:.1f} s, in bf16 "
                  f"{r['test_error_eval_bf16']:5.2f}% in {r['eval_s_bf16']:.1f} s)"
                  if r["test_error_eval_fp32"] is not None else "(no model.pt: not evaluated)"))
    for p in result["pairs"]:
        print(json.dumps(p))
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT}")
