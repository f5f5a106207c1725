"""Cross-check of xai_recipes' explanation-quality metrics against Quantus 0.6 (Hedström et al., JMLR 2023).

Setting: the trained tiny ResNet of ``tests/trained/resnet`` on 8 synthetic 64×64 samples
(``make_set(seed=5, n=8, sizes=[(64, 64)])``, two per class) and its own ``ConvNextImageProcessor``
with ``do_resize=False``: a 64×64 image then *is* the model input (rescale and normalise only, no
resize/crop; the geometry is the identity, checked), so GradCAM maps from ``xai_recipes.explain``,
the object boxes, the images we perturb and the tensors Quantus perturbs all share one pixel grid.
Quantus gets the same model as a plain ``nn.Module`` (``LogitsModel``: pixel values → logits).

* **Pointing game** — ours ``pointing(map, box, tolerance=0)`` vs ``quantus.PointingGame()`` (defaults:
  ``weighted=False``, ``abs=False``, ``normalise=True`` = division by the max, which keeps the peak).
  Exact agreement per (map, box) pair, on the matched pairs and on maps paired with another
  sample's box (so that hits and misses are both checked). Caveat, asserted separately: on *tied*
  maxima Quantus scores a hit if **any** maximum lies on the mask, ours looks at the first maximum
  in row-major order (``np.argmax``); GradCAM maps here have a unique maximum (checked). An empty
  mask gives NaN in Quantus, 0 in ours (not exercised).
* **Energy** — ours ``energy`` (share of the non-negative map's mass on the object) vs
  ``quantus.RelevanceMassAccuracy(normalise=False, abs=False)`` (Σ map·mask / Σ map, no clipping).
  The definitions coincide for non-negative maps, which GradCAM's are (checked); for signed maps
  ours clips negatives, Quantus would need ``abs=True`` (|map|), which is a different quantity.
  Tolerance 1e-6: both are one float32 ratio of sums (measured difference ≤ 3e-8).
* **Deletion** — ours ``perturbation_curves`` + ``probabilities`` + ``auc`` (16 steps of 256 pixels,
  most relevant first, replaced by the Gaussian-blurred image, σ = 10) vs ``quantus.PixelFlipping``
  configured to the same: ``perturb_func`` replaces the flipped features with the *processed
  blurred image* (our own fully-deleted image, ``deletion[-1]``), ``normalise=False, abs=False``,
  ``softmax=True`` (probabilities, as ours), and ``features_in_step = 3·64·64/16``: Quantus broadcasts
  the 1-channel map over the 3 channels and flips C·H·W features, so 768 features are the same
  256 whole pixels. Quantus 0.6 asserts ``features_in_step`` divides H·W (not C·H·W), and no
  multiple of 3 divides 4096, hence the subclass that only relaxes that assert.
  Ties: ours breaks ties by position (stable sort), Quantus' ``np.argsort`` is unstable, and
  GradCAM maps have many tied (zero) pixels, so both get the same tie-free map, the rank order of
  our stable sort (ours is checked to perturb identically on it). Quantus' curve has no
  unperturbed point and its AUC helper (``np.trapz``, dx=1) is gone from NumPy 2.4 (installed here), so
  the AUC is ours (``auc``, trapezoids over [0, 1]) over ``[p(x)] + quantus_curve``.
  Tolerance 1e-5 on every per-step probability and on the AUC: the perturbed inputs are identical
  (same pixels, same baseline, same per-pixel normalisation), the model is in eval mode (BatchNorm
  does not depend on the batch), so only float32 summation order across different batch
  compositions can differ (~1e-7); measured difference 0.0. With the raw, tied maps the
  curves differ by up to 0.014 and the AUCs by 0.002 (different order among tied pixels).
* **MPRT** (``xai_recipes.sanity.parameter_randomisation`` vs ``quantus.MPRT``, both cascading
  from the head, Spearman on the maps): not the same randomisation (ours: top-level blocks,
  BatchNorm running statistics kept, seed 0; Quantus: every module with ``reset_parameters``,
  BatchNorm statistics reset too, seed 42), so only the verdict is compared: GradCAM's rank
  correlation with the trained map falls from 1 to below 0.5 in both (measured at the last step:
  ours 0.04, Quantus 0.21; Quantus' minimum over the cascade 0.03).

Quantus declares ``opencv-python``, which must not be installed next to the project's
``opencv-python-headless`` (both own ``cv2``): install it with
``pip install --no-deps quantus==0.6.0`` (its other runtime needs come with ``.[dev]``). This
module is skipped only when quantus is not installed (an installed quantus that fails to import
is an error). Runtime ~18 s on 2 CPU cores (up to ~30 s while other jobs share them).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from synthetic import make_set

INSTALL = '.venv/bin/pip install -e ".[dev]" && .venv/bin/pip install --no-deps quantus==0.6.0'
try:
    import quantus
except ModuleNotFoundError as exc:
    if exc.name != "quantus":  # quantus is there but one of its own dependencies is not: a broken install
        raise ImportError(f"quantus is installed but cannot be imported ({exc}); reinstall with: {INSTALL}") from exc
    pytest.skip(f"quantus is not installed, the cross-check against Quantus 0.6 is skipped; install it with: {INSTALL} "
                "(--no-deps: quantus declares opencv-python, which would clash with opencv-python-headless)",
                allow_module_level=True)

import xai_recipes  # noqa: E402
from xai_recipes.capture import LogitsModel  # noqa: E402
from xai_recipes.evaluation import auc, energy, perturbation_curves, pointing, probabilities  # noqa: E402

STEPS = 16
SIDE = 64


@pytest.fixture(scope="module")
def setup(trained_dir):
    from transformers import AutoImageProcessor

    from xai_recipes.loading import load

    path = trained_dir / "resnet"
    model, _ = load(str(path))
    processor = AutoImageProcessor.from_pretrained(str(path), do_resize=False)  # the image is the model input
    recipe = xai_recipes.find_recipe(model)
    samples = make_set(seed=5, n=8, sizes=[(SIDE, SIDE)])
    x = np.concatenate([pixel_values(processor, s.image) for s in samples])
    y = np.array([s.label for s in samples])
    explanations = [xai_recipes.explain(model, s.image, method="gradcam", target=s.label, processor=processor)
                    for s in samples]
    for e in explanations:
        assert e.geometry.scale == (1.0, 1.0) and e.geometry.offset == (0.0, 0.0)
        assert tuple(e.geometry.input_size) == (SIDE, SIDE)
    maps = np.stack([e.heatmaps[0] for e in explanations])
    masks = np.zeros(maps.shape, bool)
    for mask, s in zip(masks, samples):
        x0, y0, x1, y1 = s.box
        mask[y0:y1 + 1, x0:x1 + 1] = True
    return {"model": model, "processor": processor, "recipe": recipe, "samples": samples, "x": x, "y": y,
            "maps": maps, "masks": masks, "net": LogitsModel(model, recipe).eval()}


def pixel_values(processor, image) -> np.ndarray:
    return processor(images=image, return_tensors="np")["pixel_values"]


def pairs(setup):
    """(map, mask) pairs: each map with its own box, then with the next sample's box."""
    maps, masks = setup["maps"], setup["masks"]
    return np.concatenate([maps, maps]), np.concatenate([masks, np.roll(masks, -1, axis=0)])


def test_importing_quantus_leaves_the_headless_cv2_working():
    """quantus imports cv2; only opencv-python-headless may provide it (two wheels owning cv2 clash)."""
    from importlib import metadata

    import cv2

    assert quantus.__version__.startswith("0.6"), quantus.__version__
    blurred = cv2.GaussianBlur(np.full((9, 9), 0.5, np.float32), (0, 0), 2.0)
    assert np.allclose(blurred, 0.5)
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.distribution("opencv-python")  # pip install quantus without --no-deps would bring it


def test_pointing_game_agrees_with_quantus(setup):
    maps, masks = pairs(setup)
    assert all((m == m.max()).sum() == 1 for m in maps)  # unique peaks: tie handling plays no part
    ours = np.array([pointing(m, r, tolerance=0) for m, r in zip(maps, masks)])
    theirs = quantus.PointingGame(disable_warnings=True)(
        model=None, x_batch=np.concatenate([setup["x"]] * 2), y_batch=np.concatenate([setup["y"]] * 2),
        a_batch=maps[:, None], s_batch=masks[:, None].astype(np.float32), channel_first=True)
    theirs = np.asarray(theirs, dtype=float)
    np.testing.assert_array_equal(ours, theirs)
    assert ours[:8].mean() >= 0.75 and 0 < ours.mean() < 1, ours  # hits and misses both compared

    # documented difference: tied maxima (first in row-major order off the mask, second on it)
    tied, mask = np.zeros((1, 8, 8), np.float32), np.zeros((1, 8, 8), bool)
    tied[0, 0, 0] = tied[0, 5, 5] = 1.0
    mask[0, 4:, 4:] = True
    hit = quantus.PointingGame(disable_warnings=True)(
        model=None, x_batch=np.zeros((1, 3, 8, 8), np.float32), y_batch=np.zeros(1, int), a_batch=tied[:, None],
        s_batch=mask[:, None].astype(np.float32), channel_first=True)
    assert pointing(tied[0], mask[0], tolerance=0) == 0.0 and bool(hit[0]) is True


def test_energy_agrees_with_quantus_relevance_mass_accuracy(setup):
    maps, masks = pairs(setup)
    assert maps.min() >= 0  # GradCAM maps are non-negative: our clipping is a no-op
    ours = np.array([energy(m, r) for m, r in zip(maps, masks)])
    theirs = quantus.RelevanceMassAccuracy(normalise=False, abs=False, disable_warnings=True)(
        model=None, x_batch=np.concatenate([setup["x"]] * 2), y_batch=np.concatenate([setup["y"]] * 2),
        a_batch=maps[:, None], s_batch=masks[:, None].astype(np.float32), channel_first=True)
    np.testing.assert_allclose(ours, np.asarray(theirs, dtype=float), rtol=0, atol=1e-6)
    assert ours[:8].mean() > ours[8:].mean()  # the own box holds more of the map than another's


class WholePixelFlipping(quantus.PixelFlipping):
    """Quantus' PixelFlipping, with its ``features_in_step`` check made against the C·H·W features it
    actually flips (Quantus 0.6 checks H·W), so that a step can flip whole RGB pixels."""

    def custom_preprocess(self, x_batch: np.ndarray, **kwargs) -> None:
        assert x_batch[0].size % self.features_in_step == 0, (x_batch.shape, self.features_in_step)


def replace_by_baseline(arr: np.ndarray, indices: np.ndarray, baseline: np.ndarray, **kwargs) -> np.ndarray:
    """Quantus perturb_func: the flipped features take the baseline image's values (N × C·H·W)."""
    assert arr.shape == baseline.shape
    out = arr.copy()
    rows = np.arange(arr.shape[0])[:, None]
    out[rows, indices] = baseline[rows, indices]
    return out


def rank_map(heatmap: np.ndarray) -> np.ndarray:
    """A tie-free map with the same order as our stable sort of ``heatmap`` (ties by position)."""
    order = np.argsort(-heatmap.ravel(), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return ((order.size - rank) / order.size).reshape(heatmap.shape).astype(np.float32)


def test_deletion_agrees_with_quantus_pixel_flipping(setup):
    model, processor, recipe = setup["model"], setup["processor"], setup["recipe"]
    ours_curves, blurred, ranked = [], [], []
    for heatmap, s in zip(setup["maps"], setup["samples"]):
        deletion, _ = perturbation_curves(heatmap, s.image, STEPS)
        tie_free, _ = perturbation_curves(rank_map(heatmap), s.image, STEPS)
        assert all(np.array_equal(a, b) for a, b in zip(deletion, tie_free))  # the same curve as on the map
        ours_curves.append(probabilities(model, processor, recipe, deletion, s.label))
        blurred.append(deletion[-1])  # everything deleted: our blurred baseline
        ranked.append(rank_map(heatmap))
    ours_curves = np.array(ours_curves)  # N × (STEPS + 1), the first point the unperturbed image
    x, y, net = setup["x"], setup["y"], setup["net"]
    baseline = np.concatenate([pixel_values(processor, b) for b in blurred]).reshape(len(x), -1)
    metric = WholePixelFlipping(features_in_step=x[0].size // STEPS, perturb_func=replace_by_baseline,
                                perturb_func_kwargs={"baseline": baseline}, normalise=False, abs=False,
                                return_auc_per_sample=False, disable_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = np.array(metric(model=net, x_batch=x, y_batch=y, a_batch=np.stack(ranked)[:, None],
                                 channel_first=True, softmax=True, device="cpu", batch_size=64))
    assert theirs.shape == (len(x), STEPS)  # one point per step, none for the unperturbed image
    with torch.no_grad():
        start = torch.softmax(net(torch.from_numpy(x)), -1).numpy()[np.arange(len(x)), y]
    np.testing.assert_allclose(ours_curves[:, 0], start, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours_curves[:, 1:], theirs, rtol=0, atol=1e-5)
    ours_auc = np.array([auc(c) for c in ours_curves])
    their_auc = np.array([auc(np.r_[p, c]) for p, c in zip(start, theirs)])
    np.testing.assert_allclose(ours_auc, their_auc, rtol=0, atol=1e-5)
    assert ours_curves[:, -1].mean() < ours_curves[:, 0].mean()  # deleting the evidence lowers the probability


def test_mprt_rank_correlation_falls_in_both(setup):
    """GradCAM passes the model-parameter randomisation test in ours and in Quantus' MPRT."""
    from xai_recipes.sanity import parameter_randomisation

    processor, x, net = setup["processor"], setup["x"], setup["net"]
    images = [s.image for s in setup["samples"]]
    with torch.no_grad():
        predicted = net(torch.from_numpy(x)).argmax(-1).numpy()  # both explain the trained model's top class
    report = parameter_randomisation(setup["model"], images, method="gradcam", processor=processor, seed=0)
    assert report.targets == [[int(p)] for p in predicted]

    classes = sorted(set(int(p) for p in predicted))
    mean, std = np.asarray(processor.image_mean), np.asarray(processor.image_std)

    def to_pixels(inputs: np.ndarray) -> np.ndarray:
        """Model input (N×3×H×W, normalised) back to the uint8 images ``explain`` takes."""
        return np.clip(np.rint((np.asarray(inputs).transpose(0, 2, 3, 1) * std + mean) * 255), 0, 255).astype(np.uint8)

    np.testing.assert_array_equal(to_pixels(x), np.stack(images))  # exact round trip

    def gradcam(model, inputs, targets, **kwargs):
        """Quantus explain_func: our GradCAM on the (randomised) model, one batched call for all classes."""
        explained = xai_recipes.explain(model.model, list(to_pixels(inputs)), method="gradcam", target=classes,
                                        processor=processor)
        return np.stack([e.heatmaps[list(e.indices).index(int(t))] for e, t in zip(explained, targets)])[:, None]

    mprt = quantus.MPRT(layer_order="top_down", seed=42, abs=True, normalise=True, disable_warnings=True)
    with torch.random.fork_rng(), warnings.catch_warnings():  # Quantus seeds torch's global RNG
        warnings.simplefilter("ignore")
        scores = mprt(model=net, x_batch=x, y_batch=predicted, a_batch=None, explain_func=gradcam, channel_first=True,
                      softmax=False, device="cpu", batch_size=64)
    cascade = {layer: float(np.mean(v)) for layer, v in scores.items()}
    assert cascade.pop("original") > 0.99  # the trained maps reproduce themselves
    theirs = list(cascade.values())
    assert len(theirs) > len(report.correlation) and list(cascade)[0] == "model.classifier.1"  # head first
    assert report.passed and report.correlation[-1] < 0.5, str(report)
    assert theirs[-1] < 0.5 and min(theirs) < 0.5, cascade
