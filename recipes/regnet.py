"""RegNet (``facebook/regnet-y-040``): a CNN, explained at its last stage.

The last stage outputs the ``B×C×h×w`` map that is average-pooled into the classifier. At inputs where its grid is under 7×7 the CAM methods read the stage before it.
"""

from xai_recipes import Recipe, hookimpl

RECIPE = Recipe(
    name="regnet",
    model_types=("regnet",),
    target_layers=lambda m: [m.regnet.encoder.stages[-1]],
    stages=lambda m: list(m.regnet.encoder.stages),
    head=lambda m: m.classifier[-1],
    pooling="mean",
    description="RegNet: last stage (B×C×h×w, no reshape).",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
