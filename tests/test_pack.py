"""Packed runs (resdepth.training.pack): K runs trained as one wide net, each still its own run,
training as it would alone: bitwise in bf16, within a measured noise floor in fp32."""

import math
from pathlib import Path

import pytest
import torch

from resdepth.rundir import read_json, read_metrics
from resdepth.training.pack import PackData, PackedConv, PackSystem, pack_key, plan_packs
from resdepth.training.train import RunFailed, train, train_pack, train_side_by_side

from .conftest import compose

TINY = ("data=synthetic", "data.train_size=512", "data.test_size=128", "model.depth=8",
        "optim.batch_size=32", "optim.bn_batch=16", "optim.milestones=[12,16]",
        "trainer.max_steps=20", "trainer.eval_every=5", "trainer.checkpoint_every=1")
RUNS = (("plain", 0), ("residual", 1))


def _cfgs(root, *extra, runs=RUNS, precision="bf16-mixed"):
    return [compose([*TINY, f"model.block={block}", f"seed={seed}", f"results_root={root}",
                     f"trainer.precision={precision}", *extra]) for block, seed in runs]


def _rows(cfg):
    """metrics.csv without the wall-clock column (nan as a string: comparable)."""
    return [{k: "nan" if v != v else v for k, v in r.items() if k != "elapsed_s"}
            for r in read_metrics(Path(cfg["run_dir"]) / "metrics.csv")]


def _gradients(cfg):
    return (Path(cfg["run_dir"]) / "gradients.csv").read_text()


def _weights(cfg):
    return torch.load(Path(cfg["run_dir"]) / "model.pt", weights_only=True)["state_dict"]


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _max_diff(a, b):
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a
               if a[k].is_floating_point())


def _alone(cfgs):
    return [train(c) for c in cfgs]


WARMUP = ("optim.warmup=true", "optim.warmup_window=5", "optim.warmup_until_error=0.78")


def test_a_pack_trains_each_run_bitwise_as_it_trains_alone_in_bf16(tmp_path):
    """A plain and a residual net of other seeds, BN over groups of 16, warm-ups that end at
    different iterations (each net its own lr meanwhile): records, weights, responses and the
    last checkpoint of each packed run are bitwise those of the run trained alone."""
    alone, packed = _cfgs(tmp_path / "alone", *WARMUP), _cfgs(tmp_path / "pack", *WARMUP)
    solo = _alone(alone)
    assert len({r["warmup_ended_at"] for r in solo}) == 2, "the warm-ups must end apart"
    results = train_pack(packed)
    for a, p, s, r in zip(alone, packed, solo, results):
        assert r["status"] == "done" and r["pack"] == ["plain-8 seed 0", "ResNet-8 seed 1"]
        assert _rows(a) == _rows(p)
        assert (r["warmup_ended_at"], r["params"]) == (s["warmup_ended_at"], s["params"])
        assert _same(_weights(a), _weights(p))
        assert read_json(Path(a["run_dir"]) / "responses.json") == read_json(
            Path(p["run_dir"]) / "responses.json")
        assert _gradients(a) == _gradients(p) != ""
        ca, cp = (torch.load(Path(c["run_dir"]) / "last.ckpt", weights_only=True)
                  for c in (a, p))
        assert _same(ca["state_dict"], cp["state_dict"])
        assert all(torch.equal(ca["optimizer_states"][0]["state"][i]["momentum_buffer"],
                               cp["optimizer_states"][0]["state"][i]["momentum_buffer"])
                   for i in ca["optimizer_states"][0]["state"])
        assert cp["hyper_parameters"]["cfg"]["run_dir"] == p["run_dir"]
        log = (Path(p["run_dir"]) / "resdepth.log").read_text()
        assert f"[{r['pack'][0 if p is packed[0] else 1]}] done" in log
        other = r["pack"][1 if p is packed[0] else 0]
        assert f"[{other}] it" not in log  # each run's log holds its own progress lines


def test_in_fp32_a_pack_stays_within_the_noise_floor_of_one_run(tmp_path, monkeypatch):
    """fp32 with the grouped convolution of CUDA, which sums in another order: the pack's weights
    differ from each run's alone by no more than the same run alone in another memory format
    differs from it."""
    monkeypatch.setattr(PackedConv, "grouped", True)
    alone = _cfgs(tmp_path / "alone", precision="32-true")
    packed = _cfgs(tmp_path / "pack", precision="32-true")
    nchw = _cfgs(tmp_path / "nchw", "trainer.channels_last=false", precision="32-true")
    _alone(alone), _alone(nchw), train_pack(packed)
    floor = max(_max_diff(_weights(a), _weights(n)) for a, n in zip(alone, nchw))
    assert 0 < floor < 1  # a real floor: the two formats do differ, and not by everything
    for a, p in zip(alone, packed):
        assert _max_diff(_weights(a), _weights(p)) <= floor
        for x, y in zip(_rows(a), _rows(p)):
            assert x["iteration"] == y["iteration"] and x["lr"] == y["lr"]


class Stop(Exception):
    pass


def _stop_at(step):
    def hook(self, outputs, batch, batch_idx):
        if self.trainer.global_step == step:  # after every run's last.ckpt of this iteration
            raise Stop(f"stopped at iteration {step}")
    return hook


def test_a_stopped_pack_resumes_as_a_pack_or_its_runs_alone_and_solo_runs_resume_packed(
        tmp_path, monkeypatch):
    """Checkpoints move between packs and solo runs: every way of resuming at iteration 7 ends
    with the records and weights of runs trained alone without a stop."""
    ref = _cfgs(tmp_path / "ref", *WARMUP)
    _alone(ref)
    as_pack, alone_after, pack_after = (_cfgs(tmp_path / name, *WARMUP)
                                        for name in ("pack", "alone_after", "pack_after"))
    with monkeypatch.context() as m:
        m.setattr(PackSystem, "on_train_batch_end", _stop_at(7), raising=False)
        for cfgs in (as_pack, alone_after):
            outcomes = train_pack(cfgs)
            assert all(isinstance(o, RunFailed) and "stopped at iteration 7" in str(o)
                       for o in outcomes)
        from resdepth.training.system import System
        m.setattr(System, "on_train_batch_end", _stop_at(7), raising=False)
        for cfg in pack_after:
            with pytest.raises(RunFailed):
                train(cfg)
    resumed = [*train_pack(as_pack), *_alone(alone_after), *train_pack(pack_after)]
    assert [r["resumed_from"] for r in resumed] == [7] * 6
    for cfgs in (as_pack, alone_after, pack_after):
        for r, c in zip(ref, cfgs):
            assert _rows(r) == _rows(c)
            assert _same(_weights(r), _weights(c))
            assert _gradients(r) == _gradients(c)  # cut back to the checkpoint, then appended


def test_a_diverging_neighbour_is_recorded_and_leaves_the_other_run_unchanged(
        tmp_path, monkeypatch):
    """Run 2's images turn NaN at iteration 6: it is recorded as diverged at 7 and stops; run 1
    trains on, bitwise as it trains alone."""
    ref, packed = _cfgs(tmp_path / "ref"), _cfgs(tmp_path / "pack")
    _alone(ref)
    original = PackData.on_after_batch_transfer

    def poisoned(self, batch, dataloader_idx):
        x, ys = original(self, batch, dataloader_idx)
        if self.trainer.global_step >= 6:
            x = x.clone()
            x[:, 3:] = math.nan
        return x, ys

    monkeypatch.setattr(PackData, "on_after_batch_transfer", poisoned)
    results = train_pack(packed)
    assert results[0]["status"] == "done"
    assert (results[1]["status"], results[1]["diverged_at"]) == ("diverged", 7)
    assert _rows(ref[0]) == _rows(packed[0])
    assert _same(_weights(ref[0]), _weights(packed[0]))
    assert [r["iteration"] for r in _rows(packed[1])] == [5, 10]  # no records after it diverged


def test_a_run_that_cannot_join_fails_alone_and_the_others_train(tmp_path):
    """A damaged checkpoint is that run's failure; the runs that can train do."""
    cfgs = _cfgs(tmp_path, runs=(("plain", 0), ("residual", 1), ("residual", 2)))
    Path(cfgs[2]["run_dir"]).mkdir(parents=True)
    Path(cfgs[2]["run_dir"], "last.ckpt").write_bytes(b"not a checkpoint")
    outcomes = train_pack(cfgs)
    assert [o["status"] for o in outcomes[:2]] == ["done", "done"]
    assert outcomes[0]["pack"] == ["plain-8 seed 0", "ResNet-8 seed 1"]
    assert isinstance(outcomes[2], RunFailed) and "damaged" in str(outcomes[2])
    assert read_json(Path(cfgs[2]["run_dir"]) / "result.json")["status"] == "failed"


def test_packs_hold_runs_that_differ_only_by_seed_and_block_kind(tmp_path):
    base = [compose(["data=synthetic", f"model.depth={d}", f"model.block={b}", f"seed={s}",
                     f"model.shortcut={sc}", f"results_root={tmp_path}"])
            for d in (8, 14) for b, sc in (("plain", "A"), ("residual", "A"), ("residual", "B"))
            for s in (0, 1, 2)]
    assert len({pack_key(c) for c in base}) == 4  # per depth: option A (plain, residual) and B
    assert sorted(map(len, plan_packs(base, 8, [0] * len(base)))) == [3, 3, 6, 6]
    packs = plan_packs(base, 4, [0] * len(base))  # 6 runs of one key: two packs of 3, not 4 + 2
    assert sorted(map(len, packs)) == [3] * 6
    assert all(len({pack_key(base[i]) for i in p}) == 1 for p in packs)
    assert plan_packs(base, 1, [0] * len(base)) == [[i] for i in range(len(base))]
    starts = [i % 2 for i in range(len(base))]  # runs at another iteration never share a pack
    assert all(len({starts[i] for i in p}) == 1 for p in plan_packs(base, 8, starts))
    mine = {**base[0], "model": {**base[0]["model"], "block": "mine"}}  # a registered kind
    assert pack_key(mine) is None and plan_packs([mine, mine], 8, [0, 0]) == [[0], [1]]
    plain_b = compose(["data=synthetic", "model.block=plain", "model.shortcut=B"])
    assert pack_key(plain_b) == pack_key(compose(["data=synthetic", "model.block=residual"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_a_pack_in_one_graph_stays_within_the_noise_floor(tmp_path):
    """On a GPU the pack's iteration is one CUDA graph; each run stays within the floor that the
    same run in another memory format measures."""
    gpu = ("trainer.accelerator=gpu", "trainer.cuda_graph=true")
    alone, packed = _cfgs(tmp_path / "alone", *gpu), _cfgs(tmp_path / "pack", *gpu)
    nchw = _cfgs(tmp_path / "nchw", *gpu, "trainer.channels_last=false")
    _alone(alone), _alone(nchw)
    assert all(r["cuda_graph"] for r in train_pack(packed))
    floor = max(_max_diff(_weights(a), _weights(n)) for a, n in zip(alone, nchw))
    for a, p in zip(alone, packed):
        assert _max_diff(_weights(a), _weights(p)) <= max(floor, 1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_packs_side_by_side_on_their_own_streams_stay_within_the_noise_floor(tmp_path):
    """trainer.streams: two packs (and a run alone) in threads of one process, each on a CUDA
    stream of its own and in its own CUDA graph, captured while the others train; each run stays
    within the floor that the same run alone in another memory format measures."""
    gpu = ("trainer.accelerator=gpu", "trainer.cuda_graph=true")
    deeper = ("model.depth=14",)
    alone = [*_cfgs(tmp_path / "alone", *gpu), *_cfgs(tmp_path / "alone", *gpu, *deeper)]
    nchw = [*_cfgs(tmp_path / "nchw", *gpu, "trainer.channels_last=false"),
            *_cfgs(tmp_path / "nchw", *gpu, "trainer.channels_last=false", *deeper)]
    _alone(alone), _alone(nchw)
    side = tmp_path / "side"
    groups = [_cfgs(side, *gpu), _cfgs(side, *gpu, *deeper), _cfgs(side / "one", *gpu)[:1]]
    outcomes = train_side_by_side(groups)
    assert all(r["status"] == "done" and r["cuda_graph"] for g in outcomes for r in g)
    floor = max(_max_diff(_weights(a), _weights(n)) for a, n in zip(alone, nchw))
    for a, s in zip([*alone, alone[0]], [c for g in groups for c in g]):
        assert _max_diff(_weights(a), _weights(s)) <= max(floor, 1e-6)


def test_packs_side_by_side_in_threads_train_bitwise_as_one_after_another(tmp_path):
    """On a CPU (bf16) the threads of train_side_by_side change nothing: bitwise the rows and
    weights of the same packs, and of a run alone, trained one after another."""
    groups = [_cfgs(tmp_path / "side"), _cfgs(tmp_path / "side", "model.depth=14"),
              _cfgs(tmp_path / "side" / "one")[:1]]
    after = [_cfgs(tmp_path / "after"), _cfgs(tmp_path / "after", "model.depth=14"),
             _cfgs(tmp_path / "after" / "one")[:1]]
    outcomes = train_side_by_side(groups)
    assert [len(g) for g in outcomes] == [2, 2, 1]
    assert all(r["status"] == "done" for g in outcomes for r in g)
    assert [r["pack"] for r in outcomes[0]] == [["plain-8 seed 0", "ResNet-8 seed 1"]] * 2
    train_pack(after[0]), train_pack(after[1]), train(after[2][0])
    for s, a in zip([c for g in groups for c in g], [c for g in after for c in g]):
        assert _rows(s) == _rows(a) and _gradients(s) == _gradients(a)
        assert _same(_weights(s), _weights(a))
