"""The embedded sets on a canvas: each item resized within the scale range, placed whole at a
random position, the same bytes for the same seed; params that cannot fit are refused."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from localagg.data.embedded import place_on_canvas
from stages.params import ObjectSet, TransferSet


def test_items_are_resized_within_the_range_and_placed_whole():
    items = np.full((50, 28, 28), 200, dtype=np.uint8)  # a bright square: its footprint is its size
    out = place_on_canvas(items, 40, (0.9, 1.3), seed=3)
    assert out.shape == (50, 40, 40) and out.dtype == np.uint8
    sides = [int(np.sqrt((im > 0).sum())) for im in out]
    assert min(sides) >= round(28 * 0.9) - 1 and max(sides) <= round(28 * 1.3)
    positions = {tuple(np.argwhere(im > 0).min(0)) for im in out}
    assert len(positions) > 20  # not all at the same place
    assert np.array_equal(out, place_on_canvas(items, 40, (0.9, 1.3), seed=3))
    assert not np.array_equal(out, place_on_canvas(items, 40, (0.9, 1.3), seed=4))


def test_a_canvas_smaller_than_the_largest_item_or_on_real_data_is_refused():
    with pytest.raises(ValidationError, match="canvas 32 is smaller than the largest item"):
        ObjectSet(root="/x", canvas=32, scale_range=(0.9, 1.3))
    with pytest.raises(ValidationError, match="canvas apply to fashion_mnist only"):
        ObjectSet(source="imagenet", root="/x", canvas=40)
    with pytest.raises(ValidationError, match="canvas applies to mnist_5k only"):
        TransferSet(source="places205", root="/x", canvas=40)
