"""One training step: the optimiser beside the model, and forward + loss + backward + optimiser step, captured as one
CUDA graph on a GPU."""
from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

from benchmarks.data.protocol import WindowBatch
from benchmarks.training.config import TrainConfig

logger = logging.getLogger(__name__)

# Full batches a CUDA step runs eagerly before it captures its graph (optimiser state, workspaces, compiled code).
GRAPH_WARMUP_STEPS = 3


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """The training config's Adam / AdamW over `model`'s parameters.

    On CUDA it is the fused implementation, capturable (its step count lives on the device) and its learning rate a
    device tensor, so that the whole step can be captured in a CUDA graph and the schedule still reach it.
    """
    optimizer_class = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    if device.type == "cuda":
        return optimizer_class(model.parameters(), lr=torch.tensor(config.learning_rate, device=device),
                               weight_decay=config.weight_decay, fused=True, capturable=True)
    return optimizer_class(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)


class TrainStep:
    """One training step on a batch: forward, forecast loss plus auxiliary loss, backward, optimiser step.

    loss: "mse" or "mae" over the `target` output channels. forward: the callable to train through (e.g. the
    torch.compile'd model; default `model`). No host synchronisation: the loss stays on the device.

    With `cuda_graph`, full batches (`batch_size` windows) replay one CUDA graph of the whole step, optimiser
    included: one launch per step instead of the hundreds of small kernels Python would issue, which is what bounds
    these models on a GPU. The first GRAPH_WARMUP_STEPS full batches run eagerly on a side stream, as
    torch.cuda.graphs prescribes: they create the optimiser state, library workspaces and compiled code, none of
    which a capture may do. A batch of another size (each epoch's last, partial one) runs eagerly through the
    uncompiled model: a shape seen once per epoch is cheaper to run than to capture or compile. If the capture
    fails, the step logs why (`capture_error`) and stays eager.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss: str, target: slice,
                 batch_size: int, *, forward: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
                 bf16: bool = False, cuda_graph: bool = False) -> None:
        self.model = model
        self.forward = forward if forward is not None else model
        self.optimizer = optimizer
        self.criterion = nn.MSELoss() if loss == "mse" else nn.L1Loss()
        self.target = target
        self.batch_size = batch_size
        self.bf16 = bf16
        self.device = next(model.parameters()).device
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.capture_error: str | None = None
        self._warmup_left = GRAPH_WARMUP_STEPS
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_inputs: tuple[torch.Tensor, ...] = ()
        self._static_loss: torch.Tensor | None = None
        self._side_stream: torch.cuda.Stream | None = None

    @property
    def graphed(self) -> bool:
        """Whether full batches now replay a captured CUDA graph."""
        return self._graph is not None

    def __call__(self, batch: WindowBatch) -> torch.Tensor:
        """The batch's training loss, 0-dim on the device. A graphed step returns the same tensor each time, which
        the next step overwrites: use it before then (adding it to a running total is enough)."""
        if batch.x.shape[0] != self.batch_size:
            return self._eager(self.model, batch.x, batch.y, batch.x_mark)
        if not self.cuda_graph:
            return self._eager(self.forward, batch.x, batch.y, batch.x_mark)
        if self._graph is None:
            if self._warmup_left > 0:
                self._warmup_left -= 1
                return self._eager_on_side_stream(batch)
            self._capture(batch)
            if self._graph is None:
                return self._eager(self.forward, batch.x, batch.y, batch.x_mark)
        for static, fresh in zip(self._static_inputs, (batch.x, batch.y, batch.x_mark)):
            static.copy_(fresh)
        self._graph.replay()
        return self._static_loss

    def _loss(self, forward: Callable[..., tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor, y: torch.Tensor,
              x_mark: torch.Tensor) -> torch.Tensor:
        # No autocast weight cache: cached casts must not outlive a graph capture (torch.cuda.graphs docs).
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            forecast, aux_loss = forward(x, x_mark)  # (B, pred_len, C_in), ()
        return self.criterion(forecast[..., self.target].float(), y[..., self.target]) + aux_loss.float()

    def _eager(self, forward: Callable[..., tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor, y: torch.Tensor,
               x_mark: torch.Tensor) -> torch.Tensor:
        if forward is not self.model:
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration for a "reduce-overhead" compiled model
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss(forward, x, y, x_mark)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _eager_on_side_stream(self, batch: WindowBatch) -> torch.Tensor:
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(self.device)
        main = torch.cuda.current_stream(self.device)
        self._side_stream.wait_stream(main)
        with torch.cuda.stream(self._side_stream):
            loss = self._eager(self.forward, batch.x, batch.y, batch.x_mark)
        main.wait_stream(self._side_stream)
        return loss

    def _capture(self, batch: WindowBatch) -> None:
        self._static_inputs = tuple(t.clone() for t in (batch.x, batch.y, batch.x_mark))
        # Gradients set to None now are allocated inside the capture, from the graph's own memory pool.
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: Ray Tune trains in a worker thread; other threads' CUDA calls must not void the capture.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                loss = self._loss(self.forward, *self._static_inputs)
                loss.backward()
                self.optimizer.step()
        except RuntimeError as error:
            self.optimizer.zero_grad(set_to_none=True)
            self.cuda_graph = False
            self.capture_error = str(error).splitlines()[0] if str(error) else type(error).__name__
            logger.warning("CUDA graph capture of the training step failed, training eagerly: %s",
                           self.capture_error)
            return
        self._graph, self._static_loss = graph, loss.detach()
