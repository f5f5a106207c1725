"""ResNet (``microsoft/resnet-50``): a CNN, explained at its last residual block (of the stage that fits).

The last block of the last stage outputs the ``B×C×h×w`` map that is average-pooled into the
classifier, so no reshape is needed. Each stage's last block is a stage: at inputs where the last
stage's grid is under 7×7 (128 px: 4×4), the CAM methods read the stage before it (8×8).
"""


from xai_recipes import Recipe, hookimpl

RECIPE = Recipe(
    name="resnet",
    model_types=("resnet",),
    target_layers=lambda m: [m.resnet.encoder.stages[-1].layers[-1]],
    stages=lambda m: [stage.layers[-1] for stage in m.resnet.encoder.stages],
    head=lambda m: m.classifier[-1],
    pooling="mean",
    description="ResNet: last residual block of the last stage (B×C×h×w, no reshape).",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
