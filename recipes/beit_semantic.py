"""BEiT / Data2Vec-Vision segmenters (``microsoft/beit-base-finetuned-ade-640-640``,
``facebook/data2vec-vision-base-ft1k``'s ADE head): the UperHead's fused map.

``BeitForSemanticSegmentation`` (and ``Data2VecVisionForSemanticSegmentation``, the same head) reshapes
four blocks' patch tokens to grids, rescales them to 4×, 2×, 1× and ½× of the patch grid (``fpn``), and
fuses them in a UperHead whose ``decode_head.fpn_bottleneck`` (3×3 conv, norm, ReLU) outputs the
``B×C×h×w`` map at 4× the patch grid that the per-pixel classifier reads: the CAM methods read that map
(no token reshape needed). The classifiers of these families are not served here (``matches``).
"""

from xai_recipes import Recipe, hookimpl

RECIPE = Recipe(
    name="beit-semantic",
    model_types=("beit", "data2vec-vision"),
    matches=lambda m: type(m).__name__.endswith("ForSemanticSegmentation"),
    target_layers=lambda m: [m.decode_head.fpn_bottleneck],
    description="BEiT / Data2Vec-Vision segmenter: the UperHead's fused map (B×C×h×w at 4× the patch grid).",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
