"""The optimization core: it raises the objective, is deterministic, and stops cleanly when it must."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from functools import partial

import pytest
import torch

from fvexp.errors import ArgumentError
from fvexp.optvis import objectives
from fvexp.optvis.objectives import Objective
from fvexp.optvis.params import Fourier
from fvexp.optvis.render import NonFiniteObjective, fitting, images_that_fit, render
from fvexp.optvis.transforms import Compose, Jitter, standard
from tests.conftest import ROOT


def adam(params):
    return torch.optim.Adam(params, lr=0.05)


def short_run(model, objective, steps=8, seed=0, **kwargs):
    torch.manual_seed(seed)
    return render(model, objective, Fourier(1, 64), Compose([Jitter(4)]), adam, steps, seed, progress=False, **kwargs)


def hooks(model) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_objective_rises_thresholds_fire_and_hooks_are_removed(model) -> None:
    kept: dict[int, torch.Tensor] = {}
    seen: list[int] = []
    result = short_run(model, objectives.channel("_blocks.4", 3), steps=12, thresholds={4, 12},
                       on_step=lambda step, value: seen.append(step),
                       on_threshold=lambda step, image: kept.__setitem__(step, image))
    assert result.values[-1] > result.values[0] + 1
    assert seen == list(range(1, 13)) and sorted(kept) == [4, 12]
    assert torch.equal(kept[12], result.image) and not result.interrupted
    assert hooks(model) == 0


def test_same_seed_gives_the_same_bytes(model) -> None:
    first = short_run(model, objectives.channel("_blocks.4", 3), seed=3)
    again = short_run(model, objectives.channel("_blocks.4", 3), seed=3)
    other = short_run(model, objectives.channel("_blocks.4", 3), seed=4)
    assert torch.equal(first.image, again.image) and first.values == again.values
    assert not torch.equal(first.image, other.image)


def test_non_finite_objective_stops_with_the_last_finite_image(model) -> None:
    base = objectives.channel("_blocks.2", 0)
    calls = []

    def explode(acts):
        calls.append(1)
        return base(acts) * (float("nan") if len(calls) == 5 else 1.0)

    with pytest.raises(NonFiniteObjective, match="the objective became nan at step 5") as error:
        short_run(model, Objective(explode, base.layers, "explodes"), steps=10)
    assert len(error.value.values) == 4
    assert torch.isfinite(error.value.image).all() and error.value.image.shape == (1, 3, 64, 64)
    assert hooks(model) == 0


def test_ctrl_c_stops_cleanly_and_keeps_the_last_image(model) -> None:
    def interrupt(step: int, value: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    result = short_run(model, objectives.channel("_blocks.2", 0), steps=10, on_step=interrupt)
    assert result.interrupted and len(result.values) == 3 and hooks(model) == 0
    three_steps = short_run(model, objectives.channel("_blocks.2", 0), steps=3)
    assert torch.equal(result.image, three_steps.image)  # the image after as many updates as values


def test_forward_stops_after_the_last_needed_layer(model) -> None:
    ran: list[str] = []
    handle = model.layer("_blocks.9").register_forward_hook(lambda *args: ran.append("_blocks.9"))
    try:
        with model.reading(["_blocks.8"]) as read:
            acts = read(torch.rand(1, 3, 64, 64))
    finally:
        handle.remove()
    assert list(acts) == ["_blocks.8"] and ran == []


def test_tracking_retries_a_locked_sqlite_store() -> None:
    from fvexp.tracking.writer import Retrying

    calls = []

    class Flaky:
        def log(self, value: int) -> int:
            calls.append(value)
            if len(calls) < 3:
                raise RuntimeError("(sqlite3.OperationalError) database is locked")
            return value

        def broken(self) -> None:
            raise RuntimeError("no such table")

    client = Retrying(Flaky(), pause=0.001)
    assert client.log(7) == 7 and len(calls) == 3
    with pytest.raises(RuntimeError, match="no such table"):
        client.broken()


def test_mixed_precision_and_channels_last_still_raise_the_objective(model) -> None:
    model.autocast = torch.bfloat16
    try:
        result = short_run(model.to(memory_format=torch.channels_last), objectives.channel("_blocks.4", 3), steps=12)
    finally:
        model.autocast = None
        model.to(memory_format=torch.contiguous_format)
    assert result.values[-1] > result.values[0] + 1 and torch.isfinite(result.image).all()


def test_reading_the_objective_in_batches_changes_nothing_but_when(model) -> None:
    """On a GPU the values are read every READ_EVERY steps; the run, its callbacks and its errors are the same."""
    base = objectives.channel("_blocks.2", 0)
    runs = []
    for every in (1, 4):
        seen: list[tuple[int, float]] = []
        kept: dict[int, int] = {}
        result = short_run(model, base, steps=10, read_every=every, thresholds={6},
                           on_step=lambda step, value, seen=seen: seen.append((step, value)),
                           on_threshold=lambda step, image, seen=seen, kept=kept: kept.__setitem__(step, len(seen)))
        runs.append((result.image, result.values, seen, kept))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1:] == runs[1][1:]
    assert runs[1][3] == {6: 6}  # the threshold image comes after the values of the steps before it
    calls = []

    def explode(acts):
        calls.append(1)
        return base(acts) * (float("nan") if len(calls) == 5 else 1.0)

    with pytest.raises(NonFiniteObjective, match="at step 5") as error:
        short_run(model, Objective(explode, base.layers, "explodes"), steps=10, read_every=4)
    assert len(error.value.values) == 4 and torch.isfinite(error.value.image).all()


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_the_plain_adam_is_torchs_bit_for_bit_and_skips_torch_optim(weight_decay: float) -> None:
    """Configs name torch.optim.Adam; fvexp steps it without torch.optim (whose import of torch._dynamo is slow)."""
    from fvexp.optvis.optimizers import Adam, adam, create

    torch.manual_seed(0)
    ours, theirs = torch.nn.Parameter(torch.randn(1, 3, 16, 9)), torch.nn.Parameter(torch.zeros(1, 3, 16, 9))
    theirs.data.copy_(ours.data)
    stepper, reference = create(adam(weight_decay=weight_decay), [ours]), torch.optim.Adam([theirs], lr=0.05,
                                                                                           weight_decay=weight_decay)
    assert isinstance(stepper, Adam)
    for i in range(50):
        grad = torch.randn_like(ours) * (i % 5)
        for param, optimizer in ((ours, stepper), (theirs, reference)):
            optimizer.zero_grad()
            param.grad = grad.clone()
            optimizer.step()
    assert torch.equal(ours, theirs)
    assert isinstance(create(lambda params: torch.optim.SGD(params, lr=1.0), [ours]), torch.optim.SGD)


def test_adam_per_image_moves_each_image_alike_and_keeps_its_gradients_shape() -> None:
    """One second moment per image: a tiny coefficient moves a tiny step, a loud image no further than a quiet one."""
    from fvexp.optvis.optimizers import Adam

    grad = torch.tensor([1.0, 0.01, -0.5, 0.0]).view(1, 1, 2, 2)
    grad = torch.cat([grad, grad * 1000])  # the same gradient, 1000 times louder in the second image
    moved = {}
    for per_image in (False, True):
        param = torch.nn.Parameter(torch.zeros(2, 1, 2, 2))
        optimizer = Adam([param], lr=0.05, per_image=per_image)
        for _ in range(3):
            param.grad = grad.clone()
            optimizer.step()
        moved[per_image] = -param.detach()
    assert torch.allclose(moved[False][0].flatten()[:3].abs(), torch.full((3,), 0.15))  # every coefficient alike
    step = moved[True][0].flatten()
    assert torch.allclose(step / step[0], grad[0].flatten(), atol=1e-6)  # per image: the gradient's own shape
    assert torch.allclose(moved[True][0], moved[True][1], rtol=1e-5)  # and its scale does not matter
    assert optimizer.moments[0][1].shape == (2, 1, 1, 1)


def test_adam_per_image_is_adams_formula_with_the_images_mean_square() -> None:
    from fvexp.optvis.optimizers import Adam

    torch.manual_seed(0)
    param, bias = torch.nn.Parameter(torch.randn(3, 2, 4, 4)), torch.nn.Parameter(torch.randn(5))
    plain_bias = torch.nn.Parameter(bias.detach().clone())
    ours, plain = Adam([param, bias], lr=0.02, weight_decay=0.1, per_image=True), Adam([plain_bias], lr=0.02,
                                                                                      weight_decay=0.1)
    x, m, v = param.detach().clone(), torch.zeros_like(param), torch.zeros(3, 1, 1, 1)
    for t in range(1, 6):
        grad, bias_grad = torch.randn_like(param) * t, torch.randn(5)
        param.grad, bias.grad, plain_bias.grad = grad, bias_grad, bias_grad.clone()
        ours.step()
        plain.step()
        g = grad + 0.1 * x
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g.pow(2).mean((1, 2, 3), keepdim=True)
        x = x - 0.02 / (1 - 0.9**t) * m / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
    assert torch.allclose(param, x, atol=1e-6)
    assert torch.equal(bias, plain_bias)  # a 1-d tensor holds no images: per coefficient, as plain Adam


def test_adam_per_image_refuses_what_it_cannot_step_as_one_line() -> None:
    from fvexp.optvis.optimizers import Adam, check_images_first
    from fvexp.optvis.params import LowRes

    with pytest.raises(ArgumentError, match=r"^Adam steps real parameters only; a complex one goes to torch.optim"):
        Adam([torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))], per_image=True)
    shared = LowRes(4, 32)
    with pytest.raises(ArgumentError, match=r"Adam\(per_image=True\) needs .*; LowRes shares .*: use Fourier, Pixel or "
                                            r"Adam\(per_image=False\)$"):
        render(None, None, shared, None, partial(Adam, per_image=True), 1, 0)  # refused before anything runs
    check_images_first(False, LowRes)  # per coefficient, any parameterization


STEPS_EACH_ADAM = """
import sys, torch
from fvexp.optvis.optimizers import Adam
param = torch.nn.Parameter(torch.zeros(3))
for make in (Adam, torch.optim.Adam):
    optimizer = make([param])
    param.grad = torch.ones(3)
    optimizer.step()
    print(type(optimizer).__module__, "torch._dynamo" in sys.modules)
"""


@pytest.mark.slow  # a Python process that imports torch and torch._dynamo (3 s)
def test_fvexps_adam_still_saves_importing_torch_dynamo() -> None:
    """fvexp runs torch.optim.Adam's configs with its own Adam while torch.optim imports torch._dynamo (1.3 s;
    docs/performance.md): this fails when torch stops doing so, and only `per_image` then needs the class."""
    done = subprocess.run([sys.executable, "-c", STEPS_EACH_ADAM], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.splitlines() == ["fvexp.optvis.optimizers False", "torch.optim.adam True"]


def test_a_batch_fills_the_share_of_the_card_that_the_probes_measure() -> None:
    # one image peaks at 300 bytes and two at 400: 100 bytes an image over 200 shared
    assert fitting(1000, 300, 400) == 8 and fitting(1099, 300, 400) == 8 and fitting(1100, 300, 400) == 9
    assert fitting(100, 300, 400) == 1  # never less than one image
    assert images_that_fit(lambda batch: pytest.fail("no probe without a CUDA card"), torch.device("cpu")) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="sizes batches for a CUDA card")
def test_the_probed_batch_runs_within_its_share_of_the_card(model) -> None:
    cuda = torch.device("cuda")
    net = copy.deepcopy(model).to(cuda)
    objective = objectives.channel("_blocks.8", 5)

    def step(batch: int) -> None:
        render(net, objective, Fourier(batch, 224).to(cuda), standard(), adam, 1, 0, progress=False)

    fit = images_that_fit(step, cuda)
    assert fit > 2
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(cuda)
    step(fit)
    assert torch.cuda.max_memory_allocated(cuda) <= 0.85 * torch.cuda.get_device_properties(cuda).total_memory
