"""The backward side of Figure 7: each weighted layer's gradient norms on a fixed probe batch.

Section 4.1 of the paper rules out vanishing gradients as the cause of the plain nets' degradation
("the backward propagated gradients exhibit healthy norms with BN"); gradients.csv lets a run show
it. A probe batch at each record, not an average over training iterations: it costs nothing per
iteration and puts nothing inside the captured (CUDA graph) training step.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTED = (nn.Conv2d, nn.Linear)  # the 3x3 convs, option B's 1x1 projections and the fc


def probe(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    """Per weighted layer, in forward order: {layer, name, weight_grad_norm, input_grad_norm,
    weight_norm}, L2 norms of the mean cross-entropy's gradients on (images, labels).

    Computed in fp32 with BN in training mode (batch statistics, as training's backward sees
    them) on a deep copy, so the net's parameters, .grad, BN running statistics and mode stay as
    they are. input_grad_norm is the gradient wrt the tensor the layer reads (for the first conv,
    the images), which includes every other path that reads it (an identity shortcut).
    """
    net = copy.deepcopy(net).float().train()  # Parameter's deepcopy leaves .grad behind
    seen: dict[nn.Module, tuple[str, torch.Tensor]] = {}  # in the order the forward reaches them

    def hook(name: str):
        def record(module, inputs, output):
            seen.setdefault(module, (name, inputs[0]))  # a module called twice counts once
        return record

    for name, module in net.named_modules():
        if isinstance(module, WEIGHTED):
            module.register_forward_hook(hook(name))
    device = next(net.parameters()).device
    # the caller may be in no_grad, inference mode or autocast (a record inside training)
    with (torch.inference_mode(False), torch.enable_grad(),
          torch.autocast(device.type, enabled=False)):
        x = images.detach().to(device=device, dtype=torch.float32, copy=True).requires_grad_()
        loss = F.cross_entropy(net(x), labels.to(device))
        weights = [m.weight for m in seen]
        # one gradient per distinct input tensor: a block's conv1 and projection read the same
        inputs = list({id(t): t for _, t in seen.values()}.values())
        grads = torch.autograd.grad(loss, weights + inputs)
    by_input = {id(t): g for t, g in zip(inputs, grads[len(weights):])}
    norms = torch.stack([torch.stack([g.double().norm(), by_input[id(t)].double().norm(),
                                      m.weight.double().norm()])
                         for (m, (_, t)), g in zip(seen.items(), grads)]).tolist()  # one read
    return [{"layer": i, "name": name, "weight_grad_norm": dw, "input_grad_norm": dx,
             "weight_norm": w}
            for i, ((name, _), (dw, dx, w)) in enumerate(zip(seen.values(), norms))]
