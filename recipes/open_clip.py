"""open_clip ViT models (``open_clip.create_model("ViT-B-16", ...)``, ``hf-hub:`` ids), by text or image.

An open_clip model has no transformers config: the recipe is found by its layout (``model.visual`` an
open_clip ``VisionTransformer`` without attentional pooler). The image embedding is
``encode_image`` (``ln_post`` of the CLS token, times ``proj``); the evidence is read, as for HF CLIP,
at the last block's ``ln_1``: tokens ``B×(1 + h·w)×C`` (CLS first), grid = input // patch size.
Attention: each block's ``attn`` is torch's ``MultiheadAttention`` called with ``need_weights=False``;
the attention methods recompute it from its own weights with the probabilities on the gradient path
(``mha_with_probs``), so gradient rollout and LeGrad apply. LeGrad's per-block embedding is the
paper's own code for open_clip: ``ln_post(tokens.mean(1)) @ proj``.
"""

from xai_recipes import Attention, Recipe, hookimpl, tokens_to_map


def vision_transformer(model) -> bool:
    visual = getattr(model, "visual", None)
    return (type(model).__module__.startswith("open_clip.") and hasattr(visual, "transformer")
            and hasattr(visual, "ln_post") and getattr(visual, "attn_pool", None) is None)


def grid(model, height: int, width: int) -> tuple[int, int]:
    ph, pw = model.visual.patch_size
    return height // ph, width // pw


def tokens(x, model):
    """open_clip keeps tokens batch-first (``Transformer.batch_first``, the default) or sequence-first."""
    return x if getattr(model.visual.transformer, "batch_first", True) else x.transpose(0, 1)


RECIPE = Recipe(
    name="open_clip",
    model_types=(),
    matches=vision_transformer,
    target_layers=lambda m: [m.visual.transformer.resblocks[-1].ln_1],
    reshape=lambda x, m, hw: tokens_to_map(tokens(x, m), grid(m, *hw), prefix=1),
    call=lambda m, kwargs: m.encode_image(kwargs["pixel_values"]),
    embedding=lambda output: output,
    attention=Attention(
        modules=lambda m: [block.attn for block in m.visual.transformer.resblocks],
        prefix=lambda m: 1,
        readout=(0,),
        blocks=lambda m: list(m.visual.transformer.resblocks),
        embed=lambda m: lambda z: m.visual.ln_post(tokens(z, m).mean(1)) @ m.visual.proj,
    ),
    default_method="gradient-rollout",
    description="open_clip ViTs: last block's ln_1, CLS dropped; scores = cos × logit_scale against the prompts.",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
