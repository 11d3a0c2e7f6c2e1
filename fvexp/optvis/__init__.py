"""The library: feature visualization by optimization as small composable pieces, in plain PyTorch.

It imports neither Hydra, OmegaConf nor MLflow. Lucid-style use on any network in memory:

    from fvexp.optvis import FeatureModel, Fourier, adam, channel, diversity, l1, render, standard

    model = FeatureModel(net, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    objective = channel("layer3", 5) - 0.1 * l1() + 10 * diversity("layer3")
    result = render(model, objective, Fourier(batch=4, size=224), standard(), adam(), steps=512)
    result.image  # (4, 3, 224, 224) in [0, 1]

`fvexp.visualize` does the same with the command line's defaults in one call.
"""

from fvexp.optvis.features import FeatureModel
from fvexp.optvis.objectives import (
    Objective,
    alignment,
    channel,
    class_logit,
    class_logsumexp,
    class_prob,
    direction,
    direction_neuron,
    diversity,
    interpolate,
    inversion,
    layer,
    neuron,
    per_image,
    random_direction,
    style,
)
from fvexp.optvis.optimizers import SteepestDescent, adam
from fvexp.optvis.params import CPPN, Fourier, LaplacianPyramid, LowRes, Maco, Pixel, PriorLatent, Shared
from fvexp.optvis.regularizers import bilateral, blur, feature_stats, l1, l2, prior, total_variation
from fvexp.optvis.render import NonFiniteObjective, Render, render
from fvexp.optvis.transforms import Compose, Crop, Jitter, Pad, Rotate, Scale, standard

__all__ = [
    "CPPN", "Compose", "Crop", "FeatureModel", "Fourier", "Jitter", "LaplacianPyramid", "LowRes", "Maco",
    "NonFiniteObjective", "Objective", "Pad", "Pixel", "PriorLatent", "Render", "Rotate", "Scale", "Shared",
    "SteepestDescent", "adam", "alignment", "bilateral", "blur", "channel", "class_logit", "class_logsumexp",
    "class_prob", "direction", "direction_neuron", "diversity", "feature_stats", "interpolate", "inversion", "l1",
    "l2", "layer", "neuron", "per_image", "prior", "random_direction", "render", "standard", "style",
    "total_variation",
]
