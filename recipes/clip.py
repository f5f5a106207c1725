"""CLIP-layout dual encoders (``openai/clip-vit-base-patch32``, AltCLIP, MetaCLIP 2, ...), by text or image.

Any model with ``get_image_features`` / ``get_text_features``, a ``vision_model`` whose
``encoder.layers`` are CLIP blocks, a ``post_layernorm`` and a ``visual_projection`` is served
(the recipe is found from that layout, not a model type), and so is CLIP's image tower alone
(``CLIPVisionModelWithProjection``, for image similarity). The image embedding is the projected,
post-normed CLS token of the last block (``get_image_features``); its evidence is read, as for ViT,
at the last block's ``layer_norm1``: the tokens the CLS token attends to there. Tokens are
``B×(1 + h·w)×C``, grid = input // patch size, and ``interpolate_pos_encoding=True`` takes any size.
Attention: every block's ``self_attn`` returns ``(output, probabilities)``; the readout is CLS.
LeGrad's per-block embedding is the paper's for CLIP: the block's tokens, mean over all of them,
through the model's own ``post_layernorm`` and ``visual_projection`` (scored against the prompt
by the task).
"""

import inspect

from xai_recipes import Attention, Recipe, hookimpl, tokens_to_map


def tower(model):
    return model.vision_model


def clip_layout(model) -> bool:
    vision = getattr(model, "vision_model", None)
    return (hasattr(model, "visual_projection")
            and hasattr(getattr(getattr(vision, "encoder", None), "layers", None), "__len__")
            and hasattr(vision, "post_layernorm"))


def grid(model, height: int, width: int) -> tuple[int, int]:
    patch = tower(model).config.patch_size
    return height // patch, width // patch


def inputs(model, pixel_values):
    run = getattr(model, "get_image_features", model.forward)
    takes = "interpolate_pos_encoding" in inspect.signature(run).parameters
    return {"pixel_values": pixel_values, **({"interpolate_pos_encoding": True} if takes else {})}


def image_embedding(output):
    """``get_image_features``' pooled (projected) output, or the vision model's ``image_embeds``."""
    if hasattr(output, "image_embeds") and output.image_embeds is not None:
        return output.image_embeds
    return output if hasattr(output, "dim") else output.pooler_output


def call(model, kwargs):
    run = getattr(model, "get_image_features", None)
    return run(**kwargs) if run is not None else model(**kwargs)


ATTENTION = Attention(
    modules=lambda m: [layer.self_attn for layer in tower(m).encoder.layers],
    prefix=lambda m: 1,
    readout=(0,),
    blocks=lambda m: list(tower(m).encoder.layers),
    embed=lambda m: lambda z: m.visual_projection(tower(m).post_layernorm(z.mean(1))),
)

RECIPE = Recipe(
    name="clip",
    model_types=(),  # any model type with CLIP's layout (CLIP, AltCLIP, MetaCLIP 2, ...)
    matches=clip_layout,
    target_layers=lambda m: [tower(m).encoder.layers[-1].layer_norm1],
    reshape=lambda x, m, hw: tokens_to_map(x, grid(m, *hw), prefix=1),
    inputs=inputs,
    call=call,
    embedding=image_embedding,
    attention=ATTENTION,
    default_method="gradient-rollout",
    description="CLIP-layout dual encoders: last block's layer_norm1, CLS dropped; scores = the pipeline's prompt logits.",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
