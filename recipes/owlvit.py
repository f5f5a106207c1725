"""OWL-ViT and OWLv2 (``google/owlvit-base-patch32``, ``google/owlv2-base-patch16-ensemble``): boxes for text prompts.

OWL detects with a CLIP: every patch token of the vision tower's last layer is one candidate
box. The detector multiplies each patch token by the CLS token, normalises it
(``image_embedder``: a ``B×h×w×D`` feature map), and two heads read each patch on its own: the box
head predicts that patch's box, and the class head scores it against each text prompt's embedding
from the text tower (``class_predictor``; the ``zero-shot-object-detection`` task embeds the
prompts once and scores them). So the recipe runs the image side only: ``image_embedder`` on the
image, with ``interpolate_pos_encoding=True`` so that any input size works (at the processor's
own size nothing changes).

A box's logit depends on its own patch token and on the CLS token, both of the last layer, and
the last block's attention is where those tokens read the rest of the image: as for CLIP and ViT,
the CAM methods read the last block's ``layer_norm1`` (tokens ``B×(1 + h·w)×C``, CLS dropped,
grid = input // patch size).
"""

from xai_recipes import Recipe, hookimpl, tokens_to_map


def tower(model):
    """The vision tower of an OWL-ViT (``model.owlvit``) or OWLv2 (``model.owlv2``) detector."""
    clip = getattr(model, "owlvit", None) or getattr(model, "owlv2")
    return clip.vision_model


def grid(model, height: int, width: int) -> tuple[int, int]:
    patch = model.config.vision_config.patch_size
    return height // patch, width // patch


RECIPE = Recipe(
    name="owlvit",
    model_types=("owlvit", "owlv2"),
    matches=lambda m: callable(getattr(m, "image_embedder", None)),  # the detectors, not OwlViTModel
    target_layers=lambda m: [tower(m).encoder.layers[-1].layer_norm1],
    reshape=lambda x, m, hw: tokens_to_map(x, grid(m, *hw), prefix=1),
    forward_kwargs={"interpolate_pos_encoding": True},
    call=lambda m, kwargs: m.image_embedder(**kwargs)[0],  # the B×h×w×D patch features both heads read
    description="OWL-ViT / OWLv2: last block's layer_norm1, CLS dropped; boxes and prompt logits from the patch features.",
)


@hookimpl
def register_recipes(register):
    register(RECIPE)
