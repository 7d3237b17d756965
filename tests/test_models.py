import pickle

import pytest
import torch

from resdepth.models import (BLOCKS, GroupBatchNorm2d, PlainBlock, ResponseStd, check_bn_batch,
                             check_depth, cifar_resnet, count_parameters, net_name,
                             register_block)

PAPER_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}


@pytest.mark.parametrize("depth", sorted(PAPER_PARAMS))
@pytest.mark.parametrize("block", ["plain", "residual"])
def test_parameter_counts_match_the_paper_table(depth, block):
    assert (count_parameters(cifar_resnet(depth=depth, block=block, shortcut="A"))
            == PAPER_PARAMS[depth])


@pytest.mark.parametrize("depth", [20, 56])
def test_option_b_adds_two_projections(depth):
    a = count_parameters(cifar_resnet(depth=depth, shortcut="A"))
    b = count_parameters(cifar_resnet(depth=depth, shortcut="B"))
    assert b - a == 2_752  # 1x1 16->32 (512) + BN (64) + 1x1 32->64 (2048) + BN (128)


def test_option_a_shortcuts_have_no_parameters():
    net = cifar_resnet(depth=20, shortcut="A")
    assert sum(count_parameters(b.shortcut) for b in net.blocks) == 0
    assert sum(1 for b in net.blocks if b.shortcut.__class__.__name__ == "PadShortcut") == 2


def test_plain_has_no_shortcut_and_differs_from_residual():
    torch.manual_seed(0)
    plain = cifar_resnet(depth=20, block="plain")
    res = cifar_resnet(depth=20, block="residual")
    res.load_state_dict(plain.state_dict())  # same parameters...
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(plain.eval()(x), res.eval()(x))  # ...different function


@pytest.mark.parametrize("in_channels,num_classes", [(3, 10), (1, 100)])
def test_output_shape(in_channels, num_classes):
    net = cifar_resnet(depth=20, in_channels=in_channels, num_classes=num_classes)
    assert net(torch.randn(5, in_channels, 32, 32)).shape == (5, num_classes)


def test_downsampling_halves_the_maps_twice():
    net = cifar_resnet(depth=20)
    shapes = []
    for b in net.blocks:
        b.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    net(torch.randn(1, 3, 32, 32))
    assert shapes[0] == (16, 32, 32) and shapes[3] == (32, 16, 16) and shapes[6] == (64, 8, 8)


@pytest.mark.parametrize("depth", [21, 0, -4, 7, 9])
def test_bad_depth_names_the_valid_depths(depth):
    with pytest.raises(ValueError, match=r"6n\+2.*20, .*56.*110"):
        cifar_resnet(depth=depth)


def test_check_depth_returns_n():
    assert check_depth(20) == 3 and check_depth(110) == 18 and check_depth(1202) == 200


def test_bad_block_and_shortcut():
    with pytest.raises(ValueError, match="plain, residual"):
        cifar_resnet(depth=20, block="dense")
    with pytest.raises(ValueError, match="A, B"):
        cifar_resnet(depth=20, shortcut="C")


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_models_pickle(shortcut):
    net = cifar_resnet(depth=20, shortcut=shortcut)
    clone = pickle.loads(pickle.dumps(net))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(net.eval()(x), clone.eval()(x))


def test_he_initialisation():
    net = cifar_resnet(depth=56)
    w = net.blocks[10].conv1.weight  # 32 -> 32 channels, 3x3: fan_in 288
    assert abs(w.std().item() - (2 / 288) ** 0.5) < 0.01


def test_layer_response_std_over_whole_tensor():
    net = cifar_resnet(depth=20).eval()
    x = torch.randn(8, 3, 32, 32)
    outputs = []
    hooks = [layer.register_forward_hook(lambda m, i, o: outputs.append(o))
             for layer in net.response_layers()]
    with ResponseStd(net) as r:
        net(x[:3])
        net(x[3:])  # accumulated over batches: equals the std over all 8 images
    for h in hooks:
        h.remove()
    stds = r.std()
    assert len(stds) == 19  # 6n + 1 3x3 layers for depth 20
    for i, s in enumerate(stds):
        whole = torch.cat([outputs[i], outputs[19 + i]])
        assert s == pytest.approx(whole.double().std().item(), rel=1e-6)
    assert all(not layer._forward_hooks for layer in net.response_layers())  # hooks removed on exit


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_bn_over_groups_of_64_is_bn_over_each_half(shortcut):
    """bn_batch=64, a batch of 128 in training: the same outputs and running statistics as the two
    halves through whole-batch BN one after the other (the paper's two GPUs); evaluation is
    unchanged."""
    torch.manual_seed(0)
    grouped = cifar_resnet(depth=20, shortcut=shortcut,
                           bn_batch=64).to(memory_format=torch.channels_last)
    whole = cifar_resnet(depth=20, shortcut=shortcut)
    whole.load_state_dict(grouped.state_dict())
    x = torch.randn(128, 3, 32, 32)
    out = grouped.train()(x.contiguous(memory_format=torch.channels_last))
    halves = torch.cat([whole.train()(x[:64]), whole(x[64:])])
    torch.testing.assert_close(out, halves, rtol=1e-4, atol=1e-5)
    # running mean/var, counts
    for a, b in zip(grouped.state_dict().values(), whole.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grouped.eval()(x), whole.eval()(x))
    # one group of 128 normalises differently
    assert not torch.allclose(out, whole.train()(x), atol=1e-3)


@pytest.mark.parametrize("depth", [20, 110])
def test_bn_groups_add_no_parameters(depth):
    assert (count_parameters(cifar_resnet(depth=depth, block="plain", bn_batch=64))
            == PAPER_PARAMS[depth])


def test_bn_batch_that_does_not_divide_the_batch_is_refused():
    assert check_bn_batch(64, 128) == 64 and check_bn_batch(0, 100) == 0
    with pytest.raises(ValueError, match="optim.bn_batch=48 .*optim.batch_size=128"):
        check_bn_batch(48, 128)
    with pytest.raises(ValueError, match="optim.bn_batch=48 .*optim.batch_size=100"):
        cifar_resnet(depth=8, bn_batch=48).train()(torch.randn(100, 3, 32, 32))
    with pytest.raises(ValueError, match="optim.bn_batch=-1"):
        cifar_resnet(depth=8, bn_batch=-1)
    assert cifar_resnet(depth=8, bn_batch=48).eval()(torch.randn(100, 3, 32, 32)).shape == (100, 10)


def test_block_kinds_come_from_the_registry():
    assert list(BLOCKS) == ["plain", "residual"]
    assert [net_name(b, d) for b, d in [("plain", 20), ("residual", 56), ("residual", 110)]] == [
        "plain-20", "ResNet-56", "ResNet-110"]


class DoubledBlock(PlainBlock):
    """A throwaway kind: the plain pair of layers, its output doubled."""

    paper_name = "doubled"

    def forward(self, x):
        return 2 * super().forward(x)


def test_a_registered_block_kind_builds_a_net():
    register_block("doubled", DoubledBlock)
    try:
        net = cifar_resnet(depth=20, block="doubled")
        assert isinstance(net.blocks[0], DoubledBlock) and net_name("doubled", 20) == "doubled-20"
        assert count_parameters(net) == PAPER_PARAMS[20] and len(net.response_layers()) == 19
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        with pytest.raises(ValueError, match="not one of plain, residual, doubled"):
            cifar_resnet(depth=20, block="dense")
    finally:
        del BLOCKS["doubled"]


def test_a_bn_batch_at_least_the_batch_normalises_the_whole_batch():
    assert check_bn_batch(64, 8) == 64  # e.g. optim.batch_size=8 under experiment=paper: one group
    torch.manual_seed(0)
    grouped = cifar_resnet(depth=8, bn_batch=64).train()
    torch.manual_seed(0)
    whole = cifar_resnet(depth=8).train()
    x = torch.randn(8, 3, 32, 32)
    assert torch.equal(grouped(x), whole(x))


def random_bn(channels, bn_batch, seed=0):
    torch.manual_seed(seed)
    bn = GroupBatchNorm2d(channels, bn_batch)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 1.5)
    return bn


def forward_backward(bn, x, grad, forward=None, bf16=False):
    """Output, input/weight/bias gradients; x arrives in bf16 under CPU bf16 autocast, as from a
    conv there."""
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = bn(x) if forward is None else forward(bn, x)
    y.backward(grad)
    return y.detach(), x.grad, bn.weight.grad, bn.bias.grad


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("bn_batch", [64, 0])
@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("channels", [16, 64])
def test_group_bn_channels_are_bitwise_independent(bf16, bn_batch, k, channels):
    """K nets trained as one wide net (resdepth.training.pack): a GroupBatchNorm2d of K*C channels
    gives each block of C channels bitwise what a GroupBatchNorm2d of C channels gives it alone:
    output, gradients and running statistics."""
    torch.manual_seed(2)
    dtype = torch.bfloat16 if bf16 else torch.float32
    xs = [torch.randn(128, channels, 8, 8) * 2 + 1 for _ in range(k)]
    grads = [torch.randn(128, channels, 8, 8) for _ in range(k)]
    alone = [random_bn(channels, bn_batch, seed=i) for i in range(k)]
    wide = GroupBatchNorm2d(k * channels, bn_batch)
    with torch.no_grad():
        for name in ["weight", "bias", "running_mean", "running_var"]:
            getattr(wide, name).copy_(torch.cat([getattr(bn, name) for bn in alone]))

    def cl(t):
        return t.to(dtype).contiguous(memory_format=torch.channels_last)

    out = forward_backward(wide, cl(torch.cat(xs, 1)), cl(torch.cat(grads, 1)), bf16=bf16)
    out += (wide.running_mean, wide.running_var)
    for i, bn in enumerate(alone):
        expected = forward_backward(bn, cl(xs[i]), cl(grads[i]), bf16=bf16)
        expected += (bn.running_mean, bn.running_var)
        for a, b in zip(out, expected):
            assert torch.equal(a.narrow(1 if a.dim() > 1 else 0, i * channels, channels), b)
    assert wide.num_batches_tracked.item() == (128 // bn_batch if bn_batch else 1)


@pytest.mark.parametrize("bn_batch,batch,train", [(16, 64, False), (0, 64, True), (64, 64, True),
                                                   (64, 8, True)])
def test_group_bn_is_batchnorm2d_in_eval_with_bn_batch_0_or_one_group(bn_batch, batch, train):
    torch.manual_seed(3)
    x = torch.randn(batch, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(batch, 8, 6, 6)
    bn, ref = random_bn(8, bn_batch).train(train), random_bn(8, bn_batch).train(train)
    out = forward_backward(bn, x, grad)
    expected = forward_backward(ref, x, grad, torch.nn.BatchNorm2d.forward)
    for a, b in zip(out, expected):
        assert torch.equal(a, b)
    assert torch.equal(bn.running_var, ref.running_var)
    assert bn.num_batches_tracked.item() == ref.num_batches_tracked.item() == int(train)
