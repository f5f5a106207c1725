"""SigLIP 2 (``google/siglip2-base-patch16-naflex``): NaFlex patches, explained at the final norm.

SigLIP 2's NaFlex processor resizes each image to a patch-multiple size that keeps its aspect
ratio and hands the model *patches* — ``pixel_values`` ``B×N×(p·p·3)``, padded to
``max_num_patches`` — with their grid (``spatial_shapes``) and a padding mask. The recipe turns
that back into the image ``B×3×(h·p)×(w·p)`` it encodes, so the engine's geometry, masking and
batching see an ordinary image, and patchifies it again, in the processor's order, for the model.
The classifier mean-pools ``vision_model.post_layernorm``'s tokens (no CLS token): that is the
target layer, on a grid of input size // patch size.
Attention: every encoder layer's ``self_attn`` returns ``(output, probabilities)`` over the patch
tokens alone (no prefix; the recipe's inputs pad nothing, so the mask is all ones); no readout
token (mean-pooled), and LeGrad's per-block score is the model's own ``post_layernorm``, mean and
classifier.
"""

from typing import Any, Mapping

import torch

from xai_recipes import Attention, Recipe, RecipeError, hookimpl, tokens_to_map


def patch_size(model) -> int:
    return model.config.vision_config.patch_size


def image(processed: Mapping[str, Any]) -> torch.Tensor:
    """NaFlex patches (valid ones only) → ``B×3×(h·p)×(w·p)``; an image tensor passes through."""
    x = processed["pixel_values"]
    if x.dim() == 4:  # an ordinary image processor (ViT-style) was passed
        return x
    shapes = processed["spatial_shapes"]
    if (shapes != shapes[0]).any():
        raise RecipeError("siglip2: the images of one processor call have different patch grids; process them one by one")
    (h, w), (b, _, d) = shapes[0].tolist(), x.shape
    p = round((d / 3) ** 0.5)
    return x[:, : h * w].reshape(b, h, w, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(b, 3, h * p, w * p)


def inputs(model, x: torch.Tensor) -> dict[str, Any]:
    """``B×3×H×W`` → the model's NaFlex inputs (patches in the processor's order, grid, mask)."""
    p, (b, c, height, width) = patch_size(model), x.shape
    if height % p or width % p:
        raise RecipeError(f"siglip2: the input is {height}×{width}, not a multiple of the patch size {p}; use the "
                          "model's own Siglip2ImageProcessor (AutoImageProcessor), which resizes to a multiple")
    h, w = height // p, width // p
    patches = x.reshape(b, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(b, h * w, p * p * c)
    return {"pixel_values": patches, "spatial_shapes": torch.tensor([[h, w]] * b, device=x.device),
            "pixel_attention_mask": torch.ones(b, h * w, dtype=torch.long, device=x.device)}


RECIPE = Recipe(
    name="siglip2",
    model_types=("siglip2",),
    target_layers=lambda m: [m.vision_model.post_layernorm],
    reshape=lambda x, m, hw: tokens_to_map(x, (hw[0] // patch_size(m), hw[1] // patch_size(m))),
    head=lambda m: m.classifier,
    pooling="mean",
    image=image,
    inputs=inputs,
    attention=Attention(
        modules=lambda m: [layer.self_attn for layer in m.vision_model.encoder.layers],
        prefix=lambda m: 0,
        readout=None,  # the classifier mean-pools the patch tokens
        blocks=lambda m: list(m.vision_model.encoder.layers),
        score=lambda m: lambda z: m.classifier(m.vision_model.post_layernorm(z).mean(1)),
    ),
    # trained test model (tests/trained/siglip2, 60 held-out images, share of peaks on the object):
    # gradient-rollout 0.88, rollout 0.87, attention 0.80, legrad 0.48; gradcam 0.17, hirescam 0.17, gradcam++ 0.25
    default_method="gradient-rollout",
    description="SigLIP 2: NaFlex patches ↔ image; final norm's tokens (no CLS) → grid = input // patch size.",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
