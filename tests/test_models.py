import pickle

import pytest
import torch

from resdepth.models import ResponseStd, check_depth, cifar_resnet, count_parameters

PAPER_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}


@pytest.mark.parametrize("depth", sorted(PAPER_PARAMS))
@pytest.mark.parametrize("block", ["plain", "residual"])
def test_parameter_counts_match_the_paper_table(depth, block):
    assert count_parameters(cifar_resnet(depth=depth, block=block, shortcut="A")) == PAPER_PARAMS[depth]


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
    hooks = [layer.register_forward_hook(lambda m, i, o: outputs.append(o)) for layer in net.response_layers()]
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
