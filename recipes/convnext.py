"""ConvNeXt (``facebook/convnext-tiny-224``): explained at the last block of the last stage.

The block outputs ``B×C×h×w``; the model mean-pools it, applies ``convnext.layernorm`` and then
the classifier, so the head (for Deep Feature Factorization) is layernorm → classifier. Each
stage's last block is a stage: where the last stage's grid is under 7×7 (128 px: 4×4), the CAM
methods read the stage before it (on the trained three-stage test model: see tests/test_layers.py).
"""

from torch import nn

from xai_recipes import Recipe, hookimpl

RECIPE = Recipe(
    name="convnext",
    model_types=("convnext",),
    target_layers=lambda m: [m.convnext.encoder.stages[-1].layers[-1]],
    stages=lambda m: [stage.layers[-1] for stage in m.convnext.encoder.stages],
    head=lambda m: nn.Sequential(m.convnext.layernorm, m.classifier),
    pooling="mean",
    description="ConvNeXt: last block of the last stage (B×C×h×w); head = final layernorm + classifier.",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
