"""RegNet (``facebook/regnet-y-040``): a CNN, explained at its last stage.

The last stage outputs the ``B×C×h×w`` map that is average-pooled into the classifier.
"""

from xai_recipes import Recipe, hookimpl

RECIPE = Recipe(
    name="regnet",
    model_types=("regnet",),
    target_layers=lambda m: [m.regnet.encoder.stages[-1]],
    head=lambda m: m.classifier[-1],
    pooling="mean",
    description="RegNet: last stage (B×C×h×w, no reshape).",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
