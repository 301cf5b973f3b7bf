"""One training step: the optimiser beside the model, and forward + loss + backward + optimiser step, captured as one
CUDA graph on a GPU; and a fused array's evaluation pass, captured the same way."""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import nn

from benchmarks.data.protocol import WindowBatch
from benchmarks.training.config import TrainConfig
from benchmarks.training.member_stack import MemberStack
from benchmarks.training.stacked_adam import StackedAdam

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


class CapturedStep:
    """A step on a batch (a training step, or an evaluation pass's forward) that replays as one CUDA graph for full
    batches.

    Subclasses say what the step is (`_step`); this class owns the graph. With `cuda_graph`, full batches replay
    one CUDA graph of the whole step (a training step's optimiser included): one launch per step instead of the hundreds of small
    kernels Python would issue, which is what bounds these models on a GPU. The first GRAPH_WARMUP_STEPS full
    batches run eagerly on a side stream, as torch.cuda.graphs prescribes: they create the optimiser state, library
    workspaces and compiled code, none of which a capture may do. A batch of another size (each epoch's last,
    partial one) runs eagerly: a shape seen once per epoch is cheaper to run than to capture or compile. If the
    capture fails, the step logs why (`capture_error`) and stays eager. No host synchronisation: results stay on
    the device.
    """

    batch_dim = 0  # the dim of the first input that counts a batch's windows

    def __init__(self, batch_size: int, device: torch.device, *, cuda_graph: bool = False) -> None:
        self.batch_size = batch_size
        self.device = device
        self.cuda_graph = cuda_graph and device.type == "cuda"
        self.capture_error: str | None = None
        self._warmup_left = GRAPH_WARMUP_STEPS
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_inputs: tuple[torch.Tensor, ...] = ()
        self._static_result: torch.Tensor | None = None
        self._side_stream: torch.cuda.Stream | None = None

    @property
    def graphed(self) -> bool:
        """Whether full batches now replay a captured CUDA graph."""
        return self._graph is not None

    def reset(self) -> None:
        """Forget the captured graph (the parameters or input shapes changed); the next full batches warm up and
        capture again."""
        self._graph, self._static_inputs, self._static_result = None, (), None
        self._warmup_left = GRAPH_WARMUP_STEPS

    def _step(self, inputs: tuple[torch.Tensor, ...], full: bool) -> torch.Tensor:
        """Run the step eagerly on a batch; what it reports. `full`: a batch of `batch_size` windows."""
        raise NotImplementedError

    def _before_capture(self) -> None:
        """Called before a capture starts and after one fails."""

    def _run(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """What one step on `inputs` reports (batch first in inputs[0]'s `batch_dim`). A graphed step returns the
        same tensor each time, which the next step overwrites: use it before then (adding it to a running total is
        enough)."""
        if inputs[0].shape[self.batch_dim] != self.batch_size:
            return self._step(inputs, full=False)
        if not self.cuda_graph:
            return self._step(inputs, full=True)
        if self._graph is None:
            if self._warmup_left > 0:
                self._warmup_left -= 1
                return self._eager_on_side_stream(inputs)
            self._capture(inputs)
            if self._graph is None:
                return self._step(inputs, full=True)
        for static, fresh in zip(self._static_inputs, inputs):
            static.copy_(fresh)
        self._graph.replay()
        return self._static_result

    def _eager_on_side_stream(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(self.device)
        main = torch.cuda.current_stream(self.device)
        self._side_stream.wait_stream(main)
        with torch.cuda.stream(self._side_stream):
            reported = self._step(inputs, full=True)
        main.wait_stream(self._side_stream)
        return reported

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> None:
        self._static_inputs = tuple(t.clone() for t in inputs)
        self._before_capture()
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: Ray Tune trains in a worker thread; other threads' CUDA calls must not void the capture.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                reported = self._step(self._static_inputs, full=True)
        except RuntimeError as error:
            self._before_capture()
            self.cuda_graph = False
            self.capture_error = str(error).splitlines()[0] if str(error) else type(error).__name__
            logger.warning("CUDA graph capture of %s failed, running eagerly: %s", type(self).__name__,
                           self.capture_error)
            return
        self._graph, self._static_result = graph, reported


class OptimizerStep(CapturedStep):
    """A training step: forward, the loss subclasses define (`_loss`), backward and the optimiser's step."""

    def __init__(self, optimizer: Any, batch_size: int, device: torch.device, *, cuda_graph: bool = False) -> None:
        super().__init__(batch_size, device, cuda_graph=cuda_graph)
        self.optimizer = optimizer

    def _loss(self, inputs: tuple[torch.Tensor, ...], full: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss to differentiate, the loss to report) of a batch; `full`: a batch of `batch_size` windows."""
        raise NotImplementedError

    def _step(self, inputs: tuple[torch.Tensor, ...], full: bool) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss, reported = self._loss(inputs, full)
        loss.backward()
        self.optimizer.step()
        return reported.detach()

    def _before_capture(self) -> None:
        # Gradients set to None now are allocated inside the capture, from the graph's own memory pool.
        self.optimizer.zero_grad(set_to_none=True)


class TrainStep(OptimizerStep):
    """One training step of one model on a batch: forward, forecast loss plus auxiliary loss, backward, optimiser
    step (see CapturedStep for the CUDA graph).

    loss: "mse" or "mae" over the `target` output channels. forward: the callable to train through full batches
    with (e.g. the torch.compile'd model; default `model`); partial batches go through `model`, so nothing
    recompiles.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss: str, target: slice,
                 batch_size: int, *, forward: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
                 bf16: bool = False, cuda_graph: bool = False) -> None:
        super().__init__(optimizer, batch_size, next(model.parameters()).device, cuda_graph=cuda_graph)
        self.model = model
        self.forward = forward if forward is not None else model
        self.criterion = nn.MSELoss() if loss == "mse" else nn.L1Loss()
        self.target = target
        self.bf16 = bf16

    def __call__(self, batch: WindowBatch) -> torch.Tensor:
        """The batch's training loss, 0-dim on the device (see CapturedStep._run on reusing it)."""
        return self._run((batch.x, batch.y, batch.x_mark))

    def _loss(self, inputs: tuple[torch.Tensor, ...], full: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, x_mark = inputs
        forward = self.forward if full else self.model
        if forward is not self.model:
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration for a "reduce-overhead" compiled model
        # No autocast weight cache: cached casts must not outlive a graph capture (torch.cuda.graphs docs).
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            forecast, aux_loss = forward(x, x_mark)  # (B, pred_len, C_in), ()
        loss = self.criterion(at_least_float32(forecast[..., self.target]), y[..., self.target])
        loss = loss + at_least_float32(aux_loss)
        return loss, loss


class _StackInputs:
    """What the steps of a fused array share: a batch and the members' random draws as the step's inputs, and the
    stack's forward on them."""

    stack: MemberStack
    device: torch.device
    bf16: bool
    _draw_names: tuple[str, ...] = ()

    def __call__(self, batch: WindowBatch, draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """The step on `batch` (see the class's own docstring for what it returns); `draws`: the members' random
        inputs (MemberStack.draw)."""
        self._draw_names = tuple(draws)
        return self._run((batch.x, batch.y, batch.x_mark, *draws.values()))  # type: ignore[attr-defined]

    def _forward(self, inputs: tuple[torch.Tensor, ...], *, shared_input: bool = False,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(forecast (K, B, pred_len, C_in), aux_loss (K,), y) of the step's inputs."""
        x, y, x_mark, *draws = inputs
        # No autocast weight cache: cached casts must not outlive a graph capture (torch.cuda.graphs docs).
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            forecast, aux_loss, _ = self.stack.forward(x, x_mark, dict(zip(self._draw_names, draws)),
                                                       shared_input=shared_input)
        return forecast, aux_loss, y


class FusedTrainStep(_StackInputs, OptimizerStep):
    """One training step of every member of a MemberStack at once: each member's forecast loss ("mse" or "mae",
    per member) plus its auxiliary loss; backward through their sum, which gives each member exactly its own
    gradient, and one StackedAdam step (see CapturedStep for the CUDA graph).

    Batches are (K, B, ...): one batch per member. The step returns the members' losses, (K,) on the device.
    """

    batch_dim = 1

    def __init__(self, stack: MemberStack, optimizer: StackedAdam, losses: list[str], target: slice,
                 batch_size: int, *, bf16: bool = False, cuda_graph: bool = False) -> None:
        device = next(iter(stack.params.values())).device
        super().__init__(optimizer, batch_size, device, cuda_graph=cuda_graph)
        self.stack = stack
        self.mae_members = torch.tensor([loss == "mae" for loss in losses], device=device)
        self.target = target
        self.bf16 = bf16

    def keep(self, members: torch.Tensor) -> None:
        """Keep only the members at `members` (a 1-D long tensor on the device), in that order: in the stack, the
        optimiser and here; the next full batches capture a new graph."""
        self.stack.keep(members)
        self.optimizer.keep(members)
        self.optimizer.params = list(self.stack.params.values())
        self.mae_members = self.mae_members.index_select(0, members)
        self.reset()

    def _loss(self, inputs: tuple[torch.Tensor, ...], full: bool) -> tuple[torch.Tensor, torch.Tensor]:
        forecast, aux_loss, y = self._forward(inputs)
        error = at_least_float32(forecast[..., self.target]) - y[..., self.target]
        forecast_loss = torch.where(self.mae_members, error.abs().mean(dim=(1, 2, 3)),
                                    error.square().mean(dim=(1, 2, 3)))
        losses = forecast_loss + at_least_float32(aux_loss)  # (K,)
        return losses.sum(), losses


class FusedEvalStep(_StackInputs, CapturedStep):
    """The forward of an evaluation pass of every member of a MemberStack on one shared batch: each member's summed
    squared and absolute errors over the `target` channels, (K, 2) in float64 (see CapturedStep for the CUDA graph:
    an epoch's validation replays it, as training does its step). Call `reset` when the stack's members change."""

    def __init__(self, stack: MemberStack, target: slice, batch_size: int, *, bf16: bool = False,
                 cuda_graph: bool = False) -> None:
        super().__init__(batch_size, next(iter(stack.params.values())).device, cuda_graph=cuda_graph)
        self.stack = stack
        self.target = target
        self.bf16 = bf16

    def _step(self, inputs: tuple[torch.Tensor, ...], full: bool) -> torch.Tensor:
        with torch.no_grad():
            forecast, _, y = self._forward(inputs, shared_input=True)
            error = at_least_float32(forecast[..., self.target]) - y[..., self.target]
            return torch.stack([error.square().sum(dim=(1, 2, 3), dtype=torch.float64),
                                error.abs().sum(dim=(1, 2, 3), dtype=torch.float64)], dim=1)


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in float32 if it is in a narrower float (bf16 autocast output), else as it is (float64 stays)."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()
