"""MobileViT (``apple/mobilevit-small``): explained at the final 1×1 expansion conv.

``mobilevit.conv_1x1_exp`` follows the last MobileViT block and outputs the ``B×C×h×w`` map
that is average-pooled into the classifier. Its processor flips RGB→BGR and centre-crops;
the engine's geometry mapping takes care of both. Its stages are the encoder's layers, then
that conv: at inputs where the last grid is under 7×7 the CAM methods read an earlier one.
"""

from xai_recipes import Recipe, hookimpl

RECIPE = Recipe(
    name="mobilevit",
    model_types=("mobilevit",),
    target_layers=lambda m: [m.mobilevit.conv_1x1_exp],
    stages=lambda m: [*m.mobilevit.encoder.layer, m.mobilevit.conv_1x1_exp],
    head=lambda m: m.classifier,
    pooling="mean",
    description="MobileViT: final 1×1 expansion conv (B×C×h×w, no reshape).",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
