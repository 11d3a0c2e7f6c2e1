"""The held-out networks of `measure.*` and the scores they give a run: interpretability, transferability.

Both need networks other than the one being explained, so they are loaded here, once per job,
and refused when they are that very network (a network judging its own optimum proves nothing).
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig
from torch import Tensor

from fvexp.app.build import build
from fvexp.errors import FvexpError
from fvexp.optvis.examples import Activations
from fvexp.optvis.interpretability import Judge, Measures, interpretability, transferability
from fvexp.optvis.models import LOGITS, FeatureModel, efficientnet_lite, imagenet_classes
from fvexp.optvis.objectives import Objective, Unit


def held_out(variant: str, model: FeatureModel, key: str) -> FeatureModel:
    """EfficientNet-Lite `variant` on the model's device, refused if it is the network being explained."""
    network = efficientnet_lite(variant).to(model.device)
    if model.weights_path and network.weights_path == model.weights_path:
        raise FvexpError(f"{key}={variant} is the network being explained; a held-out network must differ from it: "
                         "use lite1 or lite2 for EfficientNet-Lite0")
    return network


class Measurer:
    """The judge and the transfer networks of a job, loaded when first needed."""

    def __init__(self, cfg: DictConfig, model: FeatureModel) -> None:
        self.cfg, self.model = cfg, model
        self.measures: Measures = build(cfg.measure)
        self._judge: Judge | None = None

    def unit(self, images: Tensor, acts: Activations, unit: Unit, crop: int | None) -> dict[str, float]:
        """The 2-AFC interpretability of `images` for `unit` over the folder of `acts` (empty: no judge)."""
        if not self.measures.judge:
            return {}
        if self._judge is None:
            self._judge = Judge(held_out(self.measures.judge, self.model, "measure.judge"), size=self.cfg.data.size)
        return interpretability(self._judge, images, acts, unit, self.cfg.data.size, crop, self.measures,
                                self.cfg.seed)

    def transfer(self, main: Objective, images: Tensor) -> dict[str, float]:
        """Transferability of a class objective's images to the held-out ImageNet classifiers (empty otherwise)."""
        unit = main.unit
        if not self.measures.transfer or unit is None or unit.layer not in (LOGITS, self.model.logits_layer):
            return {}
        if tuple(self.model.classes) != imagenet_classes():
            print("fvexp: transferability skipped: the held-out networks classify ImageNet, and this model's "
                  "classes are others", file=sys.stderr)
            return {}
        networks = {variant: held_out(variant, self.model, "measure.transfer") for variant in self.measures.transfer}
        return transferability(networks, images, unit.channel)
