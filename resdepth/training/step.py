"""Forward, loss and backward of one iteration as one call: on a CUDA device, one CUDA graph."""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

GRAPH_WARMUP = 3  # eager iterations (real ones) before the capture: cuDNN autotuning, lazy init
_CAPTURING = threading.Lock()  # packs side by side (threads) capture their graphs one at a time


def top1_error(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The fraction of the batch the net gets wrong."""
    return (logits.argmax(1) != y).float().mean()


class WholeStep:
    """One training iteration: `backward(x, y)` computes the gradients; a call also steps.

    On a CUDA device, GRAPH_WARMUP iterations run eagerly on a side stream, then forward, loss and
    backward are captured once as a CUDA graph and replayed: one launch instead of several hundred
    kernels, so these thin networks stop waiting for the host. The optimizer steps outside the
    graph (fused SGD: a few kernels), so a new learning rate needs no new capture. The loss, the
    error and, once captured, the gradients are static tensors that each call overwrites: nothing
    may set the gradients to None between calls.
    """

    def __init__(self, forward, optimizer: torch.optim.Optimizer, bf16: bool,
                 loss=F.cross_entropy, error=top1_error) -> None:
        """`loss`, `error`: of (logits, labels); a packed net's return one value per net."""
        self.forward, self.optimizer, self.bf16 = forward, optimizer, bf16
        self.loss, self.error = loss, error
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_steps = 0
        self.static: tuple[torch.Tensor, ...] = ()

    def _backward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # cache_enabled=False: autocast's weight cache must not outlive a capture
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16,
                            cache_enabled=False):
            logits = self.forward(x)
            loss = self.loss(logits, y)
        # a pack's losses summed: each net's gradient is its own loss's (d sum / d loss_k = 1)
        (loss.sum() if loss.dim() else loss).backward()
        with torch.no_grad():
            return loss.detach().float(), self.error(logits, y)

    def backward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, error as a fraction) of the batch; its gradients are in the parameters' .grad."""
        if x.device.type != "cuda" or (self.graph is None and self.eager_steps < GRAPH_WARMUP):
            self.eager_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            if x.device.type != "cuda":
                return self._backward(x, y)
            side = torch.cuda.Stream()  # warm-up off the default stream, as capture wants
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self._backward(x, y)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.graph is None:
            static_x, static_y = x.clone(), y.clone()
            # the captured backward writes fresh gradients, the static tensors the update reads
            self.optimizer.zero_grad(set_to_none=True)
            self.graph = torch.cuda.CUDAGraph()
            # on a stream of its own (not the capture stream all graphs share), and "thread_local":
            # a pack side by side in another thread may go on while this one captures
            with _CAPTURING, torch.cuda.graph(self.graph, stream=torch.cuda.Stream(),
                                              capture_error_mode="thread_local"):
                loss, err = self._backward(static_x, static_y)
            self.static = (static_x, static_y, loss, err)
        static_x, static_y, loss, err = self.static
        static_x.copy_(x)
        static_y.copy_(y)
        self.graph.replay()
        return loss, err

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole iteration, update included: (loss, error as a fraction)."""
        out = self.backward(x, y)
        self.optimizer.step()
        return out

    def release(self) -> None:
        """Drop the graph and its memory (the gradients live in it)."""
        self.graph, self.static = None, ()
        self.optimizer.zero_grad(set_to_none=True)
