"""DeepLabV3 segmenters: MobileViT / MobileViTV2 (``apple/deeplabv3-mobilevit-small``,
``apple/mobilevitv2-1.0-voc-deeplabv3``) at the ASPP output, MobileNetV2 + DeepLabV3+
(``google/deeplabv3_mobilenet_v2_1.0_513``) at its projection.

``segmentation_head.aspp`` pools the last encoder stage with parallel atrous convolutions and image
pooling, then projects them (1×1 conv, norm, ReLU) into the ``B×C×h×w`` map the DeepLabV3 classifier
(a 1×1 conv) reads for every class: the CAM methods read that map. MobileNetV2's head does the same with
one 1×1 branch and image pooling, fused by ``segmentation_head.conv_projection``. The classifiers of
these families keep their own recipes (``mobilevit``, or a derived one): ``matches`` serves only the
segmenters.
"""

from xai_recipes import Recipe, hookimpl


def is_segmenter(model) -> bool:
    return type(model).__name__.endswith("ForSemanticSegmentation")


RECIPE = Recipe(
    name="deeplabv3",
    model_types=("mobilevit", "mobilevitv2"),
    matches=is_segmenter,
    target_layers=lambda m: [m.segmentation_head.aspp],
    description="MobileViT / MobileViTV2 + DeepLabV3 segmenter: the ASPP output (B×C×h×w), the classifier's input.",
)

PLUS = Recipe(
    name="deeplabv3plus",
    model_types=("mobilenet_v2",),
    matches=is_segmenter,
    target_layers=lambda m: [m.segmentation_head.conv_projection],
    description="MobileNetV2 + DeepLabV3+ segmenter: the head's fused projection (B×C×h×w), the classifier's input.",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
    register(PLUS)
