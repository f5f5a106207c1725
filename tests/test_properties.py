"""Property-based tests (Hypothesis): any image-like value and any target gives a typed error or a
valid explanation (finite heatmaps in [0, 1] at the image's size), in bounded time, the model untouched.

Derandomised, so CI sees the same examples every run (exploration is the fuzzer's job:
tests/test_hostile_fuzz.py); ``max_examples`` keeps the file around 30 s on two cores.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TRAINED
from hostile import LABELS, bounded, encode, model_state, picture, state_differences
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from transformers import AutoImageProcessor, AutoModelForImageClassification

from xai_recipes import XAIRecipesError, explain

SETTINGS = settings(deadline=None, derandomize=True, database=None, max_examples=60,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
LIMIT = 60.0

DTYPES = [np.uint8, np.uint16, np.int8, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_,
          np.complex64, np.dtype(">u2"), np.dtype("U1")]
#: Mostly image-like (H×W or H×W×C, C in 1/3/4, sides 0..40), some of any rank.
SHAPES = st.one_of(
    st.tuples(st.integers(0, 40), st.integers(0, 40)).flatmap(
        lambda hw: st.sampled_from([hw, (*hw, 1), (*hw, 3), (*hw, 4)])),
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
)
ARRAYS = st.tuples(st.sampled_from(DTYPES), SHAPES).flatmap(lambda ds: hnp.arrays(ds[0], ds[1]))
VALID = [encode(picture(), fmt) for fmt in ("PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP")]
#: Random bytes, and valid files with a random slice overwritten or cut (the header survives).
BYTES = st.one_of(
    st.binary(max_size=512),
    st.tuples(st.sampled_from(VALID), st.floats(0, 1), st.binary(max_size=64), st.booleans()).map(
        lambda t: t[0][: int(len(t[0]) * t[1])] if t[3] else
        t[0][: int(len(t[0]) * t[1])] + t[2] + t[0][int(len(t[0]) * t[1]) + len(t[2]):]),
)
ONE_TARGET = st.one_of(st.integers(-2**70, 2**70), st.integers(-2, 6), st.sampled_from(LABELS), st.text(max_size=8),
                       st.booleans(), st.floats(), st.binary(max_size=4))
TARGETS = st.one_of(st.none(), ONE_TARGET, st.lists(ONE_TARGET, max_size=5))


@pytest.fixture(scope="module")
def resnet():
    model = AutoModelForImageClassification.from_pretrained(TRAINED / "resnet")
    return model.train(), AutoImageProcessor.from_pretrained(TRAINED / "resnet")


def typed_or_valid(model, processor, image, target=None, size=None):
    """The property. Returns the explanation (None after a typed error)."""
    before = model_state(model)
    result, error, elapsed = bounded(lambda: explain(model, image, processor=processor, target=target), LIMIT)
    assert elapsed < LIMIT
    assert not state_differences(before, model_state(model))
    if error is not None:
        assert isinstance(error, XAIRecipesError), f"untyped {type(error).__name__}: {error}"
        event(type(error).__name__)  # pytest --hypothesis-show-statistics: how the examples ended
        return None
    t, h, w = result.heatmaps.shape
    assert np.isfinite(result.heatmaps).all() and result.heatmaps.min() >= 0 and result.heatmaps.max() <= 1
    assert (w, h) == result.image.size and len(result.indices) == t
    if size is not None:
        assert (h, w) == size
    event("explained")
    return result


@SETTINGS
@given(image=ARRAYS)
def test_any_array(resnet, image):
    exp = typed_or_valid(*resnet, image, size=image.shape[:2] if image.ndim >= 2 else None)
    if exp is not None:
        assert image.ndim in (2, 3) and min(image.shape[:2]) >= 2


@SETTINGS
@given(data=BYTES)
def test_any_bytes(resnet, data):
    typed_or_valid(*resnet, data)


@SETTINGS
@given(target=TARGETS)
def test_any_target(resnet, target):
    exp = typed_or_valid(*resnet, np.asarray(picture()), target)
    if exp is None:
        return
    items = [] if target is None else target if isinstance(target, list) else [target]
    assert len(exp.indices) == (len(items) or 1)
    for item, index in zip(items, exp.indices):
        if isinstance(item, int):
            assert index == item and not isinstance(item, bool)
        else:
            assert isinstance(item, str) and LABELS[index] == item.strip().lower()
