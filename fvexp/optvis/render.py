"""The one optimization loop every feature visualization in fvexp runs through.

Everything else (objectives, parameterizations, transforms, optimizers) is a piece handed to
`render`; new techniques are new pieces or configs, never new loops.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm import tqdm

from fvexp.errors import FvexpError
from fvexp.optvis.models import FeatureModel
from fvexp.optvis.objectives import INPUT, Objective
from fvexp.optvis.optimizers import OptimizerFactory
from fvexp.optvis.transforms import Compose


@dataclass
class Render:
    """What a run produced: the last image, the objective at every step, and how it ended."""

    image: Tensor
    values: list[float] = field(default_factory=list)
    interrupted: bool = False


class NonFiniteObjective(FvexpError):
    """The objective became NaN or infinite; `image` is the last image whose objective was finite."""

    def __init__(self, step: int, value: float, image: Tensor, values: list[float]) -> None:
        super().__init__(
            f"the objective became {value} at step {step}; stopped and kept the last image whose objective "
            "was finite. Lower optimizer.lr, or check the objective for a division by zero or a log of 0"
        )
        self.step, self.image, self.values = step, image, values


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
) -> Render:
    """Maximize `objective` over the images of `param` for `steps` steps and return the result.

    `on_step(step, value)` sees the objective after each step; `on_threshold(step, image)` gets the
    image after `step` updates for each step in `thresholds`. Ctrl-C ends the loop early and
    returns what there is with `interrupted=True`.
    """
    generator = torch.Generator().manual_seed(seed)  # CPU generator: same draws on every device
    opt = optimizer(list(param.parameters()))
    values: list[float] = []
    image = last_finite = param()
    bar = tqdm(total=steps, desc="fvexp", unit="step", disable=not progress, dynamic_ncols=True)
    with model.reading(objective.network_layers) as read:
        try:
            for step in range(1, steps + 1):
                value = objective({**read(transforms(image, generator)), INPUT: image}).mean()
                if not torch.isfinite(value):
                    raise NonFiniteObjective(step, value.item(), last_finite.detach(), values)
                last_finite = image
                opt.zero_grad(set_to_none=True)
                (-value).backward()
                opt.step()
                image = param()
                values.append(value.item())
                if on_step:
                    on_step(step, values[-1])
                if on_threshold and step in thresholds:
                    on_threshold(step, image.detach())
                bar.set_postfix(objective=f"{values[-1]:.4g}", refresh=False)
                bar.update()
        except KeyboardInterrupt:
            bar.write(f"interrupted at step {len(values)}; keeping the last image", file=sys.stderr)
            return Render(image.detach(), values, interrupted=True)
        finally:
            bar.close()
    return Render(image.detach(), values)
