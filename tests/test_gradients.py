"""The gradient probe (training/gradients.py), gradients.csv (rundir) and what `resdepth plot` draws
and reads from it: the backward side of Figure 7."""

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resdepth import models, rundir
from resdepth.analysis import plots
from resdepth.analysis.report import gradient_sentence, write_outputs
from resdepth.analysis.runs import group_runs, load_runs
from resdepth.cli import plot_cli
from resdepth.training.gradients import probe

from .conftest import compose

KEYS = ("weight_grad_norm", "input_grad_norm", "weight_norm")
GRADIENT_FILES = ["gradients_by_layer", "weight_gradients_by_layer", "gradients_first_layer"]


def batch(n=4, size=8, seed=0):
    """n normalised images (size x size: the nets pool globally, so any size works) and labels."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def trained_a_little(net: nn.Module) -> nn.Module:
    """A net with .grad set and BN running statistics moved, as in the middle of training."""
    x, y = batch(seed=1)
    F.cross_entropy(net(x), y).backward()
    return net


# ------------------------------------------------------------------------------ the probe

@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_probe_leaves_the_net_bitwise_unchanged(mode):
    torch.manual_seed(0)
    net = trained_a_little(models.cifar_resnet(depth=8, shortcut="B"))
    net.train(mode == "train")
    state = {k: v.clone() for k, v in net.state_dict().items()}
    grads = {n: (p.grad, p.grad.clone()) for n, p in net.named_parameters()}
    rng = torch.get_rng_state()
    with torch.no_grad():  # as a record may call it
        rows = probe(net, *batch())
    assert len(rows) == 10  # 7 3x3 convs, 2 projections, the fc
    assert net.training is (mode == "train")
    assert torch.equal(torch.get_rng_state(), rng)  # no randomness drawn
    after = net.state_dict()
    assert state.keys() == after.keys()
    assert all(torch.equal(state[k], after[k]) for k in state)  # BN running stats included
    for n, p in net.named_parameters():
        grad, copy = grads[n]
        assert p.grad is grad and torch.equal(p.grad, copy)  # the same tensor, the same values


def hand_norms(net: models.CifarResNet, images, labels) -> list[dict]:
    """The probe's numbers, computed by hand: the forward written out, .backward(), retain_grad."""
    net = copy.deepcopy(net).train()  # BN on batch statistics, as the probe's
    net.zero_grad()
    x = images.clone().requires_grad_()
    layers = [(net.conv1, x)]
    h = F.relu(net.bn1(net.conv1(x)))
    for b in net.blocks:
        inp = h
        inp.retain_grad()
        mid = F.relu(b.bn1(b.conv1(inp)))
        mid.retain_grad()
        layers += [(b.conv1, inp), (b.conv2, mid)]
        out = b.bn2(b.conv2(mid))
        if isinstance(b, models.ResidualBlock):
            out = out + b.shortcut(inp)
            if isinstance(b.shortcut, nn.Sequential):
                layers.append((b.shortcut[0], inp))
        h = F.relu(out)
    pooled = F.adaptive_avg_pool2d(h, 1).flatten(1)
    pooled.retain_grad()
    layers.append((net.fc, pooled))
    F.cross_entropy(net.fc(pooled), labels).backward()
    return [{"weight_grad_norm": m.weight.grad.norm().item(),
             "input_grad_norm": t.grad.norm().item(), "weight_norm": m.weight.norm().item()}
            for m, t in layers]


@pytest.mark.parametrize("block,shortcut", [("plain", "A"), ("residual", "A"), ("residual", "B")])
def test_the_norms_match_a_hand_computation(block, shortcut):
    torch.manual_seed(0)
    net = trained_a_little(models.cifar_resnet(depth=8, block=block, shortcut=shortcut)).eval()
    images, labels = batch()
    rows = probe(net, images, labels)
    expected = hand_norms(net, images, labels)
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected):
        assert {k: row[k] for k in KEYS} == pytest.approx(want, rel=1e-4)
        assert all(type(row[k]) is float for k in KEYS)


def names(depth: int, shortcut: str, block: str = "residual") -> list[str]:
    """The weighted layers of a net in forward order, written out."""
    n = (depth - 2) // 6
    out = ["conv1"]
    for i in range(3 * n):
        out += [f"blocks.{i}.conv1", f"blocks.{i}.conv2"]
        if block == "residual" and shortcut == "B" and i in (n, 2 * n):  # where the shape changes
            out.append(f"blocks.{i}.shortcut.0")
    return out + ["fc"]


@pytest.mark.parametrize("block,shortcut,count", [("plain", "A", 20), ("residual", "A", 20),
                                                  ("residual", "B", 22)])
def test_one_row_per_weighted_layer_in_forward_order(block, shortcut, count):
    net = models.cifar_resnet(depth=20, block=block, shortcut=shortcut)
    rows = probe(net, *batch(n=2))
    assert len(rows) == count  # 19 3x3 convs and the fc, with option B 2 projections
    assert [r["layer"] for r in rows] == list(range(count))
    assert [r["name"] for r in rows] == names(20, shortcut, block)
    assert all(r[k] > 0 for r in rows for k in KEYS)


class PrefixedBlock(models.PlainBlock):
    """A custom kind: a 1x1 conv registered after conv1 and conv2 but run before them."""

    def __init__(self, in_planes, planes, stride, *, shortcut="A", bn_batch=0):
        super().__init__(in_planes, planes, stride, shortcut=shortcut, bn_batch=bn_batch)
        self.prefix = nn.Conv2d(in_planes, in_planes, 1, bias=False)

    def forward(self, x):
        return F.relu(self.branch(self.prefix(x)))


def test_a_custom_registered_block_kind_is_probed_in_forward_order(monkeypatch):
    monkeypatch.setitem(models.BLOCKS, "prefixed", PrefixedBlock)
    rows = probe(models.cifar_resnet(depth=8, block="prefixed"), *batch())
    assert [r["name"] for r in rows] == ["conv1", *[f"blocks.{i}.{c}" for i in range(3)
                                                    for c in ("prefix", "conv1", "conv2")], "fc"]


def test_channels_last_gives_the_same_norms():
    torch.manual_seed(0)
    net = models.cifar_resnet(depth=8, shortcut="B")
    images, labels = batch()
    plain_rows = probe(net, images, labels)
    cl = net.to(memory_format=torch.channels_last)
    rows = probe(cl, images.contiguous(memory_format=torch.channels_last), labels)
    for a, b in zip(rows, plain_rows):
        assert {k: a[k] for k in KEYS} == pytest.approx({k: b[k] for k in KEYS}, rel=1e-4)


# ------------------------------------------------------------------------------ gradients.csv

def fake_probe(iteration: int, layers: int = 3) -> list[dict]:
    return [{"layer": i, "name": f"l{i}", "weight_grad_norm": iteration + i / 10,
             "input_grad_norm": 1 / (iteration + i), "weight_norm": 2.0} for i in range(layers)]


def test_append_and_truncate_leave_no_gaps_and_no_duplicates(tmp_path, capsys):
    path = tmp_path / "gradients.csv"
    rundir.truncate_gradients(path, 0)  # a fresh run: nothing to cut, no file made
    assert not path.exists()
    for it in (10, 20, 30):
        rundir.append_gradients(path, it, fake_probe(it))
    with open(path, "a") as f:  # killed in the middle of record 40, after checkpoint 20
        f.write("40,0,l0,40.0,0.025,2.0\r\n40,1,l1,4")
    rundir.truncate_gradients(path, 20)  # the resumed run starts from checkpoint 20
    assert [r["iteration"] for r in rundir.read_gradients(path)] == [10] * 3 + [20] * 3
    for it in (30, 40):
        rundir.append_gradients(path, it, fake_probe(it))
    rows = rundir.read_gradients(path)
    assert [(r["iteration"], r["layer"]) for r in rows] == [
        (it, i) for it in (10, 20, 30, 40) for i in range(3)]
    assert rows[-1] == {"iteration": 40, "layer": 2, "name": "l2", "weight_grad_norm": 40.2,
                        "input_grad_norm": 1 / 42, "weight_norm": 2.0}  # floats round-trip
    assert list(rows[0]) == list(rundir.GRADIENTS)
    assert capsys.readouterr().err == ""


def test_a_torn_last_line_is_dropped_silently_and_a_damaged_row_is_named(tmp_path, capsys):
    path = tmp_path / "gradients.csv"
    for it in (10, 20):
        rundir.append_gradients(path, it, fake_probe(it, layers=2))
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1], "10,1,l1,zz,1,1", *lines[3:]]) + "\n30,0,l0,3")
    assert [(r["iteration"], r["layer"]) for r in rundir.read_gradients(path)] == [
        (10, 0), (20, 0), (20, 1)]
    err = capsys.readouterr().err
    assert f"{path}: row 3 cannot be read" in err and err.count("warning") == 1


# ------------------------------------------------------------------------------ figures, report

ITERATIONS = (10, 20, 30, 40)  # the smoke preset's records; its lr drops at 30 and 36


def norm(block: str, depth: int, seed: int, it: int, layer: int, key: str) -> float:
    """Made-up norms with a shape: the plain nets' backward signal shrinks toward the input."""
    base = {"input_grad_norm": 1.0, "weight_grad_norm": 0.5, "weight_norm": 3.0}[key]
    shrink = 0.9 ** (depth - layer) if block == "plain" and key == "input_grad_norm" else 1.0
    return base * shrink * (1 + seed / 10) * (1 + it / 100) * (1 + layer / 20)


def fake_run(root: Path, cfg: dict, block: str, depth: int, seed: int = 0,
             gradients: bool = True, scale: float = 1.0) -> Path:
    """A run directory as training leaves it, gradients.csv included (unless not `gradients`)."""
    cfg = json.loads(json.dumps(cfg))
    cfg["model"].update(block=block, depth=depth)
    cfg["seed"] = seed
    d = root / cfg["data"]["name"] / f"{block}-{depth}" / f"seed{seed}-x"
    d.mkdir(parents=True)
    rundir.write_json(d / "result.json", {
        "status": "done", "dataset": cfg["data"]["name"], "block": block, "depth": depth,
        "shortcut": "A", "seed": seed, "params": 1000 * depth, "steps": 40, "max_steps": 40,
        "wall_time_s": 5.0, "device": "cpu", "precision": "32-true", "versions": {"torch": "2"},
        "final_test_error": 0.2, "final_train_error": 0.1, "config": cfg})
    (d / "metrics.csv").write_text(
        "iteration,lr,train_loss,train_error,val_error,test_error,elapsed_s\n"
        + "".join(f"{it},0.1,1.0,0.5,nan,0.5,1\n" for it in ITERATIONS))
    rundir.write_json(d / "responses.json", {"layer_std": [1.0] * (depth - 1)})
    for it in ITERATIONS if gradients else ():
        rundir.append_gradients(d / "gradients.csv", it, [
            {"layer": i, "name": f"l{i}",
             **{k: scale ** (i == 0) * norm(block, depth, seed, it, i, k) for k in KEYS}}
            for i in range(depth)])  # depth - 1 convs and the fc
    return d


@pytest.fixture(scope="module")
def smoke():
    return compose(["experiment=smoke"])


@pytest.fixture(scope="module")
def cifar10():
    return compose(["experiment=smoke", "data=cifar10"])


def probed_root(root: Path, cfg: dict) -> Path:
    """plain and ResNet at depths 8 and 14; plain-14 with two seeds."""
    for block in ("plain", "residual"):
        for depth in (8, 14):
            fake_run(root, cfg, block, depth)
    fake_run(root, cfg, "plain", 14, seed=1)
    return root


def mean_of_seeds(block, depth, seeds, it, layer, key="input_grad_norm"):
    return sum(norm(block, depth, s, it, layer, key) for s in seeds) / len(seeds)


def test_probe_points_are_the_first_the_records_around_each_drop_and_the_last():
    paper = plots.probe_points(list(range(400, 64001, 400)), [32000, 48000])
    assert paper == {400: "it 400 (first)", 32000: "it 32000 (before the lr drop at 32000)",
                     32400: "it 32400 (after the lr drop at 32000)",
                     48000: "it 48000 (before the lr drop at 48000)",
                     48400: "it 48400 (after the lr drop at 48000)", 64000: "it 64000 (last)"}
    assert plots.probe_points([10, 20, 30, 40], [30, 36]) == {
        10: "it 10 (first)", 30: "it 30 (before the lr drops at 30, 36)",
        40: "it 40 (after the lr drops at 30, 36; last)"}
    # a run under way: a drop still ahead is not named
    assert plots.probe_points([10, 20, 30], [30, 36]) == {
        10: "it 10 (first)", 30: "it 30 (before the lr drop at 30; last)"}


def test_the_layer_figures_draw_each_net_at_its_probe_points(tmp_path, smoke):
    groups = group_runs(load_runs(probed_root(tmp_path, smoke)))
    for key, build in (("input_grad_norm", plots.gradient_layers_figure),
                       ("weight_grad_norm", plots.gradient_weights_figure)):
        fig = build(groups)
        assert [ax.get_title() for ax in fig.axes] == [
            "plain-8", "ResNet-8", "plain-14 (mean of 2 seeds)", "ResNet-14"]
        for ax in fig.axes:
            assert ax.get_yscale() == "log"
            assert [line.get_label() for line in ax.lines] == [
                "it 10 (first)", "it 30 (before the lr drops at 30, 36)",
                "it 40 (after the lr drops at 30, 36; last)"]
        plain14 = fig.axes[2].lines[1]  # at iteration 30
        assert list(plain14.get_xdata()) == list(range(1, 15))  # 13 convs and the fc
        assert list(plain14.get_ydata()) == pytest.approx(
            [mean_of_seeds("plain", 14, (0, 1), 30, i, key) for i in range(14)])
        assert "fixed probe batch" in fig.get_supxlabel() and "BN in training mode" in \
            fig.get_supxlabel() and "fp32" in fig.get_supxlabel()


def test_the_first_layer_figure_follows_every_net_over_the_iterations(tmp_path, smoke):
    fig = plots.first_layer_figure(group_runs(load_runs(probed_root(tmp_path, smoke))))
    for ax, key in zip(fig.axes, ("input_grad_norm", "weight_grad_norm")):
        assert ax.get_yscale() == "log" and ax.get_xlabel() == "iterations"
        lines = {line.get_label(): line for line in ax.lines
                 if not line.get_label().startswith("_")}  # not the lr drops' verticals
        assert list(lines) == ["plain-8", "plain-14 (mean of 2 seeds)", "ResNet-8", "ResNet-14"]
        line = lines["plain-14 (mean of 2 seeds)"]
        assert list(line.get_xdata()) == list(ITERATIONS)
        assert list(line.get_ydata()) == pytest.approx(
            [mean_of_seeds("plain", 14, (0, 1), it, 0, key) for it in ITERATIONS])
        assert line.get_linestyle() == "--" and lines["ResNet-14"].get_linestyle() == "-"


@pytest.mark.parametrize("milestones,drawn", [([30, 36], [30, 36]), ([30, 32000], [30]),
                                              ([32000, 48000], [])])
def test_the_first_layer_figure_marks_only_the_lr_drops_its_records_reach(tmp_path, smoke,
                                                                         milestones, drawn):
    cfg = json.loads(json.dumps(smoke))
    cfg["optim"]["milestones"] = milestones
    fig = plots.first_layer_figure(group_runs(load_runs(probed_root(tmp_path, cfg))))
    for ax in fig.axes:
        verticals = [line.get_xdata()[0] for line in ax.lines if line.get_label().startswith("_")]
        assert verticals == drawn and ax.get_xlim()[1] < 100  # the x axis is the records'
    assert ("dotted: lr drops" in fig._suptitle.get_text()) == bool(drawn)


def test_plot_draws_the_gradient_figures_and_the_report_reads_them(tmp_path, cifar10, capsys):
    root = probed_root(tmp_path, cifar10)
    assert plot_cli([str(root)]) == 0
    out = root / "figures"
    for name in GRADIENT_FILES:
        assert (out / f"{name}.png").read_bytes().startswith(b"\x89PNG")
        assert (out / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    assert "gradient" not in capsys.readouterr().err
    report = (out / "report.md").read_text()
    for name in GRADIENT_FILES:
        assert f"]({name}.png)" in report
    # plain-14 seeds 0 and 1 against ResNet-14 at the last record, from the numbers written
    p, r = mean_of_seeds("plain", 14, (0, 1), 40, 0), norm("residual", 14, 0, 40, 0,
                                                           "input_grad_norm")
    assert 0.1 < p / r < 1  # 0.9 ** 14: smaller, within an order of magnitude
    assert f"14: plain {p:.3g} vs ResNet {r:.3g} at it 40 (ratio {p / r:.2g})" in report
    assert ("Backward signal at the first layer, indicative only (one seed per net" not in report
            and "Backward signal at the first layer, indicative only (nets with one seed" in report)
    assert "the plain nets' is within an order of magnitude of the residual nets' at every depth" \
        in report and "the schedule is shorter than the paper's" in report


def test_the_reading_names_a_depth_where_the_plain_signal_is_an_order_smaller(tmp_path, cifar10):
    for depth in (8, 14):
        fake_run(tmp_path, cifar10, "residual", depth)
        fake_run(tmp_path, cifar10, "plain", depth, scale=0.01 if depth == 14 else 1.0)
    sentence = gradient_sentence(group_runs(load_runs(tmp_path)))
    assert "the plain nets' is not within an order of magnitude of the residual nets' at depth " \
           "14 (against" in sentence
    assert "indicative only (one seed per net gives no seed spread" in sentence


def test_synthetic_data_is_not_judged(tmp_path, smoke):
    sentence = gradient_sentence(group_runs(load_runs(probed_root(tmp_path, smoke))))
    assert sentence.startswith("Gradient norms not judged: synthetic data") and "14: plain" in \
        sentence


def test_a_root_without_gradients_plots_the_rest_and_says_so_once(tmp_path, smoke, capsys):
    for block in ("plain", "residual"):
        fake_run(tmp_path, smoke, block, 8, gradients=False)
    assert plot_cli([str(tmp_path)]) == 0
    drawn = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert drawn == sorted(f"{n}.{ext}" for n in ("fig6_curves", "depth_vs_error", "fig7_responses")
                           for ext in ("png", "pdf")) + ["report.md", "table6.csv", "table6.md"]
    err = capsys.readouterr().err.splitlines()
    assert err == ["resdepth: warning: gradient figures not drawn: no run has gradients.csv (runs "
                   "recorded before the gradient probe)"]
    report = (tmp_path / "figures" / "report.md").read_text()
    assert "Gradient norms not drawn: no run has gradients.csv" in report


def test_a_run_without_gradients_is_left_out_and_named(tmp_path, smoke):
    fake_run(tmp_path, smoke, "plain", 8)
    fake_run(tmp_path, smoke, "residual", 8, gradients=False)
    write_outputs(tmp_path)
    report = (tmp_path / "figures" / "report.md").read_text()
    assert "Left out of the gradient figures (no gradients.csv): ResNet-8 (done)." in report
    fig = plots.gradient_layers_figure(group_runs(load_runs(tmp_path)))
    assert [ax.get_title() for ax in fig.axes] == ["plain-8"]
