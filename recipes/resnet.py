"""ResNet (``microsoft/resnet-50``): a CNN, explained at its last residual block.

The last block of the last stage outputs the ``B×C×h×w`` map that is average-pooled into the
classifier, so no reshape is needed.
"""


from xai_recipes import Recipe, hookimpl

RECIPE = Recipe(
    name="resnet",
    model_types=("resnet",),
    target_layers=lambda m: [m.resnet.encoder.stages[-1].layers[-1]],
    head=lambda m: m.classifier[-1],
    pooling="mean",
    description="ResNet: last residual block of the last stage (B×C×h×w, no reshape).",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
