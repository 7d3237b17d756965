import math
import subprocess
import sys

import pytest
import torch

from resdepth.rundir import read_json, read_metrics
from resdepth.config import warms_up
from resdepth.training.system import System, lr_at, warmup_bound, warmup_ends_by
import resdepth.training.train
from resdepth.training.train import train

from .conftest import compose

PAPER = compose([])["optim"]


@pytest.mark.parametrize("step,lr", [(0, 0.1), (31_999, 0.1), (32_000, 0.01), (47_999, 0.01),
                                     (48_000, 0.001), (63_999, 0.001)])
def test_paper_schedule(step, lr):
    assert lr_at(step, PAPER) == pytest.approx(lr)


@pytest.mark.parametrize("avx512_bf16, amx, precision", [(True, False, "bf16-mixed"),
                                                         (False, True, "bf16-mixed"),
                                                         (False, False, "32-true")])
def test_precision_auto_on_the_cpu_is_bf16_only_where_it_is_native(monkeypatch, avx512_bf16, amx,
                                                                   precision):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    t = compose(["trainer.accelerator=cpu"])["trainer"]
    assert resdepth.training.train.resolve_device(t) == ("cpu", precision)
    # asked for: kept
    assert resdepth.training.train.resolve_device({**t, "precision": "32-true"}) == ("cpu",
                                                                                     "32-true")


def test_warmup_lr_until_switched_and_never_past_the_first_milestone():
    assert lr_at(0, PAPER, warming_up=True) == 0.01
    assert lr_at(399, PAPER, warming_up=True) == 0.01
    assert lr_at(400, PAPER, warming_up=False) == 0.1
    # scheduled lr, not the warm-up lr
    assert lr_at(32_000, PAPER, warming_up=True) == pytest.approx(0.01)


def test_warmup_setting():
    assert warms_up(PAPER, 110) and not warms_up(PAPER, 56)
    assert (warms_up({**PAPER, "warmup": True}, 20)
            and not warms_up({**PAPER, "warmup": "false"}, 110))
    with pytest.raises(ValueError, match="optim.warmup='maybe' is not one of auto, true, false"):
        warms_up({**PAPER, "warmup": "maybe"}, 20)


def _tiny(tmp_path, *extra):
    return compose(["experiment=smoke", f"results_root={tmp_path}", "model.depth=8",
                    "trainer.progress=false", *extra])


def test_warmup_switches_back_to_the_base_lr(tmp_path):
    cfg = _tiny(tmp_path, "optim.warmup=true", "optim.warmup_window=5",
                "optim.warmup_until_error=0.85", "trainer.eval_every=5", "optim.milestones=[1000]")
    result = train(cfg)
    ended = result["warmup_ended_at"]
    assert ended is not None and ended % 5 == 0 and 5 <= ended < 40
    rows = read_metrics(f"{cfg['run_dir']}/metrics.csv")
    lrs = {r["iteration"]: r["lr"] for r in rows}
    # record i shows the lr of iteration i - 1
    assert all(lrs[i] == 0.01 for i in lrs if i <= ended)
    assert all(lrs[i] == 0.1 for i in lrs if i > ended)


def test_warmup_that_never_reaches_the_threshold_keeps_warming(tmp_path):
    cfg = _tiny(tmp_path, "optim.warmup=true", "optim.warmup_window=5",
                "optim.warmup_until_error=0.0", "optim.milestones=[1000]")
    result = train(cfg)
    assert result["warmup_ended_at"] is None
    assert {r["lr"] for r in read_metrics(f"{cfg['run_dir']}/metrics.csv")} == {0.01}


def test_warmup_ends_by_training_error_or_at_its_bound():
    o = {**PAPER, "warmup_until_error": 0.8, "warmup_max_steps": 1200}
    assert warmup_ends_by(400, o, 0.79) == "training error"
    assert warmup_ends_by(400, o, 0.80) is None and warmup_ends_by(401, o, None) is None
    assert warmup_ends_by(1199, o, None) is None and warmup_ends_by(1200, o, None) == "bound"
    assert warmup_bound(o) == 1200
    assert warmup_bound({**o, "warmup_max_steps": 0}) == 32_000  # no bound set: the first milestone
    assert warmup_bound({**o, "milestones": [500, 700]}) == 500
    assert warmup_bound({**o, "warmup_max_steps": 0, "milestones": []}) is None


def test_paper_warmup_bounds_plain_110_like_resnet_110():
    """warmup=auto warms up both nets of depth 110 under one rule, so plain-110 (which never reaches
    80% training error) is back at lr 0.1 after warmup_max_steps, far before the first milestone."""
    for block in ("plain", "residual"):
        o = compose(["model.depth=110", f"model.block={block}"])["optim"]
        assert warms_up(o, 110) and 0 < warmup_bound(o) < o["milestones"][0]
        # the bound falls on a test of the training error
        assert warmup_bound(o) % o["warmup_window"] == 0


def test_warmup_that_never_reaches_the_threshold_ends_at_its_bound(tmp_path):
    cfg = _tiny(tmp_path, "optim.warmup=true", "optim.warmup_window=5",
                "optim.warmup_until_error=0.0", "optim.warmup_max_steps=20",
                "optim.milestones=[1000]", "trainer.eval_every=5", "trainer.max_steps=30")
    result = train(cfg)
    assert (result["warmup_ended_at"], result["warmup_ended_by"]) == (20, "bound")
    lrs = {r["iteration"]: r["lr"] for r in read_metrics(f"{cfg['run_dir']}/metrics.csv")}
    # record i: the lr of iteration i - 1
    assert lrs == {5: 0.01, 10: 0.01, 15: 0.01, 20: 0.01, 25: 0.1, 30: 0.1}


class Stop(RuntimeError):
    """Stands for an interruption: the run stops after iteration k, its checkpoint there."""


def test_warmup_resumed_mid_window_ends_where_an_uninterrupted_one_does(tmp_path, monkeypatch):
    """Stopped at iteration 7 (inside the second window of 5 iterations), resumed from its
    checkpoint: the warm-up ends at the same iteration, for the same reason, with the same lr in
    every record."""
    args = ("optim.warmup=true", "optim.warmup_window=5", "optim.warmup_until_error=0.7",
            "optim.milestones=[1000]", "trainer.eval_every=5", "trainer.checkpoint_every=1",
            "trainer.max_steps=25")
    clean = train(_tiny(tmp_path / "clean", *args))
    assert clean["warmup_ended_by"] == "training error" and clean["warmup_ended_at"] > 7

    def stop_at_7(self, outputs, batch, batch_idx):
        # after the recorder's hook wrote last.ckpt at iteration 7
        if self.trainer.global_step == 7:
            raise Stop("stopped at iteration 7")

    cfg = _tiny(tmp_path / "resumed", *args)
    with monkeypatch.context() as m:
        m.setattr(System, "on_train_batch_end", stop_at_7)
        with pytest.raises(Exception, match="stopped at iteration 7"):  # recorded as a failed run
            train(cfg)
    resumed = train(cfg)
    assert resumed["resumed_from"] == 7
    assert (resumed["warmup_ended_at"], resumed["warmup_ended_by"]) == (clean["warmup_ended_at"],
                                                                        "training error")
    assert [r["lr"] for r in read_metrics(f"{cfg['run_dir']}/metrics.csv")] == [
        r["lr"] for r in read_metrics(f"{clean['run_dir']}/metrics.csv")]


def test_a_resume_with_another_cpu_thread_count_says_so_and_records_both(tmp_path, monkeypatch,
                                                                          capsys):
    """trainer.threads is a recorded setting: result.json's segments say how many CPU threads
    trained which iterations, and a resume with another number says so, as a device change does."""
    args = ("trainer.eval_every=5", "trainer.max_steps=15")

    def stop_at_5(self, outputs, batch, batch_idx):
        if self.trainer.global_step == 5:
            raise Stop("stopped at iteration 5")

    before = torch.get_num_threads()
    try:
        with monkeypatch.context() as m:
            m.setattr(System, "on_train_batch_end", stop_at_5)
            with pytest.raises(Exception, match="stopped at iteration 5"):
                train(_tiny(tmp_path, *args, "trainer.threads=1"))
        capsys.readouterr()
        cfg = _tiny(tmp_path, *args, "trainer.threads=2")
        resumed = train(cfg)
        assert torch.get_num_threads() == 2  # what the run computed with
    finally:
        torch.set_num_threads(before)
    device, precision = resumed["device"], resumed["precision"]
    assert resumed["resumed_from"] == 5 and resumed["threads"] == 2
    assert resumed["segments"] == [
        {"from": 0, "device": device, "precision": precision, "threads": 1},
        {"from": 5, "device": device, "precision": precision, "threads": 2}]
    out = capsys.readouterr().out
    assert (f"note: iterations 0-5 were trained on {device} in {precision} with 1 CPU thread; it "
            f"now continues on {device} in {precision} with 2 CPU threads") in out
    assert f"{device}, {precision}, 2 CPU threads -> " in out
    # not part of the run's name: the same run directory under any thread count
    assert cfg["run_dir"] == _tiny(tmp_path, *args)["run_dir"]
    with pytest.raises(ValueError, match=r"trainer.threads=-1 .*>= 0 \(0: all of this machine"):
        train(_tiny(tmp_path, *args, "trainer.threads=-1"))


def test_bn_batch_reaches_the_net_and_must_divide_the_batch():
    # batch 32: two groups
    cfg = compose(["experiment=smoke", "model.depth=8", "optim.bn_batch=16"])
    assert {m.bn_batch for m in System(cfg).net.modules() if hasattr(m, "bn_batch")} == {16}
    with pytest.raises(ValueError, match="optim.bn_batch=24 .*optim.batch_size=32"):
        System(compose(["experiment=smoke", "model.depth=8", "optim.bn_batch=24"]))


def test_evaluation_runs_in_chunks_of_eval_batch_size():
    from resdepth.data import DataModule

    errors, sizes = {}, {}
    for n in (1000, 48):
        cfg = compose(["experiment=smoke", "model.depth=8", f"trainer.eval_batch_size={n}"])
        torch.manual_seed(0)
        system = System(cfg)
        system.datamodule = DataModule(cfg["data"], batch_size=32, seed=0).load()
        sizes[n] = []
        system.net.register_forward_hook(lambda m, i, o, n=n: sizes[n].append(len(o)))
        errors[n] = system.evaluate(system.datamodule.eval_splits["test"])
    images = len(system.datamodule.eval_splits["test"])
    # memory: 48 at once
    assert sizes[1000] == [images] and max(sizes[48]) == 48 and sum(sizes[48]) == images
    assert errors[48] == errors[1000]  # results: the same


def test_records_and_result(tmp_path):
    cfg = _tiny(tmp_path, "data.val_size=256")
    result = train(cfg)
    rows = read_metrics(f"{cfg['run_dir']}/metrics.csv")
    assert [r["iteration"] for r in rows] == [10, 20, 30, 40]
    assert all(0 <= r["train_error"] <= 1 and 0 <= r["test_error"] <= 1 and 0 <= r["val_error"] <= 1
               for r in rows)
    # milestones 30, 36 in smoke
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.1, 0.1, 0.001])
    assert result["final_test_error"] == rows[-1]["test_error"]
    assert result["final_train_error"] == pytest.approx(rows[-1]["train_error"])
    assert result["best_test_error"] == min(r["test_error"] for r in rows)
    assert result["status"] == "done" and result["steps"] == 40 and result["params"] == 75_290
    assert rows[-1]["train_error"] < rows[0]["train_error"]  # it learns
    saved = read_json(f"{cfg['run_dir']}/result.json")
    assert saved["final_val_error"] == rows[-1]["val_error"] and saved["config"]["seed"] == 0
    responses = read_json(f"{cfg['run_dir']}/responses.json")["layer_std"]
    assert len(responses) == 7 and all(s > 0 and math.isfinite(s) for s in responses)


def _train_both_ways(tmp_path, monkeypatch, *extra):
    """metrics.csv of one run trained by Lightning's zero_grad/backward/step and by the whole-step
    path."""
    rows = {}
    for whole in (False, True):
        monkeypatch.setattr(resdepth.training.train, "use_cuda_graph",
                            lambda *a, whole=whole: whole)
        cfg = _tiny(tmp_path / str(whole), *extra)
        result = train(cfg)
        assert result["status"] == "done" and result["cuda_graph"] is whole
        rows[whole] = read_metrics(f"{cfg['run_dir']}/metrics.csv")
    return rows


def test_whole_step_path_trains_like_lightnings_own_step(tmp_path, monkeypatch):
    """The path a CUDA graph replays (training_step does forward, backward and the SGD update
    itself, Lightning's optimizer_step only counts) gives the same numbers as Lightning's step; on
    the CPU it runs eagerly."""
    rows = _train_both_ways(tmp_path, monkeypatch, "trainer.accelerator=cpu")
    assert [r["iteration"] for r in rows[True]] == [10, 20, 30, 40]
    for key in ("train_loss", "train_error", "test_error", "lr"):
        assert [r[key] for r in rows[True]] == pytest.approx([r[key] for r in rows[False]],
                                                             rel=1e-6, abs=1e-7), key
    assert rows[True][-1]["train_loss"] < rows[True][0]["train_loss"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_cuda_graph_trains_like_eager(tmp_path, monkeypatch, precision):
    """Captured once, re-captured at each lr change (warm-up end, milestones), the graph's run
    follows the eager one; fp32 without TF32 closely, bf16 within its rounding."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    rows = _train_both_ways(tmp_path, monkeypatch, "trainer.accelerator=gpu",
                            f"trainer.precision={precision}", "trainer.max_steps=60",
                            "optim.milestones=[25,45]", "optim.warmup=true",
                            "optim.warmup_window=5", "optim.warmup_until_error=0.89")
    # cuDNN autotunes each run on its own; bf16 rounds
    tol = 1e-2 if precision == "32-true" else 5e-2
    for key in ("train_loss", "lr"):
        assert [r[key] for r in rows[True]] == pytest.approx([r[key] for r in rows[False]],
                                                             rel=tol, abs=tol), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("bn_batch, channels_last", [(0, False), (16, True)])
def test_whole_step_graph_replays_the_eager_updates_and_follows_lr_changes(monkeypatch, bn_batch,
                                                                           channels_last):
    """Step by step against a plain eager loop (deterministic cuDNN, fp32): same losses and weights,
    through the eager warm-up, the capture, and an lr change (the update is outside the graph)."""
    import torch.nn.functional as F

    from resdepth.models import cifar_resnet
    from resdepth.training.step import GRAPH_WARMUP, WholeStep

    for module, name, value in ((torch.backends.cudnn, "deterministic", True),
                                (torch.backends.cudnn, "benchmark", False),
                                (torch.backends.cudnn, "allow_tf32", False),
                                (torch.backends.cuda.matmul, "allow_tf32", False)):
        monkeypatch.setattr(module, name, value)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(32, 3, 32, 32, generator=g).cuda(),
                torch.randint(0, 10, (32,), generator=g).cuda())
               for _ in range(10)]
    # with BN in groups of 16 images: slices of static shape that keep the memory format
    if channels_last:
        batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
    lrs = [0.1] * 6 + [0.01] * 4
    nets, losses = [], {}
    for graphed in (False, True):
        torch.manual_seed(0)
        net = cifar_resnet(depth=8, block="residual", shortcut="A", bn_batch=bn_batch).cuda()
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True)
        step = WholeStep(net, opt, bf16=False)
        out, graphs = [], set()
        for (x, y), lr in zip(batches, lrs):
            opt.param_groups[0]["lr"] = lr
            if graphed:
                loss, _ = step(x, y)
                graphs.add(id(step.graph) if step.graph is not None else None)
            else:
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(net(x), y)
                loss.backward()
                opt.step()
            out.append(loss.item())
        # captured once, kept across the lr change
        assert graphed is False or len(graphs - {None}) == 1
        nets.append(net)
        losses[graphed] = out
    assert GRAPH_WARMUP < 6
    assert losses[True] == pytest.approx(losses[False], rel=1e-5, abs=1e-6)
    for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_runs_take_the_gpu_with_the_fewest_runs(tmp_path):
    from resdepth.training.device import claim_gpu

    held = [claim_gpu(2, tmp_path) for _ in range(5)]
    assert [g for g, _ in held] == [0, 1, 0, 1, 0]  # spread first, then double up
    held[0][1].close()
    held[3][1].close()  # GPU 0: 2 runs (a free slot among them), GPU 1: 1 run
    gpu, lock = claim_gpu(2, tmp_path)
    assert gpu == 1
    for _, f in held:
        f.close()
    lock.close()
    # a run that dies without closing its lock does not leave its GPU marked busy
    code = ("from resdepth.training.device import claim_gpu; "
            f"print(claim_gpu(2, {str(tmp_path)!r})[0])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True).stdout.strip() == "0"
    assert claim_gpu(2, tmp_path)[0] == 0
