"""UperNet (``openmmlab/upernet-convnext-tiny``, ``openmmlab/upernet-swin-tiny``): the decode head's fused map.

``UperNetForSemanticSegmentation`` runs any backbone (ConvNeXt, Swin, ...) into a UperHead: a pyramid
pooling module on the deepest stage, a feature pyramid over every stage, all upsampled to the finest
stage's grid, concatenated and fused by ``decode_head.fpn_bottleneck`` (3×3 conv, norm, ReLU) into the
``B×C×h×w`` map the per-pixel classifier reads. Every class's logits are a 1×1 conv of that map, and it
keeps the finest stage's resolution (1/4 of the input on the published models): the CAM methods read it,
whatever the backbone.
"""

from xai_recipes import Recipe, hookimpl

RECIPE = Recipe(
    name="upernet",
    model_types=("upernet",),
    matches=lambda m: type(m).__name__.endswith("ForSemanticSegmentation"),
    target_layers=lambda m: [m.decode_head.fpn_bottleneck],
    description="UperNet segmenter (any backbone): the UperHead's fused pyramid map (B×C×h×w at the finest stage).",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
