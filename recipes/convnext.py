"""ConvNeXt (``facebook/convnext-tiny-224``): explained at the last block of the last stage.

The block outputs ``B×C×h×w``; the model mean-pools it, applies ``convnext.layernorm`` and then
the classifier, so the head (for Deep Feature Factorization) is layernorm → classifier.
"""

from torch import nn

from xai_recipes import Recipe, hookimpl

RECIPE = Recipe(
    name="convnext",
    model_types=("convnext",),
    target_layers=lambda m: [m.convnext.encoder.stages[-1].layers[-1]],
    head=lambda m: nn.Sequential(m.convnext.layernorm, m.classifier),
    pooling="mean",
    description="ConvNeXt: last block of the last stage (B×C×h×w); head = final layernorm + classifier.",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
