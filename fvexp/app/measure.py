"""The held-out networks of `measure.*` and the scores they give a run: interpretability, transferability.

Both need networks other than the one being explained, so they are loaded here, once per job,
and refused when they are that very network (a network judging its own optimum proves nothing).
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig
from torch import Tensor

from fvexp.app.build import build
from fvexp.app.keys import said
from fvexp.errors import FvexpError
from fvexp.optvis.examples import Activations
from fvexp.optvis.features import LOGITS, FeatureModel
from fvexp.optvis.interpretability import Judge, Measures, interpretability, transferability
from fvexp.optvis.models import efficientnet_lite
from fvexp.optvis.objectives import Objective, Unit
from fvexp.optvis.weights import imagenet_classes, weights_file


class Measurer:
    """The judge and the transfer networks of a job, checked when the job starts and loaded when first needed.

    The measures are extras the user did not ask for by name: one that cannot be computed (a folder
    too small for the interpretability score) is skipped with one warning and the run goes on. What
    the settings alone decide (a held-out network that is the explained one) is refused at once,
    before the render.
    """

    def __init__(self, cfg: DictConfig, model: FeatureModel) -> None:
        self.cfg, self.model = cfg, model
        self.measures: Measures = build(cfg.measure)
        self._judge: Judge | None = None
        self.skipped = False  # the interpretability score could not be computed (said once)
        for key, variants in (("measure.judge", [self.measures.judge] if self.measures.judge else []),
                              ("measure.transfer", self.measures.transfer)):
            for variant in variants:
                if model.weights_path and weights_file(variant) == model.weights_path:
                    raise FvexpError(f"{key}={variant} is the network being explained; a held-out network must "
                                     "differ from it: use lite1 or lite2 for EfficientNet-Lite0")

    def unit(self, images: Tensor, acts: Activations, unit: Unit, crop: int | None) -> dict[str, float]:
        """The 2-AFC interpretability of `images` for `unit` over the folder of `acts` (empty: no judge, or skipped)."""
        if not self.measures.judge or self.skipped:
            return {}
        if self._judge is None:
            self._judge = Judge(efficientnet_lite(self.measures.judge).to(self.model.device), size=self.cfg.data.size)
        try:
            return interpretability(self._judge, images, acts, unit, self.cfg.data.size, crop, self.measures,
                                    self.cfg.seed)
        except FvexpError as error:
            self.skipped = True
            print(f"fvexp: warning: interpretability score skipped: {said(error, self.cfg)}", file=sys.stderr)
            return {}

    def transfer(self, main: Objective, images: Tensor) -> dict[str, float]:
        """Transferability of a class objective's images to the held-out ImageNet classifiers (empty otherwise)."""
        unit = main.unit
        if not self.measures.transfer or unit is None or unit.layer not in (LOGITS, self.model.logits_layer):
            return {}
        if tuple(self.model.classes) != imagenet_classes():
            print("fvexp: transferability skipped: the held-out networks classify ImageNet, and this model's "
                  "classes are others", file=sys.stderr)
            return {}
        networks = {variant: efficientnet_lite(variant).to(self.model.device) for variant in self.measures.transfer}
        return transferability(networks, images, unit.channel)
