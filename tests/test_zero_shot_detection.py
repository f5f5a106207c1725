"""Zero-shot object detection by text (OWL-ViT, OWLv2) on tiny random detectors built from configs, offline.

The detections equal ``pipeline("zero-shot-object-detection")``'s (each candidate prompt run on its own),
each detection's score is ``sigmoid`` of its own box-prompt logit in the model's forward with all the
prompts, its GradCAM map is the grad-cam package's GradCAM of that logit, all of them cost one image
forward and one batched backward, and a detector folder loads by name with its tokenizer.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import transformers as T
from PIL import Image

import xai_recipes
from xai_recipes import NoDetectionError, PromptError, TaskNotApplicableError, UnknownLabelError, explain

PROMPTS = ["a red car", "a dog", "the white box"]
WORDS = ["a", "red", "car", "dog", "cat", "blue", "square", "photo", "of", "the", "white", "box"]


def owl_tokenizer() -> T.CLIPTokenizerFast:
    """A CLIP tokenizer trained offline on a few words, laid out as OWL needs it: OWL pools each prompt at the
    highest token id (the end token must be the last id) and treats a prompt starting with id 0 as padding
    (the start token must not be 0; 0 is the pad "!", as in OWL's own tokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    bpe = Tokenizer(models.BPE(unk_token="<unk>", end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [f"{a} {b} {c}" for a in WORDS for b in WORDS for c in WORDS[:4]]
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=80, end_of_word_suffix="</w>",
                                                        special_tokens=["!", "<unk>", "<|startoftext|>"]))
    bpe.add_special_tokens(["<|endoftext|>"])  # the last id
    bos, eos = bpe.token_to_id("<|startoftext|>"), bpe.token_to_id("<|endoftext|>")
    bpe.post_processor = processors.TemplateProcessing(single="<|startoftext|> $A <|endoftext|>",
                                                       special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)])
    return T.CLIPTokenizerFast(tokenizer_object=bpe, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                               pad_token="!", unk_token="<unk>", model_max_length=16)


TOKENIZER = owl_tokenizer()


def random_owl(version: str):
    """A 4×4-patch OWL-ViT / OWLv2 at 32 px (float64) with its image processor and processor. The heads are
    re-initialised so that the box-prompt scores spread over about 0.25..0.6 and each patch's box lies around
    it (the random init saturates both)."""
    torch.manual_seed(0)
    config_class, model_class, processor_class, both = {
        "owlvit": (T.OwlViTConfig, T.OwlViTForObjectDetection, T.OwlViTImageProcessor, T.OwlViTProcessor),
        "owlv2": (T.Owlv2Config, T.Owlv2ForObjectDetection, T.Owlv2ImageProcessor, T.Owlv2Processor),
    }[version]
    tokenizer = TOKENIZER
    text = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                vocab_size=len(tokenizer), max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                  patch_size=8)
    model = model_class(config_class(text_config=text, vision_config=vision, projection_dim=32))
    with torch.no_grad():
        model.class_head.dense0.weight.normal_(0, 0.5)
        for linear in (model.class_head.logit_shift, model.class_head.logit_scale):
            linear.weight.normal_(0, 0.05)
            linear.bias.zero_()
        model.box_head.dense0.weight.normal_(0, 0.2)
        model.box_head.dense1.weight.normal_(0, 0.2)
        model.box_head.dense2.weight.normal_(0, 0.02)
    image_processor = processor_class(size={"height": 32, "width": 32})
    if version == "owlvit":
        image_processor.crop_size = {"height": 32, "width": 32}
    return model.double().eval(), image_processor, both(image_processor=image_processor, tokenizer=tokenizer)


def picture(height: int = 60, width: int = 80) -> Image.Image:
    a = np.zeros((height, width, 3), np.uint8)
    a[5:25, 5:30] = (255, 0, 0)
    a[30:55, 40:75] = (0, 0, 255)
    a[10:20, 50:70] = (255, 255, 255)
    return Image.fromarray(a)


#: OWLv2 pads the image to a square (bottom and right) before resizing: a square picture for OWLv2 here, a
#: non-square one in test_owlv2_pads_a_non_square_picture_and_its_maps_land_on_the_image.
PICTURES = {"owlvit": picture(), "owlv2": picture(64, 64)}


@pytest.fixture(scope="module", params=["owlvit", "owlv2"])
def owl(request):
    return (request.param, *random_owl(request.param))


def forward(model, image_processor, image, prompts):
    """The model's own forward on the image with all the prompts (padded), as its docs do it."""
    text = TOKENIZER(prompts, padding=True, return_tensors="pt")
    pixel_values = image_processor(images=image, return_tensors="pt")["pixel_values"].double()
    with torch.no_grad():
        return model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixel_values)


@pytest.mark.parametrize("threshold", [0.1, 0.55])
def test_detections_equal_the_pipeline_and_each_explains_its_box_prompt_logit(owl, threshold):
    version, model, image_processor, processor = owl
    image = PICTURES[version]
    exp = explain(model, image, labels=PROMPTS, processor=processor, method="gradcam", threshold=threshold, top_k=100)
    assert exp.task == "zero-shot-object-detection" and exp.recipe == "owlvit"

    pipe = T.pipeline("zero-shot-object-detection", model=model, tokenizer=TOKENIZER, image_processor=image_processor)
    reference = pipe(image, candidate_labels=PROMPTS, threshold=threshold)
    assert 0 < len(reference) < 48 if threshold > 0.1 else len(reference) == 48  # 16 boxes × 3 prompts
    assert exp.labels == [r["label"] for r in reference]
    np.testing.assert_allclose(exp.scores, [r["score"] for r in reference], atol=1e-6)
    boxes = np.array([[r["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] for r in reference])
    assert np.abs(np.array(exp.boxes) - boxes).max() <= 1  # the pipeline truncates its boxes to int

    output = forward(model, image_processor, image, PROMPTS)
    scale = [image.width, image.height] * 2 if version == "owlvit" else [max(image.size)] * 4  # OWLv2: padded square
    for index, label, score, box in zip(exp.indices, exp.labels, exp.scores, exp.boxes):
        p, k = divmod(index, len(PROMPTS))
        assert label == PROMPTS[k]
        assert float(output.logits[0, p, k].sigmoid()) == pytest.approx(score, abs=1e-6)  # its own box-prompt logit
        cx, cy, w, h = output.pred_boxes[0, p].tolist()  # and that patch's own box
        np.testing.assert_allclose(box, np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]) * scale, atol=1e-4)


def test_gradcam_maps_equal_grad_cams_own_on_the_models_forward(owl):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    version, model, image_processor, processor = owl
    image = PICTURES[version]
    exp = explain(model, image, labels=PROMPTS, processor=processor, method="gradcam", top_k=4)
    text = TOKENIZER(PROMPTS, padding=True, return_tensors="pt")

    class Flat(torch.nn.Module):  # the model's own forward with every prompt: B×(P·K) logits
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            n = len(x)
            return self.model(input_ids=text["input_ids"].repeat(n, 1), attention_mask=text["attention_mask"].repeat(n, 1),
                              pixel_values=x).logits.flatten(1)

    recipe = xai_recipes.get_recipe("owlvit")
    layer = dict(model.named_modules())[exp.target_layers[0]]
    assert exp.target_layers == [f"{version}.vision_model.encoder.layers.1.layer_norm1"]
    x = image_processor(images=image, return_tensors="pt")["pixel_values"].double()
    with GradCAM(Flat(), [layer], reshape_transform=lambda t: recipe.reshape(t, model, (32, 32))) as cam:
        maps = cam(x.repeat(4, 1, 1, 1), targets=[ClassifierOutputTarget(i) for i in exp.indices])
    np.testing.assert_allclose(exp.heatmaps, exp.geometry.to_image(maps)[0], atol=1e-4)
    assert exp.heatmaps[0].std() > 1e-3


def test_a_prompt_target_explains_its_own_detections_best_first(owl):
    version, model, image_processor, processor = owl
    image = PICTURES[version]
    one = explain(model, image, target="a dog", processor=processor, method="gradcam")
    reference = T.pipeline("zero-shot-object-detection", model=model, tokenizer=TOKENIZER,
                           image_processor=image_processor)(image, candidate_labels=["a dog"])
    assert one.labels == ["a dog"] * 10  # at most top_k (10) per prompt
    np.testing.assert_allclose(one.scores, [r["score"] for r in reference[:10]], atol=1e-6)
    both = explain(model, image, target=["the white box", "a dog"], processor=processor, method="gradcam", top_k=2)
    assert both.labels == ["the white box"] * 2 + ["a dog"] * 2  # each prompt's best, in the order asked
    assert both.scores[2:] == pytest.approx(one.scores[:2], abs=1e-9)


def test_all_detections_cost_one_image_forward_one_text_embedding_and_one_batched_backward(owl, monkeypatch):
    version, model, _, processor = owl
    tower = getattr(model, version)
    images, texts, backwards = [], [], []
    grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: backwards.append(k.get("is_grads_batched")) or grad(*a, **k))
    handles = [tower.vision_model.register_forward_hook(lambda *args: images.append(1)),
               tower.text_model.register_forward_hook(lambda *args: texts.append(1))]
    prompts = ["a blue square", "a cat"]  # a prompt set no other test embedded (they are cached per set)
    try:
        exp = explain(model, PICTURES[version], target=prompts, processor=processor, method="gradcam", top_k=3)
        assert len(exp.indices) == 6 and images == [1] and texts == [1] and backwards == [True]
        explain(model, PICTURES[version], target=prompts, processor=processor, method="gradcam", top_k=3)
        assert images == [1, 1] and texts == [1]  # the prompts' embeddings are computed once per set
    finally:
        for handle in handles:
            handle.remove()


def test_bad_prompts_and_thresholds_are_typed_errors(owl):
    version, model, _, processor = owl
    image = PICTURES[version]
    with pytest.raises(PromptError, match="pass target='a prompt'"):
        explain(model, image, processor=processor)
    with pytest.raises(PromptError, match="is empty"):
        explain(model, image, target=" ", processor=processor)
    with pytest.raises(UnknownLabelError, match="Did you mean 'a dog'"):
        explain(model, image, target="a dgo", labels=PROMPTS, processor=processor)
    with pytest.raises(PromptError, match="truncate=True"):
        explain(model, image, target="a red car " * 8, processor=processor)
    with pytest.raises(NoDetectionError, match="lower threshold="):
        explain(model, image, target="a dog", processor=processor, threshold=0.95)
    with pytest.raises(xai_recipes.XAIRecipesError, match="threshold must be"):
        explain(model, image, target="a dog", processor=processor, threshold=1.5)
    with pytest.raises(PromptError, match="no tokenizer"):
        explain(model, image, target="a dog", processor=processor.image_processor)
    with pytest.raises(TaskNotApplicableError, match="image-guided detection"):
        explain(model, image, target=image, processor=processor)
    with pytest.raises(TaskNotApplicableError, match="detects text prompts"):
        explain(model, image, target="a dog", processor=processor, task="object-detection")


def test_a_prompt_for_a_detector_without_a_text_tower_names_the_fix():
    torch.manual_seed(0)
    backbone = T.ResNetConfig(hidden_sizes=[16, 32], depths=[1, 1], embedding_size=8, layer_type="basic",
                              out_features=["stage2"])
    detr = T.DetrForObjectDetection(T.DetrConfig(
        use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False, d_model=32, encoder_layers=1,
        decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        num_queries=5, num_labels=3, id2label={0: "cat", 1: "dog", 2: "car"})).eval()
    processor = T.DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    with pytest.raises(UnknownLabelError, match="open-vocabulary detector such as OWL-ViT"):
        explain(detr, picture(), target="a red car", processor=processor)
    with pytest.raises(TaskNotApplicableError, match="no text tower.*OWL-ViT, OWLv2"):
        explain(detr, picture(), target="a red car", processor=processor, task="zero-shot-object-detection")


def test_owlv2_pads_a_non_square_picture_and_its_maps_land_on_the_image():
    """OWLv2 pads a non-square image to a square with grey before resizing: the geometry is measured where the image
    is (black and white differ), so the 60×80 picture covers the top 24 of the 32 input rows at 2.5 pixels each. The
    detections are the pipeline's, and each gradcam map on the picture is grad-cam's map of its box-prompt logit on
    the input's image part, resized to the picture (interior pixels; the border ones are bilinear against 0)."""
    import cv2
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, image_processor, processor = random_owl("owlv2")
    image = picture()
    exp = explain(model, image, labels=PROMPTS, processor=processor, method="gradcam", threshold=0.1, top_k=3)
    reference = T.pipeline("zero-shot-object-detection", model=model, tokenizer=TOKENIZER,
                           image_processor=image_processor)(image, candidate_labels=PROMPTS, threshold=0.1)[:3]
    assert exp.labels == [r["label"] for r in reference]
    np.testing.assert_allclose(exp.scores, [r["score"] for r in reference], atol=1e-6)
    boxes = np.array([[r["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] for r in reference])
    assert np.abs(np.array(exp.boxes) - boxes).max() <= 1
    assert (exp.geometry.scale, exp.geometry.offset) == ((2.5, 2.5), (0.75, 0.75))
    assert exp.geometry.input_coverage().sum(1).tolist() == [32] * 24 + [0] * 8  # the padding rows are not the image

    text = TOKENIZER(PROMPTS, padding=True, return_tensors="pt")

    class Flat(torch.nn.Module):  # the model's own forward with every prompt: B×(P·K) logits
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            n = len(x)
            return self.model(input_ids=text["input_ids"].repeat(n, 1), attention_mask=text["attention_mask"].repeat(n, 1),
                              pixel_values=x).logits.flatten(1)

    recipe = xai_recipes.get_recipe("owlvit")
    layer = model.get_submodule(exp.target_layers[0])
    x = image_processor(images=image, return_tensors="pt")["pixel_values"].double()
    with GradCAM(Flat(), [layer], reshape_transform=lambda t: recipe.reshape(t, model, (32, 32))) as cam:
        maps = cam(x.repeat(3, 1, 1, 1), targets=[ClassifierOutputTarget(i) for i in exp.indices])
    resized = np.stack([cv2.resize(m[:24], (80, 60), interpolation=cv2.INTER_LINEAR) for m in maps])
    np.testing.assert_allclose(exp.heatmaps[:, 2:-2, 2:-2], resized[:, 2:-2, 2:-2], atol=1e-4)
    assert exp.heatmaps.std() > 1e-3 and maps[:, 24:].std() > 1e-3  # the padding's part of the maps is left out


def test_a_detector_folder_loads_by_name_with_its_tokenizer(owl, tmp_path):
    version, model, _, processor = owl
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    image = PICTURES[version]
    loaded, loaded_processor = xai_recipes.loading.load(str(tmp_path))
    assert type(loaded) is type(model) and loaded_processor.tokenizer is not None
    by_name = explain(str(tmp_path), image, target=PROMPTS, method="gradcam", top_k=2)
    in_memory = explain(model, image, target=PROMPTS, processor=processor, method="gradcam", top_k=2)
    assert by_name.labels == in_memory.labels and by_name.indices == in_memory.indices
    np.testing.assert_allclose(by_name.scores, in_memory.scores, atol=1e-6)
    np.testing.assert_allclose(by_name.heatmaps, in_memory.heatmaps, atol=1e-4)


def test_the_model_is_given_back_unchanged_also_with_8_threads(owl):
    version, model, _, processor = owl
    image = PICTURES[version]
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    alone = {i: explain(model, image, target=PROMPTS[i % 3], processor=processor, method="gradcam", top_k=3)
             for i in range(3)}
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: explain(model, image, target=PROMPTS[i % 3], processor=processor,
                                                  method="gradcam", top_k=3), range(8)))
    for i, exp in enumerate(results):
        assert exp.indices == alone[i % 3].indices
        np.testing.assert_allclose(exp.heatmaps, alone[i % 3].heatmaps, atol=1e-6)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    model.eval()
