"""Swin Transformer (``microsoft/swin-tiny-patch4-window7-224``): explained at the final layernorm.

``swin.layernorm`` outputs the last stage's tokens ``B×(h·w)×C`` (no CLS token), which the
model mean-pools into the classifier. The grid: the patch embedding pads the input to a
multiple of ``patch_size``, and each of the ``len(depths) - 1`` patch mergings halves it
(padding odd sizes), so ``h = ceil(ceil(H / patch) / 2^(stages-1))`` — any input size works.
"""

import math

from xai_recipes import Recipe, halvings, hookimpl, tokens_to_map


def grid(config, height: int, width: int) -> tuple[int, int]:
    merges = len(config.depths) - 1
    p = config.patch_size
    return halvings(math.ceil(height / p), merges), halvings(math.ceil(width / p), merges)


RECIPE = Recipe(
    name="swin",
    model_types=("swin",),
    target_layers=lambda m: [m.swin.layernorm],
    reshape=lambda x, m, hw: tokens_to_map(x, grid(m.config, *hw)),
    head=lambda m: m.classifier,
    pooling="mean",
    description="Swin: final layernorm tokens → last-stage grid (patch size and mergings from the config).",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
