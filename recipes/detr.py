"""DETR-style detectors (``facebook/detr-resnet-50``, Conditional DETR, Table Transformer): explained per detection.

A CNN backbone's last stage feeds ``model.input_projection``, a 1×1 convolution to the transformer's
width, whose ``B×d×h×w`` map is flattened into the encoder's tokens: the CAM methods read it (any
backbone, timm's or transformers', and any input size, with no reshape). Each detection is one
object query; its score is that query's class logit (the ``object-detection`` task). The decoder's
cross-attention (every layer, ``B×heads×queries×(h·w)``) is where each query looks in that map: DETR's
own visualisation, and with the encoder's and decoder's self-attention what Chefer's bi-modal
gradient rollout propagates (:class:`Queries`). Conditional DETR's cross-attention concatenates a
content and a spatial part per head in its queries and keys, but is still one softmax over the h·w
image tokens, so both query methods read it as they read DETR's.
"""

from xai_recipes import Queries, Recipe, hookimpl

QUERIES = Queries(
    encoder=lambda m: [layer.self_attn for layer in m.model.encoder.layers],
    decoder=lambda m: [layer.self_attn for layer in m.model.decoder.layers],
    cross=lambda m: [layer.encoder_attn for layer in m.model.decoder.layers],
    grid=lambda m: m.model.input_projection,
)

RECIPE = Recipe(
    name="detr",
    model_types=("detr", "conditional_detr", "table-transformer"),
    matches=lambda m: type(m).__name__.endswith("ForObjectDetection"),  # not DetrForSegmentation's layout
    target_layers=lambda m: [m.model.input_projection],
    queries=QUERIES,
    default_method="bimodal-rollout",  # trained Conditional DETR: peak in own box 0.97 (other 0.00); gradcam 0.35
    description="DETR / Conditional DETR / Table Transformer: the backbone map projected into the encoder (B×d×h×w).",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
