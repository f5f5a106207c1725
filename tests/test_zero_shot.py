"""Zero-shot (CLIP, SigLIP) and image-similarity tasks against references, on random float64 models.

* Scores equal ``pipeline("zero-shot-image-classification")``'s on the same model, prompts and template
  (CLIP's softmax, SigLIP's sigmoid), within 1e-5.
* Every attention method equals an independent computation written here from the papers, on the
  model's own ``output_attentions`` / ``output_hidden_states``: attention (CLS row / SigLIP's probe
  query), rollout (Abnar & Zuidema), gradient rollout (Chefer et al., **one backward per prompt**)
  and LeGrad (Bousselham et al.: per layer, the mean of the block's tokens through the model's own
  final norm and projection, scored against the prompt; positive gradient w.r.t. that layer's
  attention, mean over heads and queries, summed), at the native size and at another input size.
* GradCAM on the vision tower equals grad-cam called directly with the recipe's layer and reshape.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from transformers import pipeline

import xai_recipes
from xai_recipes import Batch, Call, explain, registry
from zero_shot_models import as_processor, random_clip, random_siglip

PROMPTS = ["a dog", "a cat on a sofa", "the digit seven"]
SIZES = [(32, 32), (48, 40)]  # native, and position embeddings interpolated


@pytest.fixture(scope="module", params=["clip", "siglip"])
def family(request):
    model, tokenizer, image_processor = (random_clip if request.param == "clip" else random_siglip)()
    model.config._attn_implementation = "eager"  # the reference reads output_attentions
    for sub in (model.config.vision_config, model.config.text_config):
        sub._attn_implementation = "eager"
    return request.param, model, tokenizer, image_processor


def image(seed: int = 0, size=(40, 50)) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((*size, 3)) * 255).astype("uint8"))


@pytest.mark.parametrize("template", ["This is a photo of {}.", "{}"])
def test_scores_equal_the_pipeline(family, template):
    name, model, tokenizer, image_processor = family
    pipe = pipeline("zero-shot-image-classification", model=model, tokenizer=tokenizer, image_processor=image_processor)
    for seed in range(2):
        expected = {r["label"]: r["score"] for r in pipe(image(seed), candidate_labels=PROMPTS, hypothesis_template=template)}
        exp = explain(model, image(seed), target=PROMPTS, processor=as_processor(tokenizer, image_processor),
                      method="gradcam", template=template)
        assert exp.task == "zero-shot-image-classification" and exp.labels == PROMPTS and exp.recipe == name
        np.testing.assert_allclose(exp.scores, [expected[p] for p in PROMPTS], atol=1e-5)
        assert (abs(sum(exp.scores) - 1) < 1e-5) == (name == "clip")  # softmax vs independent sigmoid
    # a target among labels=: the probabilities are over the labels, the map is the target's
    expected = {r["label"]: r["score"] for r in pipe(image(0), candidate_labels=PROMPTS, hypothesis_template=template)}
    exp = explain(model, image(0), target="a dog", labels=PROMPTS, processor=as_processor(tokenizer, image_processor),
                  method="gradcam", template=template)
    assert exp.labels == ["a dog"] and exp.indices == [0]
    np.testing.assert_allclose(exp.scores, [expected["a dog"]], atol=1e-5)
    top = explain(model, image(0), labels=PROMPTS, top_k=2, processor=as_processor(tokenizer, image_processor),
                  method="gradcam", template=template)
    assert top.labels == sorted(expected, key=expected.get, reverse=True)[:2]


# --- independent computations -------------------------------------------------------------------

def text_embeddings(model, tokenizer, sequences):
    kwargs = {"padding": "max_length", "max_length": 64, "truncation": True} if "siglip" in model.config.model_type \
        else {"padding": True}
    inputs = tokenizer(sequences, return_tensors="pt", **kwargs)
    with torch.no_grad():
        text = model.get_text_features(**inputs).pooler_output
    return text / text.norm(dim=-1, keepdim=True)


def prompt_scores(model, embedding, text):
    image = embedding / embedding.norm(dim=-1, keepdim=True)
    logits = image @ text.T * model.logit_scale.exp()
    return logits + model.logit_bias if hasattr(model, "logit_bias") else logits


def vision(model, pixel_values):
    """The vision tower with every attention map and hidden state: the reference's own forward."""
    out = model.vision_model(pixel_values=pixel_values, output_attentions=True, output_hidden_states=True,
                             interpolate_pos_encoding=True)
    pooled = out.pooler_output
    embedding = model.visual_projection(pooled) if hasattr(model, "visual_projection") else pooled
    return out, embedding


def probe_attention(model, tokens):
    """SigLIP: the pooling head's probe-query attention over the post-norm tokens, mean over heads, B×N."""
    head = model.vision_model.head
    probe = head.probe.repeat(tokens.shape[0], 1, 1)
    _, weights = head.attention(probe, tokens, tokens, need_weights=True, average_attn_weights=True)
    return weights[:, 0]


def readout(model, matrix, out):
    """Rows of ``matrix`` (``...×B×N×N``) the embedding reads: CLS for CLIP, the probe's weights for SigLIP."""
    if hasattr(model, "visual_projection"):
        return matrix[..., 0, 1:]
    weights = probe_attention(model, model.vision_model.post_layernorm(out.last_hidden_state)).detach()
    return torch.einsum("bn,...bnk->...bk", weights, matrix)


def to_maps(relevance, hw):
    """``...×K`` patch relevances → min-max scaled maps on the input (as the engine upsamples)."""
    h, w = hw[0] // 8, hw[1] // 8
    maps = relevance.detach().reshape(-1, 1, h, w).double()
    maps = nn.functional.interpolate(maps, size=hw, mode="bilinear", align_corners=False)[:, 0]
    lo, hi = maps.flatten(1).min(1).values, maps.flatten(1).max(1).values
    maps = (maps - lo[:, None, None]) / (hi - lo).clamp_min(1e-12)[:, None, None]
    return maps.reshape(*relevance.shape[:-1], *hw).numpy()


def reference(method, model, tokenizer, pixel_values):
    text = text_embeddings(model, tokenizer, [f"This is a photo of {p}." for p in PROMPTS])
    hw = tuple(pixel_values.shape[-2:])
    T, prefix = len(PROMPTS), 1 if hasattr(model, "visual_projection") else 0
    if method in ("attention", "rollout"):
        with torch.no_grad():
            out, _ = vision(model, pixel_values)
        if method == "attention":
            if prefix:
                rows = out.attentions[-1].mean(1)[:, 0, prefix:]
            else:
                rows = probe_attention(model, model.vision_model.post_layernorm(out.last_hidden_state))
            return np.repeat(to_maps(rows, hw)[:, None], T, 1)
        joint = None
        for a in out.attentions:
            a = 0.5 * a.mean(1) + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype)
            a = a / a.sum(-1, keepdim=True)
            joint = a if joint is None else a @ joint
        rows = readout(model, joint, out)
        return np.repeat(to_maps(rows, hw)[:, None], T, 1)
    maps = []
    for t in range(T):  # one backward per prompt, as the papers' code does
        out, embedding = vision(model, pixel_values)
        score = prompt_scores(model, embedding, text)[:, t].sum()
        if method == "gradient-rollout":
            grads = torch.autograd.grad(score, out.attentions)
            N = out.attentions[0].shape[-1]
            R = torch.eye(N, dtype=torch.float64).expand(pixel_values.shape[0], N, N)
            for a, g in zip(out.attentions, grads):
                R = R + (g * a).clamp_min(0).mean(1) @ R
            maps.append(to_maps(readout(model, R, out), hw))
        else:  # legrad
            total = 0
            for layer, a in enumerate(out.attentions):
                z = out.hidden_states[layer + 1]
                if prefix:
                    feature = model.visual_projection(model.vision_model.post_layernorm(z.mean(1)))
                else:
                    feature = model.vision_model.head(model.vision_model.post_layernorm(z))
                sim = prompt_scores(model, feature, text)[:, t].sum()
                (grad,) = torch.autograd.grad(sim, [a], retain_graph=True)
                total = total + grad.clamp_min(0).mean(1).mean(1)[:, prefix:]
            maps.append(to_maps(total, hw))
    return np.stack(maps, 1)


def ours(method, model, tokenizer, image_processor, pixel_values):
    recipe = registry.find_recipe(model)
    task = registry.find_task(model, recipe, PROMPTS)
    bound = task.bind(Call(model, as_processor(tokenizer, image_processor), recipe, PROMPTS, dict(task.options)))
    choose = lambda logits: [list(bound.wanted)] * len(logits)  # noqa: E731
    from xai_recipes.modelstate import borrowed

    m = registry.get_method(method)
    with borrowed(model, eager_attention=m.eager_attention):
        return m.run(Batch(model, bound.recipe, pixel_values, choose, 1, dict(m.options)))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("method", ["attention", "rollout", "gradient-rollout", "legrad"])
def test_attention_methods_equal_independent_computations(family, method, size):
    _, model, tokenizer, image_processor = family
    pixel_values = torch.randn(2, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    result = ours(method, model, tokenizer, image_processor, pixel_values)
    expected = reference(method, model, tokenizer, pixel_values)
    assert np.asarray(result.maps).shape == expected.shape == (2, len(PROMPTS), *size)
    np.testing.assert_allclose(np.asarray(result.maps), expected, atol=1e-4)
    if method in ("gradient-rollout", "legrad"):  # class-specific: the prompts' maps differ
        assert np.abs(expected[:, 0] - expected[:, 1]).max() > 1e-3


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_gradcam_equals_grad_cam_on_the_vision_tower(family, size):
    from pytorch_grad_cam import GradCAM

    _, model, tokenizer, image_processor = family
    pixel_values = torch.randn(1, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    result = ours("gradcam", model, tokenizer, image_processor, pixel_values)
    recipe = registry.find_recipe(model)
    text = text_embeddings(model, tokenizer, [f"This is a photo of {p}." for p in PROMPTS])

    class Scores(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return prompt_scores(model, vision(model, x)[1], text)

    layer = recipe.target_layers(model)[-1]
    with GradCAM(Scores(), [layer], reshape_transform=lambda x: recipe.reshape(x, model, size)) as cam:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        for t in range(len(PROMPTS)):
            expected = cam(pixel_values.float().double(), targets=[ClassifierOutputTarget(t)])[0]
            np.testing.assert_allclose(np.asarray(result.maps)[0, t], expected, atol=1e-4)


def test_prompts_cost_one_text_embedding_per_set(family, monkeypatch):
    _, model, tokenizer, image_processor = family
    calls = []
    original = type(model).get_text_features
    monkeypatch.setattr(type(model), "get_text_features", lambda self, **kw: calls.append(1) or original(self, **kw))
    processor = as_processor(tokenizer, image_processor)
    for _ in range(3):
        explain(model, image(), target=["a red car", "a dog and a cat"], processor=processor, method="gradcam")
    assert len(calls) == 1  # computed once, then cached for the model and prompt set
    explain(model, image(), target=["a red car"], processor=processor, method="gradcam")
    assert len(calls) == 2  # another prompt set


def test_similarity_to_itself_is_one_and_maps_follow_the_reference(family):
    _, model, tokenizer, image_processor = family
    processor = as_processor(tokenizer, image_processor)
    exp = explain(model, image(0), target=[image(0), image(5)], processor=processor, method="gradient-rollout")
    assert exp.task == "image-feature-extraction" and exp.labels == ["reference 0", "reference 1"]
    assert exp.scores[0] == pytest.approx(1.0, abs=1e-6) and exp.scores[1] < 1 - 1e-4
    assert np.abs(exp.heatmaps[0] - exp.heatmaps[1]).max() > 1e-3


def test_the_model_is_given_back_unchanged_also_with_threads(family):
    from concurrent.futures import ThreadPoolExecutor

    _, model, tokenizer, image_processor = family
    processor = as_processor(tokenizer, image_processor)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attn = model.config.vision_config._attn_implementation
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: explain(model, image(i % 3), target=PROMPTS[: 1 + i % 3], processor=processor,
                                                  method=["gradient-rollout", "legrad", "gradcam", "rollout"][i % 4]),
                                range(16)))
    assert all(r.heatmaps.shape[0] == 1 + i % 3 for i, r in enumerate(results))
    assert model.training and all(m.training for m in model.modules())
    assert model.config.vision_config._attn_implementation == attn
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    model.eval()


def test_describe_and_methods_say_what_applies(family):
    _, model, _, _ = family
    described = xai_recipes.describe(model)
    assert described.methods["gradcam"] == "ok" and described.methods["legrad"] == "ok"
    assert "zero-shot model has none" in described.methods["dff"]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A random CLIP saved as a hub folder would be (safetensors, tokenizer, image processor)."""
    model, tokenizer, image_processor = random_clip(torch.float32)
    folder = tmp_path_factory.mktemp("clip")
    model.save_pretrained(folder)
    as_processor(tokenizer, image_processor).save_pretrained(folder)
    return folder


def test_a_saved_clip_folder_loads_and_the_cli_explains_prompts(clip_folder, tmp_path, capsys):
    import json

    from xai_recipes import cli

    image(0).save(tmp_path / "scene.png")
    code = cli.main(["explain", str(clip_folder), str(tmp_path / "scene.png"), "--target", "a dog", "a cat on a sofa",
                     "--labels", *PROMPTS, "--method", "gradcam", "--out", str(tmp_path / "out"), "--format", "json",
                     "--quiet"])
    assert code == 0
    (row,) = json.loads(capsys.readouterr().out)["results"]
    assert row["task"] == "zero-shot-image-classification" and row["explained"] == ["a dog", "a cat on a sofa"]
    exp = explain(clip_folder, image(0), target=["a dog", "a cat on a sofa"], labels=PROMPTS, method="gradcam")
    np.testing.assert_allclose(row["scores"], np.round(exp.scores, 4), atol=1e-4)
    saved = xai_recipes.load(tmp_path / "out" / "scene.npz")
    assert saved.task == "zero-shot-image-classification" and saved.labels == ["a dog", "a cat on a sofa"]
    np.testing.assert_allclose(saved.heatmaps, exp.heatmaps, atol=1e-6)


def test_the_web_page_takes_prompts_and_shows_the_candidates_probabilities(clip_folder, tmp_path):
    pytest.importorskip("gradio")
    from xai_recipes import web

    methods, default, labels, zero_shot = web.model_options(str(clip_folder))
    assert zero_shot and labels == [] and default == methods[0]
    image(0).save(tmp_path / "scene.png")
    status, overlays, predictions, *_ = web.explain_image(
        str(tmp_path / "scene.png"), None, str(clip_folder), "gradcam", ["a dog", "a cat on a sofa"], 1,
        "\n".join(PROMPTS), progress=lambda *a, **k: None)
    assert "clip / gradcam" in status, status
    assert [caption.split(" · ")[0] for _, caption in overlays] == ["a dog", "a cat on a sofa"]
    assert set(predictions) == set(PROMPTS) and sum(predictions.values()) == pytest.approx(1, abs=1e-5)  # softmax


def test_evaluate_uses_the_category_names_as_prompts(family):
    _, model, tokenizer, image_processor = family
    processor = as_processor(tokenizer, image_processor)
    data = [(image(0), "a dog", (5, 5, 30, 25)), (image(1), "a cat on a sofa", (10, 10, 45, 35)),
            (image(2), "a dog", (0, 0, 20, 20))]
    result = xai_recipes.evaluate(model, data, methods=["gradcam"], metrics=["pointing", "deletion"], processor=processor)
    assert [r["label"] for r in result.rows] == ["a dog", "a cat on a sofa", "a dog"]
    for (picture, label, _), row in zip(data, result.rows):  # the probability over the data's categories
        exp = explain(model, picture, target=label, labels=["a dog", "a cat on a sofa"], processor=processor,
                      method="gradcam")
        assert row["probability"] == pytest.approx(exp.scores[0], abs=1e-6)
        assert 0 <= row["deletion"] <= 1


def test_siglip2_naflex_scores_equal_the_pipeline_and_maps_follow_the_prompt():
    """A random SigLIP 2 dual encoder with its NaFlex processor: recipe "siglip2-dual" (patches ↔ image)."""
    import transformers as T

    from zero_shot_models import siglip_tokenizer

    torch.manual_seed(0)
    tokenizer = siglip_tokenizer()
    config = T.Siglip2Config(
        text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         vocab_size=tokenizer.vocab_size, max_position_embeddings=64, pad_token_id=0, eos_token_id=1),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           patch_size=8, num_patches=64))
    model = T.Siglip2Model(config).eval()
    image_processor = T.Siglip2ImageProcessor(patch_size=8, max_num_patches=64)

    class Processor:  # what AutoProcessor gives: the image processor's call, and the tokenizer
        def __init__(self):
            self.tokenizer = tokenizer

        def __call__(self, images=None, return_tensors="pt"):
            return image_processor(images=images, return_tensors=return_tensors)

        def to_json_string(self):
            return image_processor.to_json_string()

    pipe = pipeline("zero-shot-image-classification", model=model, tokenizer=tokenizer, image_processor=image_processor)
    expected = {r["label"]: r["score"] for r in pipe(image(0), candidate_labels=PROMPTS)}
    for method in ("gradcam", "gradient-rollout", "legrad"):
        exp = explain(model, image(0), target=PROMPTS, processor=Processor(), method=method)
        assert exp.recipe == "siglip2-dual" and exp.heatmaps.shape == (3, 40, 50)
        np.testing.assert_allclose(exp.scores, [expected[p] for p in PROMPTS], atol=1e-5)
        assert np.abs(exp.heatmaps[0] - exp.heatmaps[1]).max() > 1e-3
