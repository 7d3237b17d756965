"""One training iteration as one call: eager, or on a CUDA device captured once as a CUDA graph and replayed."""

from __future__ import annotations

import torch
import torch.nn.functional as F

GRAPH_WARMUP = 3  # eager iterations (real ones) before a CUDA graph is captured: cuDNN autotuning, SGD state


class WholeStep:
    """One training iteration (forward, loss, backward, SGD update) as a single call returning (loss, error).

    On a CUDA device it runs GRAPH_WARMUP iterations eagerly on a side stream, then captures the iteration in a
    CUDA graph and replays it: one launch instead of several hundred kernels, so these thin networks stop waiting
    for the host. The learning rate is a constant of the captured update: a new lr (warm-up end, milestones)
    captures again. Elsewhere it runs eagerly. The returned loss and error are device tensors that the next call
    overwrites: copy them (on the device) before calling again.
    """

    def __init__(self, forward, optimizer: torch.optim.Optimizer, bf16: bool) -> None:
        self.forward, self.optimizer, self.bf16 = forward, optimizer, bf16
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_lr = None
        self.eager_steps = 0
        self.static: tuple[torch.Tensor, ...] = ()

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # cache_enabled=False: autocast's weight cache must not outlive a capture
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            logits = self.forward(x)
            loss = F.cross_entropy(logits, y)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            return loss.detach().float(), (logits.argmax(1) != y).float().mean()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lr = self.optimizer.param_groups[0]["lr"]
        if self.graph is not None and lr != self.graph_lr:
            self.release()
        if x.device.type != "cuda" or (self.graph is None and self.eager_steps < GRAPH_WARMUP):
            self.eager_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            if x.device.type != "cuda":
                return self._step(x, y)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self._step(x, y)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.graph is None:
            static_x, static_y = x.clone(), y.clone()
            self.optimizer.zero_grad(set_to_none=True)  # the captured backward writes fresh gradients
            self.graph, self.graph_lr = torch.cuda.CUDAGraph(), lr
            with torch.cuda.graph(self.graph):
                loss, err = self._step(static_x, static_y)
            self.static = (static_x, static_y, loss, err)
        static_x, static_y, loss, err = self.static
        static_x.copy_(x)
        static_y.copy_(y)
        self.graph.replay()
        return loss, err

    def release(self) -> None:
        """Drop the graph and its memory (the gradients live in it): the next call captures again."""
        self.graph, self.static = None, ()
        self.optimizer.zero_grad(set_to_none=True)
