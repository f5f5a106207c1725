"""open_clip models (the ``open-clip-torch`` package), built offline with random weights.

Scores equal open_clip's own zero-shot recipe (``encode_image``/``encode_text`` normalised,
``logit_scale.exp()``, softmax); the attention methods' recomputation of torch's
``MultiheadAttention`` equals torch's own output and probabilities; GradCAM equals grad-cam called
directly with the recipe's layer and reshape; ``hf-hub:`` ids fail offline with a typed error.
"""

from __future__ import annotations

import numpy as np
import open_clip  # the clip extra, part of dev: missing is a failure, not a skip
import pytest
import torch
from PIL import Image

import xai_recipes
from xai_recipes import ModelLoadError, explain
from xai_recipes.methods.attention import mha_with_probs

PROMPTS = ["a dog", "a cat on a sofa", "a red car"]


@pytest.fixture(scope="module")
def model():
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8,
                                                                  image_size=32),
                           text_cfg=CLIPTextCfg(context_length=16, vocab_size=49408, width=32, heads=2, layers=2))
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    return model.eval(), (open_clip.image_transform(32, is_train=False), tokenizer)


def picture(seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((40, 50, 3)) * 255).astype("uint8"))


def test_scores_equal_open_clips_zero_shot(model):
    model, (preprocess, tokenizer) = model
    assert xai_recipes.find_recipe(model).name == "open_clip"
    for seed in range(2):
        exp = explain(model, picture(seed), target=PROMPTS, processor=(preprocess, tokenizer), method="gradcam")
        with torch.no_grad():
            image = model.encode_image(preprocess(picture(seed))[None], normalize=True)
            text = model.encode_text(tokenizer([f"This is a photo of {p}." for p in PROMPTS]), normalize=True)
        expected = (model.logit_scale.exp() * image @ text.T).softmax(-1)[0]
        np.testing.assert_allclose(exp.scores, expected.detach().numpy(), atol=1e-5)


def test_the_recomputed_attention_equals_torchs(model):
    model, _ = model
    attn = model.visual.transformer.resblocks[0].attn
    x = torch.randn(2, 17, 32)
    out, probs = mha_with_probs(attn, (x, x, x), {"need_weights": False})
    expected_out, expected_probs = attn(x, x, x, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs, expected_probs, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ["gradient-rollout", "legrad"])
def test_gradient_methods_follow_the_prompt(model, method):
    model, processor = model
    exp = explain(model, picture(), target=PROMPTS, processor=processor, method=method)
    assert exp.heatmaps.shape == (3, 40, 50) and np.isfinite(exp.heatmaps).all()
    assert np.abs(exp.heatmaps[0] - exp.heatmaps[1]).max() > 1e-3  # the prompts' maps differ


def test_gradcam_equals_grad_cam(model):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, (preprocess, tokenizer) = model
    x = preprocess(picture())[None]
    result = xai_recipes.get_method("gradcam")
    recipe = xai_recipes.find_recipe(model)
    task = xai_recipes.find_task(model, recipe, PROMPTS)
    bound = task.bind(xai_recipes.Call(model, _processor(preprocess, tokenizer, model), recipe, PROMPTS,
                                       dict(task.options)))
    from xai_recipes.modelstate import borrowed

    with borrowed(model):
        ours = result.run(xai_recipes.Batch(model, bound.recipe, x, lambda logits: [[0, 1, 2]], 1, {}))
    with torch.no_grad():
        text = model.encode_text(tokenizer([f"This is a photo of {p}." for p in PROMPTS]), normalize=True)

    class Scores(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixels):
            image = self.model.encode_image(pixels, normalize=True)
            return self.model.logit_scale.exp() * image @ text.T

    layer = recipe.target_layers(model)[-1]
    with GradCAM(Scores(), [layer], reshape_transform=lambda a: recipe.reshape(a, model, (32, 32))) as cam:
        for t in range(3):
            np.testing.assert_allclose(np.asarray(ours.maps)[0, t], cam(x, targets=[ClassifierOutputTarget(t)])[0],
                                       atol=1e-4)


def _processor(preprocess, tokenizer, model):
    from xai_recipes.open_clip_models import as_processor

    return as_processor((preprocess, tokenizer), model)


def test_hf_hub_ids_fail_offline_with_a_typed_error():
    with pytest.raises(ModelLoadError, match="open_clip model 'hf-hub:nobody/nothing'.*pretrained=PATH"):
        explain("hf-hub:nobody/nothing", picture(), target="a dog")
