"""`resdepth bench` end to end on a tiny configuration, and compiled vs eager steps."""

import json

import pytest
import torch
import torch.nn.functional as F

from resdepth.bench import _linear, project_sweep, project_sweep_at_once, run_seconds
from resdepth.cli import bench_cli
from resdepth.training.loggers import RunLogger
from resdepth.training.system import System

from .conftest import compose, run_cli


@pytest.mark.slow
def test_bench_runs_end_to_end_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    out.write_text('{"earlier": "bench"}')
    proc = run_cli("bench", "--depths", "8,14", "--steps", "2", "--warmup", "1",
                   "--batch-size", "32", "--data", "synthetic", "--workers", "1",
                   "--concurrent", "1,2", "--threads", "1,2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    b = json.loads(out.read_text())
    assert [r["depth"] for r in b["rows"]] == [8, 14]
    for r in b["rows"]:
        for name in ("ours", "minimal", "conventional"):
            assert r[f"{name}_ms_per_step"] > 0 and r[f"{name}_images_per_s"] == pytest.approx(
                32e3 / r[f"{name}_ms_per_step"])
        assert r["lightning_overhead"] == pytest.approx(
            r["ours_ms_per_step"] / r["minimal_ms_per_step"] - 1)
        assert r["speedup_vs_conventional"] == pytest.approx(
            r["conventional_ms_per_step"] / r["ours_ms_per_step"])
    # runs at once against threads per run: every pair, each against one run on one thread
    assert [(c["k"], c["threads"]) for c in b["concurrent"]] == [(1, 1), (2, 1), (1, 2), (2, 2)]
    assert all(c["images_per_s"] > 0 for c in b["concurrent"])
    assert b["concurrent"][0]["speedup_vs_k1"] == 1 and all(
        c["speedup_vs_k1"] == pytest.approx(c["images_per_s"] / b["concurrent"][0]["images_per_s"])
        for c in b["concurrent"])
    assert all(r["threads"] == 1 for r in b["rows"]) and "2 CPU threads each" in proc.stdout
    assert [c["k"] for c in b["concurrent"] if "projected_paper_sweep_s" in c] == [1, 2]
    assert b["projected_paper_sweep_s"] > 0 and b["device"]
    # what auto meant here
    assert b["precision"] == "auto" and b["precision_used"] in ("32-true", "bf16-mixed")
    assert all(r["ours_cuda_graph"] == r["minimal_cuda_graph"] == torch.cuda.is_available()
               for r in b["rows"])
    assert "Lightning overhead" in proc.stdout and "x conventional" in proc.stdout
    # the earlier file at --out is kept, under its own time
    kept = list(tmp_path.glob("bench.*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == {"earlier": "bench"}
    # no k-run folders
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["bench.json", kept[0].name])
    assert f"kept the earlier bench.json as {kept[0]}" in proc.stderr


@pytest.mark.slow
def test_bench_times_the_step_again_with_the_logger_attached(tmp_path, monkeypatch):
    sent = []
    monkeypatch.setattr(RunLogger, "send",
                        lambda self, row: sent.append((self.name, row["iteration"])))
    out = tmp_path / "b.json"
    assert bench_cli(["--depths", "8", "--pipelines", "ours", "--steps", "3", "--warmup", "1",
                      "--batch-size", "32", "--data", "synthetic", "--logger", "csv",
                      "--out", str(out)]) == 0
    b = json.loads(out.read_text())
    r = b["rows"][0]
    assert b["logger"] == "csv" and r["logged_ms_per_step"] > 0 and r["ours_ms_per_step"] > 0
    # before and after: drift cancels
    ours = (r["ours_ms_per_step"] + r["ours_again_ms_per_step"]) / 2
    assert r["logger_overhead"] == pytest.approx(r["logged_ms_per_step"] / ours - 1)
    assert r["ours_repeat_difference"] == pytest.approx(
        r["ours_again_ms_per_step"] / r["ours_ms_per_step"] - 1)
    # the run's one record reached the logger, after the timed iterations
    assert sent == [("csv", 4)]


def test_bench_times_packs_of_runs_against_one_run_alone(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert bench_cli(["--depths", "8", "--pipelines", "ours", "--steps", "2", "--warmup", "1",
                      "--batch-size", "32", "--data", "synthetic", "--pack", "2,1",
                      "--out", str(out)]) == 0
    b = json.loads(out.read_text())
    packs = b["packs"]
    assert [(p["depth"], p["pack"]) for p in packs] == [(8, 1), (8, 2)]
    one, two = packs
    assert one["throughput_vs_alone"] == 1 and two["ms_per_run_step"] == two["ms_per_step"] / 2
    assert two["throughput_vs_alone"] == pytest.approx(2 * one["ms_per_step"] /
                                                        two["ms_per_step"])
    assert "pack depth 8 K=2: " in capsys.readouterr().out
    # each of the paper's 5 depths one pack of its 2 runs, proportional to depth from the one
    assert b["projected_paper_sweep_1_seed_packed_s"] == pytest.approx(
        sum(64000 * two["ms_per_step"] / 1e3 * d / 8 for d in (20, 32, 44, 56, 110)))
    assert "projected_paper_sweep_3_seed_packed_s" not in b  # K=6 was not measured


def test_bench_checks_the_data_before_measuring(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert bench_cli(["--out", str(out), "--data", "synthetic", "--batch-size", "5000",
                      "--depths", "8"]) == 2
    err = capsys.readouterr().err
    assert err == ("resdepth: error: --batch-size=5000 is larger than the training set "
                   "(2048 images); allowed: 1 to 2048\n") and not out.exists()


@pytest.mark.parametrize("option, value, message", [
    ("--depths", "21", "model.depth=21 is not a CIFAR ResNet depth"),
    ("--depths", "20,abc", "--depths='20,abc': must be a comma list of depths 6n+2"),
    ("--pipelines", "ours,fast",
     "--pipelines='ours,fast': each must be ours, minimal or conventional"),
    ("--blocks", "deep", "--blocks='deep': each must be plain or residual"),
    ("--logger", "mlflow", "--logger='mlflow' is not one of csv, none, tensorboard, wandb"),
    ("--concurrent", "-1", "--concurrent='-1': run counts must be >= 0"),
    ("--threads", "1,-2", "--threads='1,-2': thread counts must be >= 0"),
    ("--threads", "two", "--threads='two': must be a comma list of CPU thread counts"),
    ("--pack", "1,0", "--pack='1,0': pack sizes must be from 1 to 64"),
    ("--pack", "two", "--pack='two': must be a comma list of pack sizes"),
    ("--steps", "0", "--steps=0 must be a positive integer"),
    ("--warmup", "-1", "--warmup=-1 must be a positive integer"),
    ("--batch-size", "0", "--batch-size=0 must be a positive integer"),
    ("--workers", "-2", "--workers=-2: must be >= 0"),
    ("--precision", "fp8", "--precision='fp8' is not one of auto, 32-true"),
    ("--accelerator", "tpu", "--accelerator='tpu' is not one of auto, cpu, gpu, cuda"),
    ("--compile-mode", "fast", "--compile-mode='fast' is not one of default, reduce-overhead"),
    ("--data", "nope", "--data=nope: In 'config': Could not find 'data/nope'; available: cifar10,"),
    ("--out", ".", "--out=.: cannot write a file there"),
] + ([] if torch.cuda.is_available()
      else [("--cuda-graph", "true", "--cuda-graph=true needs a CUDA GPU")]))
def test_bench_rejects_bad_options(tmp_path, monkeypatch, capsys, option, value, message):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "b.json"
    out.write_text("an earlier bench")
    args = ["--out", str(out)] if option != "--out" else []
    assert bench_cli([*args, option, value]) == 2
    err = capsys.readouterr().err
    assert (err.startswith("resdepth: error: ") and message in err
            and len(err.strip().splitlines()) == 1), err
    assert out.read_text() == "an earlier bench" and sorted(
        p.name for p in tmp_path.iterdir()) == ["b.json"]


def test_bench_cli_exits_2_on_a_bad_option(tmp_path):
    proc = run_cli("bench", "--precision", "fp8", "--out", str(tmp_path / "b.json"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "resdepth: error: --precision='fp8' is not one of auto, 32-true, 32, bf16-mixed, bf16, "
        "16-mixed, 16"]
    assert not (tmp_path / "b.json").exists()


def test_projection_is_linear_in_depth():
    assert _linear(56, [20, 110], [2.0, 11.0]) == pytest.approx(5.6)
    # extended past the measured depths
    assert _linear(8, [20, 56], [2.0, 5.6]) == pytest.approx(0.8)
    # past the deepest measured net: proportional to depth from it, never the slope of two noisy
    # close points
    assert _linear(110, [8, 14], [10.0, 9.0]) == pytest.approx(9.0 * 110 / 14)
    # 2 blocks x (64k steps x 1 ms + 64 evals x 0 s) per depth, 5 depths, ms proportional to depth
    assert project_sweep({20: 1.0}, {}) == pytest.approx(
        2 * 64 * sum(d / 20 for d in (20, 32, 44, 56, 110)))


def test_projection_with_several_runs_at_once_counts_the_tail():
    assert run_seconds({20: 1.0}, {})[:2] == [pytest.approx(64 * 110 / 20)] * 2  # deepest first
    runs = [4.0, 4.0, 2.0, 2.0]
    assert project_sweep_at_once(runs, {}, 1) == pytest.approx(12.0)  # one at a time: the sum
    # perfect sharing, no tail
    assert project_sweep_at_once(runs, {2: 2.0}, 2) == pytest.approx(6.0)
    # 2 at once give 1.5x: the two 4 s runs take 4 / 0.75 = 5.33 s, then the two 2 s runs 2.67 s
    assert project_sweep_at_once(runs, {2: 1.5}, 2) == pytest.approx(8.0)
    # 4 at once (2x): all four share until the short ones end (2 s of work each at 0.5 per run:
    # 4 s), then the long ones have 2 s left at 1.5 / 2 = 0.75 each: 2.67 s, in all 6.67 s, above
    # 12 / 2 = 6 (the tail)
    assert project_sweep_at_once(runs, {2: 1.5, 4: 2.0}, 4) == pytest.approx(4 + 2 / 0.75)


@pytest.mark.slow
def test_compiled_and_eager_steps_give_the_same_loss():
    try:
        torch.compile(torch.nn.Linear(2, 2))(torch.zeros(1, 2))
    except Exception as e:  # no C++ toolchain for Inductor on this machine
        pytest.skip(f"torch.compile unavailable on this CPU: {type(e).__name__}: {e}")
    losses = {}
    for compiled in (False, True):
        cfg = compose(["experiment=smoke", "model.depth=8",
                       f"trainer.compile={str(compiled).lower()}", "trainer.channels_last=false"])
        torch.manual_seed(0)
        system = System(cfg)
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
        opt = torch.optim.SGD(system.net.parameters(), lr=0.1, momentum=0.9)
        out = []
        for _ in range(2):  # the loss before and after one SGD step
            loss = F.cross_entropy(system.forward_net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
        losses[compiled] = out
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-5)
    assert losses[False][1] != losses[False][0]
