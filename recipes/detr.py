"""DETR-style detectors (``facebook/detr-resnet-50``, Conditional DETR, Table Transformer): explained per detection.

A CNN backbone's last stage feeds ``model.input_projection``, a 1×1 convolution to the transformer's
width, whose ``B×d×h×w`` map is flattened into the encoder's tokens: the CAM methods read it (any
backbone, timm's or transformers', and any input size, with no reshape). Each detection is one
object query; its score is that query's class logit (the ``object-detection`` task). The decoder's
cross-attention (every layer, ``B×heads×queries×(h·w)``) is where each query looks in that map: DETR's
own visualisation, and with the encoder's and decoder's self-attention what Chefer's bi-modal
gradient rollout propagates.
"""

from xai_recipes import Recipe, hookimpl

RECIPE = Recipe(
    name="detr",
    model_types=("detr", "conditional_detr", "table-transformer"),
    target_layers=lambda m: [m.model.input_projection],
    description="DETR / Conditional DETR / Table Transformer: the backbone map projected into the encoder (B×d×h×w).",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
