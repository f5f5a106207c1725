"""DPT segmenter (``Intel/dpt-large-ade``): the neck's fused map that the segmentation head reads.

``DPTForSemanticSegmentation`` reassembles four blocks' tokens into maps at several scales, and the neck's
fusion stage merges them deepest first, each ``neck.fusion_stage.layers[i]`` upsampling by 2; the head
(3×3 conv, norm, ReLU, 1×1 classifier, ×2 upsampling) reads the fused map ``config.head_in_index`` (the
last: every scale merged, ``B×C×h×w`` at 8× the patch grid, half the input at patch size 16): the CAM
methods read that map. Depth estimators (``DPTForDepthEstimation``, same ``model_type``) are not served
here (``matches``).
"""

from xai_recipes import Recipe, hookimpl

RECIPE = Recipe(
    name="dpt-semantic",
    model_types=("dpt",),
    matches=lambda m: type(m).__name__.endswith("ForSemanticSegmentation"),
    target_layers=lambda m: [m.neck.fusion_stage.layers[m.config.head_in_index]],
    description="DPT segmenter: the neck's last fused map, the segmentation head's input (B×C×h×w).",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
