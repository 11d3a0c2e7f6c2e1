"""The one optimization loop every feature visualization in fvexp runs through.

Everything else (objectives, parameterizations, transforms, optimizers) is a piece handed to
`render`; new techniques are new pieces or configs, never new loops.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm import tqdm

from fvexp.errors import ArgumentError, Setting
from fvexp.optvis.features import FeatureModel
from fvexp.optvis.objectives import INPUT, Objective
from fvexp.optvis.optimizers import OptimizerFactory, check_images_first, create
from fvexp.optvis.transforms import Compose


@dataclass
class Render:
    """What a run produced: the last image, the objective at every step, and how it ended."""

    image: Tensor
    values: list[float] = field(default_factory=list)
    interrupted: bool = False


class NonFiniteObjective(ArgumentError):
    """The objective became NaN or infinite; `image` is the last image whose objective was finite."""

    def __init__(self, step: int, value: float, image: Tensor, values: list[float]) -> None:
        super().__init__(
            "the objective became {number} at step {step}; stopped and kept the last image whose objective "
            "was finite. Lower {lr}, or check the objective for a division by zero or a log of 0",
            kind="objective", value=value, number=value, step=step, lr=Setting.LEARNING_RATE)
        self.step, self.image, self.values = step, image, values


READ_EVERY = 32  # steps between reads of the objective on an accelerator (every step on the CPU)


class _Readings:
    """The objective's values, read from the device in batches so that the loop never waits on them.

    A read (`.item()`) makes the host wait until the device has finished every step queued so far;
    on a GPU that stalls the loop once per step. Values stay on the device until `flush`, which
    reads them with one copy, checks them, and hands them to `on_step` in order. On the CPU there is
    nothing to wait for, so every step is flushed at once and behaves exactly as a per-step read.
    """

    def __init__(self, image: Tensor, every: int, on_step: Callable[[int, float], None] | None, bar: tqdm) -> None:
        self.values: list[float] = []
        self.pending: list[tuple[int, Tensor, Tensor]] = []  # (step, value, the image it was computed on)
        self.last_finite, self.every, self.on_step, self.bar = image.detach(), every, on_step, bar

    def add(self, step: int, value: Tensor, image: Tensor) -> None:
        self.pending.append((step, value.detach(), image.detach()))
        if len(self.pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        """Read the pending values; raise `NonFiniteObjective` at the first one that is not finite."""
        if not self.pending:
            return
        read = torch.stack([value for _, value, _ in self.pending]).tolist()  # one device-to-host copy
        pending, self.pending = self.pending, []
        for (step, _, image), value in zip(pending, read, strict=True):
            if not math.isfinite(value):
                raise NonFiniteObjective(step, value, self.last_finite, self.values)
            self.last_finite = image
            self.values.append(value)
            if self.on_step:
                self.on_step(step, value)
        self.bar.set_postfix(objective=f"{self.values[-1]:.4g}", refresh=False)
        self.bar.update(len(pending))


def render(
    model: FeatureModel,
    objective: Objective,
    param: nn.Module,
    transforms: Compose,
    optimizer: OptimizerFactory,
    steps: int,
    seed: int,
    thresholds: Collection[int] = (),
    on_step: Callable[[int, float], None] | None = None,
    on_threshold: Callable[[int, Tensor], None] | None = None,
    progress: bool = True,
    read_every: int | None = None,
) -> Render:
    """Maximize `objective` over the images of `param` for `steps` steps and return the result.

    `on_step(step, value)` sees the objective after each step (on an accelerator, in batches of
    `READ_EVERY` steps, never later than the next threshold image); `on_threshold(step, image)` gets
    the image after `step` updates for each step in `thresholds`. Ctrl-C ends the loop early and
    returns what there is with `interrupted=True`. `read_every` overrides how many steps pass between
    reads of the objective (1 on the CPU, `READ_EVERY` elsewhere).
    """
    generator = torch.Generator().manual_seed(seed)  # CPU generator: same draws on every device
    opt = create(optimizer, list(param.parameters()))
    check_images_first(getattr(opt, "per_image", False), type(param))
    image = param()
    bar = tqdm(total=steps, desc="fvexp", unit="step", disable=not progress, dynamic_ncols=True)
    every = read_every or (1 if image.device.type == "cpu" else READ_EVERY)
    readings = _Readings(image, every, on_step, bar)
    with model.reading(objective.network_layers) as read:
        try:
            for step in range(1, steps + 1):
                value = objective({**read(transforms(image, generator)), INPUT: image}).mean()
                opt.zero_grad(set_to_none=True)
                (-value).backward()
                opt.step()
                image, computed_on = param(), image  # the new image first: a Ctrl-C in `on_step` keeps
                readings.add(step, value, computed_on)  # as many updates as it has values
                if on_threshold and step in thresholds:
                    readings.flush()
                    on_threshold(step, image.detach())
            readings.flush()
        except KeyboardInterrupt:
            readings.flush()
            bar.write(f"interrupted at step {len(readings.values)}; keeping the last image", file=sys.stderr)
            return Render(image.detach(), readings.values, interrupted=True)
        finally:
            bar.close()
    return Render(image.detach(), readings.values)


def images_that_fit(step: Callable[[int], object], device: torch.device, share: float = 0.8) -> int | None:
    """How many images one optimization holds in `share` of a CUDA card's memory; None on other devices.

    `step(batch)` runs one optimization step of `batch` images; its peak memory at batches of one
    and two images gives what an image costs and what all share (the model, the kernels' workspace).
    Sized from the card's whole memory, not from what happens to be free: the batches, and so the
    images (each batch is seeded by its number), then depend on the card and never on its load.
    """
    if device.type != "cuda":
        return None
    peaks = []
    for batch in (1, 2):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        step(batch)
        peaks.append(torch.cuda.max_memory_allocated(device))
    return fitting(share * torch.cuda.get_device_properties(device).total_memory, *peaks)


def fitting(budget: float, one: int, two: int) -> int:
    """Images within `budget` bytes when an optimization of one image peaks at `one` bytes and of two at `two`."""
    per_image = max(two - one, 1)
    return max(1, int((budget - (one - per_image)) // per_image))
