"""Swin Transformer (``microsoft/swin-tiny-patch4-window7-224``): the last block's first layernorm.

The last block's ``layernorm_before`` holds the last stage's tokens ``B×(h·w)×C`` (no CLS
token) that its window attention reads — the same place as the ViT recipe. The tutorial's
``swin.layernorm`` (after the last block, mean-pooled into the classifier) is the feature layer
for the head; as a CAM layer it localised worse on the trained test models (0.67 vs 0.83 of
peaks on the object), whose last block spreads the class over every token. The grid: the patch
embedding pads the input to a multiple of ``patch_size`` and each of the ``len(depths) - 1``
patch mergings halves it (padding odd sizes), so ``h = ceil(ceil(H / patch) / 2^(stages-1))``.
Every stage's last block is a stage (same place): where the last stage's grid is under 7×7
(128 px: 4×4), the CAM methods read the stage before it.
"""

import math

from xai_recipes import Recipe, halvings, hookimpl, stage_grid, tokens_to_map


def grids(config, height: int, width: int) -> list[tuple[int, int]]:
    """Each stage's grid: the patch grid, halved by every patch merging before the stage."""
    h, w = math.ceil(height / config.patch_size), math.ceil(width / config.patch_size)
    return [(halvings(h, i), halvings(w, i)) for i in range(len(config.depths))]


RECIPE = Recipe(
    name="swin",
    model_types=("swin",),
    target_layers=lambda m: [m.swin.encoder.layers[-1].blocks[-1].layernorm_before],
    stages=lambda m: [layer.blocks[-1].layernorm_before for layer in m.swin.encoder.layers],
    reshape=lambda x, m, hw: tokens_to_map(x, stage_grid(x.shape[1], grids(m.config, *hw))),
    head=lambda m: m.classifier,
    feature_layer=lambda m: m.swin.layernorm,
    pooling="mean",
    unsupported={
        method: "Swin attends within (shifted) local windows: no token attends to the whole image and no readout "
                f"token exists, so {method} has nothing global to read; use gradcam, hirescam or layercam"
        for method in ("attention", "rollout", "gradient-rollout", "legrad")
    },
    description="Swin: last block's layernorm_before tokens → stage grid (patch size and mergings from the config).",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
