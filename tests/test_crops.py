"""Evaluation geometry: ten crops, centre crop, shorter-side resize, random crops."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from localagg.evaluation.crops import center_crop, random_crop, resize_shorter, ten_crop


def coordinate_images(batch=2, channels=3, height=7, width=9):
    """Float images whose every pixel value encodes (image, channel, row, column)."""
    b, c, y, x = torch.meshgrid(torch.arange(batch), torch.arange(channels), torch.arange(height), torch.arange(width),
                                indexing="ij")
    return (b * 100000 + c * 10000 + y * 100 + x).float()


def test_ten_crop_takes_the_corners_centre_and_their_mirror_images():
    images = coordinate_images()  # 7 x 9; a 4-crop leaves margins 3 and 5 (centre rounding 1.5 -> 2, 2.5 -> 2)
    size = 4
    crops = ten_crop(images, size)
    assert crops.shape == (2, 10, 3, size, size)
    # (top, left in the original image, mirrored); the mirrored five are cut from the flipped image
    expected = [(0, 0, False), (0, 5, False), (3, 0, False), (3, 5, False), (2, 2, False),
                (0, 5, True), (0, 0, True), (3, 5, True), (3, 0, True), (2, 3, True)]
    for j, (top, left, mirrored) in enumerate(expected):
        piece = images[..., top : top + size, left : left + size]
        if mirrored:
            piece = piece.flip(-1)
        assert torch.equal(crops[:, j], piece), f"crop {j}"


def test_ten_crop_and_center_crop_match_torchvision():
    images = torch.rand(3, 3, 10, 13)
    ours = ten_crop(images, 6)
    for i in range(images.shape[0]):
        theirs = TF.ten_crop(images[i], [6, 6])
        for j in range(10):
            assert torch.equal(ours[i, j], theirs[j])
    assert torch.equal(center_crop(images, 6), TF.center_crop(images, [6, 6]))
    assert torch.equal(ours[:, 4], center_crop(images, 6))


@pytest.mark.parametrize("shape,expected", [((20, 30), (16, 24)), ((30, 20), (24, 16)), ((21, 35), (16, 26)), ((16, 40), (16, 40))])
def test_resize_shorter_matches_torchvision_resize(shape, expected):
    images = torch.rand(2, 3, *shape)
    out = resize_shorter(images, 16)
    assert out.shape[-2:] == expected
    assert torch.allclose(out, TF.resize(images, [16], antialias=True), atol=1e-6)


def test_random_crop_cuts_and_mirrors_each_image_at_its_offset():
    images = coordinate_images(batch=3)
    top_left = torch.tensor([[0, 0], [3, 5], [1, 2]])
    flip = torch.tensor([False, True, True])
    crops = random_crop(images, 4, top_left, flip)
    for i, ((top, left), mirrored) in enumerate(zip(top_left.tolist(), flip.tolist())):
        piece = images[i, :, top : top + 4, left : left + 4]
        assert torch.equal(crops[i], piece.flip(-1) if mirrored else piece)


def test_crops_larger_than_the_image_are_refused():
    with pytest.raises(ValueError, match="larger than the images"):
        ten_crop(torch.rand(1, 3, 8, 12), 9)
