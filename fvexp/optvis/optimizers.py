"""Steepest descent under different measures of distance, for the article's preconditioning ablation.

Plain SGD descends along the L2 gradient. Under the L∞ metric the steepest direction is the sign
of the gradient; in decorrelated space it is the gradient whitened by the natural-image spectrum
and colour covariance. Steps are normalized so that `lr` is the root-mean-square change per
parameter in every metric, which makes the three directions comparable at one learning rate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from fvexp.errors import Arg, ArgumentError
from fvexp.optvis.params import Fourier, Pixel, color_correlation, spectrum_scale

METRICS = ("l2", "linf", "decorrelated")
PLAIN_ADAM_KEYWORDS = frozenset({"lr", "betas", "eps", "weight_decay"})


class Stepper(Protocol):
    """What the optimization loop needs of an optimizer."""

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def step(self) -> Any: ...


OptimizerFactory = Callable[[list[torch.nn.Parameter]], Stepper]


class Adam:
    """torch.optim.Adam's arithmetic, bit for bit on the CPU (its single-tensor path), without torch.optim.

    Creating or stepping any torch.optim optimizer imports torch._dynamo, which takes 1.6 s on two
    idle cores (several seconds on busy ones) before the first step: most of a short run's start-up.
    The loop needs only `zero_grad` and `step`, so fvexp runs Adam, its default, with these.

    `per_image=True` keeps one second moment per image (per index of a tensor's first dimension, so
    for parameterizations with `images_first`; `render` refuses the others) rather than one per
    coefficient; vectors and scalars keep theirs per coefficient. Per coefficient, a
    coefficient whose gradient is tiny moves as far as one whose gradient is large; where a weak
    direction's remaining gradient is small and high-frequency (an atlas's flat-region cells), that
    grows fine mottle. Per image, each image still moves at `lr` whatever its objective's scale, and
    its step keeps the gradient's spectrum (`optimizer=adam_image`, the atlas's default).
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 0.05, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, per_image: bool = False) -> None:
        self.params = list(params)
        if any(p.is_complex() for p in self.params):
            raise ArgumentError("{adam} steps real parameters only; a complex one goes to {torch_adam}", kind="dtype",
                                value="complex", adam=Arg(Adam), torch_adam="torch.optim.Adam")
        self.lr, (self.beta1, self.beta2), self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.per_image = per_image
        self.steps = [0] * len(self.params)
        self.moments = [(torch.zeros_like(p), torch.zeros_like(image_mean(p) if self.by_image(p) else p))
                        for p in self.params]

    def by_image(self, p: Tensor) -> bool:
        """Whether `p` gets one second moment per image: with `per_image`, unless it is a vector or a scalar."""
        return self.per_image and p.dim() > 1

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        for i, (p, (exp_avg, exp_avg_sq)) in enumerate(zip(self.params, self.moments, strict=True)):
            if p.grad is None:
                continue
            self.steps[i] += 1
            grad = p.grad if self.weight_decay == 0 else p.grad.add(p, alpha=self.weight_decay)
            exp_avg.lerp_(grad, 1 - self.beta1)
            if self.by_image(p):
                exp_avg_sq.mul_(self.beta2).add_(image_mean(grad * grad), alpha=1 - self.beta2)
            else:
                exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
            step_size = self.lr / (1 - self.beta1 ** self.steps[i])
            denom = (exp_avg_sq.sqrt() / (1 - self.beta2 ** self.steps[i]) ** 0.5).add_(self.eps)
            p.addcdiv_(exp_avg, denom, value=-step_size)


def image_mean(x: Tensor) -> Tensor:
    """The mean over all dimensions but the first, kept as size-1 dimensions: one value per image."""
    return x.mean(tuple(range(1, x.dim())), keepdim=True)


def check_images_first(per_image: bool, param: type) -> None:
    """Refuse Adam per image on a parameterization (a `Param` class) whose tensors do not hold one image per
    first index: its second moment would be shared across the images it should keep apart."""
    if per_image and not getattr(param, "images_first", True):
        raise ArgumentError("{per_image} needs a parameterization with the images along each tensor's first "
                            "dimension; {param} shares or folds its values across them: use {fourier}, {pixel} or "
                            "{plain}", kind="param", value=param.__name__, per_image=Arg(Adam, "per_image", True),
                            param=Arg(param), fourier=Arg(Fourier), pixel=Arg(Pixel),
                            plain=Arg(Adam, "per_image", False))


def create(factory: OptimizerFactory, params: list[torch.nn.Parameter]) -> Stepper:
    """The optimizer `factory` makes; torch.optim.Adam with only the keywords `Adam` has becomes `Adam`.

    Configs name torch.optim.Adam (`optimizer=adam`); the plain `Adam` computes the same numbers
    without importing torch._dynamo. Real parameters only: complex ones go to torch.
    """
    if (isinstance(factory, partial) and factory.func is torch.optim.Adam and not factory.args
            and set(factory.keywords) <= PLAIN_ADAM_KEYWORDS and not any(p.is_complex() for p in params)):
        return Adam(params, **{**factory.keywords, "betas": tuple(factory.keywords.get("betas", (0.9, 0.999)))})
    return factory(params)


def adam(lr: float = 0.05, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
         weight_decay: float = 0.0) -> OptimizerFactory:
    """torch.optim.Adam at the article's learning rate (torch's default, 1e-3, is far too slow for images)."""
    return partial(torch.optim.Adam, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def sgd(lr: float = 1.0, momentum: float = 0.9, nesterov: bool = False, weight_decay: float = 0.0) -> OptimizerFactory:
    """torch.optim.SGD with momentum, at a learning rate that moves a Fourier image visibly per step."""
    return partial(torch.optim.SGD, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


class SteepestDescent(torch.optim.Optimizer):
    """Move each parameter `lr` (RMS) along the steepest ascent direction of the objective's metric."""

    def __init__(self, params: Iterable[Tensor], lr: float = 0.05, metric: Literal["l2", "linf", "decorrelated"] = "l2",
                 decay_power: float = 1.0) -> None:
        if metric not in METRICS:
            raise ArgumentError(f"unknown {{metric}} {metric!r}; use one of {', '.join(METRICS)}", kind="metric",
                                value=metric, allowed=", ".join(METRICS), metric=Arg(SteepestDescent, "metric"))
        super().__init__(params, {"lr": lr, "metric": metric, "decay_power": decay_power})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                direction = steepest(p.grad, group["metric"], group["decay_power"])
                p.sub_(group["lr"] * direction / (direction.pow(2).mean().sqrt() + 1e-12))


def steepest(grad: Tensor, metric: str, decay_power: float = 1.0) -> Tensor:
    """The steepest-descent direction (unnormalized) for the gradient of a loss."""
    if metric == "linf":
        return grad.sign()
    if metric == "decorrelated":
        return decorrelate(grad, decay_power)
    return grad


def decorrelate(grad: Tensor, decay_power: float) -> Tensor:
    """Precondition an image gradient (B, 3, H, W) by S·Sᵀ, S being the Fourier-and-colour whitening.

    Descending along S·Sᵀ·g in pixel space is descending along Sᵀ·g in the decorrelated space that
    `Fourier` optimizes in, so this is that parameterization's step without changing the basis.
    """
    if grad.dim() != 4 or grad.shape[1] != 3 or grad.shape[-1] != grad.shape[-2]:
        raise ArgumentError("{metric} needs a square RGB image parameter: use {pixel}", kind="metric",
                            value="decorrelated", metric=Arg(SteepestDescent, "metric", "decorrelated"),
                            pixel=Arg(Pixel))
    colour = color_correlation(grad.device)
    grad = torch.einsum("cd,bchw->bdhw", colour, grad)  # Sᵀ: colour part
    size = grad.shape[-1]
    scale = spectrum_scale(size, decay_power).to(grad.device) / size
    grad = torch.fft.irfft2(torch.fft.rfft2(grad) * scale**2, s=(size, size))  # spectral part, twice
    return torch.einsum("dc,bchw->bdhw", colour, grad)  # S: colour part
