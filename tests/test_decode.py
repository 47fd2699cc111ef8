"""Decoding file datasets: the crop boxes, reduced-size JPEG decoding, device decoding, and
training on a JPEG tree with persistent workers (resume and worker count change nothing)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from localagg.data import decode
from localagg.data.augment import AugmentSpec
from localagg.data.datasets import FileImages
from localagg.data.real_classification import prepare_imagenet
from localagg.models.config import ModelConfig
from localagg.training.loop import Trainer
from localagg.training.methods.instance_recognition import InstanceRecognition, IRConfig

SCALE, RATIO = (0.2, 1.0), (3 / 4, 4 / 3)


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth, photo-like RGB image (a JPEG of noise would make every resampling look different)."""
    from skimage import data

    base = [data.astronaut(), data.coffee(), data.chelsea()][seed % 3]
    return Image.fromarray(base).resize((width, height), Image.BICUBIC)


def test_crop_boxes_follow_random_resized_crop_and_fall_back_to_a_centre_crop():
    """Inside the image, within the scale and ratio ranges, a function of the draws, and
    distributed as torchvision's RandomResizedCrop.get_params (its rejection of boxes that do
    not fit included: the mean area of a 4:3 image is below the range's midpoint)."""
    from torchvision.transforms import RandomResizedCrop

    n = 4000
    draws = decode.draw_crops(n, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    for width, height in ((500, 375), (333, 500), (64, 64)):
        boxes = [decode.crop_box(width, height, u, SCALE, RATIO) for u in draws]
        for x0, y0, w, h in boxes:
            assert 0 <= x0 and 0 <= y0 and x0 + w <= width and y0 + h <= height and w > 0 and h > 0
        assert boxes == [decode.crop_box(width, height, u, SCALE, RATIO) for u in draws]
        theirs = [RandomResizedCrop.get_params(torch.empty(1, height, width), list(SCALE), list(RATIO)) for _ in range(n)]
        ours = np.array([(w * h / (width * height), w / h, (x0 + w / 2) / width) for x0, _, w, h in boxes])
        tv = np.array([(w * h / (width * height), w / h, (j + w / 2) / width) for _, j, h, w in theirs])
        assert ours[:, 0].min() >= 0.19 and ours[:, 0].max() <= 1.0
        assert ours[:, 1].min() >= 0.70 and ours[:, 1].max() <= 1.43  # 3/4 - 4/3 up to rounding to pixels
        # means of area, aspect and centre agree within 4 standard errors
        np.testing.assert_allclose(ours.mean(0), tv.mean(0), atol=0, rtol=0.03)
    # no attempt fits a 1000 x 10 image with ratio 3/4-4/3: torchvision's fallback, the centre crop clamped
    assert decode.crop_box(1000, 10, draws[0], SCALE, RATIO) == ((1000 - 13) // 2, 0, 13, 10)


def test_eval_box_is_resize_then_centre_crop():
    x0, y0, w, h = decode.eval_box(500, 375, 256, 224)
    assert (w, h) == pytest.approx((224 * 375 / 256, 224 * 375 / 256))
    assert (x0 + w / 2, y0 + h / 2) == pytest.approx((250, 187.5))


def test_reduced_size_decoding_keeps_the_pixels_of_the_crop(tmp_path):
    """A crop small in the output and large in the file is decoded at 1/2 or 1/4 of the size
    (JPEG DCT scaling) and looks like the full decode resampled."""
    path = tmp_path / "big.JPEG"
    _photo(1600, 1200).save(path, quality=92)
    box = (100, 80, 1200, 1000)
    with Image.open(path) as im:
        im.draft("RGB", (math.ceil(1600 * 224 / 1200), math.ceil(1200 * 224 / 1000)))
        assert im.size[0] < 1600  # the draft applies to this box
    fast = decode.decode_box(path, box, 224).float()
    with Image.open(path) as im:
        full = im.convert("RGB").resize((224, 224), Image.BILINEAR, box=(100, 80, 1300, 1080))
    full = torch.from_numpy(np.array(full)).permute(2, 0, 1).float()
    assert (fast - full).abs().mean() < 2.0  # grey levels of 255


def test_device_decoding_gives_the_workers_crops(tmp_path):
    """The main-process path (bytes from the workers, torchvision's decoder on the device; here
    the CPU) against the workers' PIL path, image by image; a PNG under a JPEG name is decoded
    by the worker."""
    paths = []
    for i, (w, h) in enumerate([(500, 375), (375, 500), (640, 480)]):
        paths.append(f"{i}.JPEG")
        _photo(w, h, seed=i).save(tmp_path / paths[-1], quality=92)
    _photo(300, 300).save(tmp_path / "png.JPEG", format="PNG")
    paths.append("png.JPEG")
    labels = np.zeros(len(paths), dtype=np.int64)
    workers = FileImages(tmp_path, paths, labels, 96, train=True, scale=SCALE, ratio=RATIO)
    device = FileImages(tmp_path, paths, labels, 96, train=True, scale=SCALE, ratio=RATIO, for_device=True)
    draws = decode.draw_crops(len(paths), torch.Generator().manual_seed(1))
    items = [device[(i, draws[i])] for i in range(len(paths))]
    assert items[-1][0].pixels is not None and all(item.pixels is None for item, _, _ in items[:-1])
    decoded = decode.decode_on_device([item for item, _, _ in items], 96, torch.device("cpu"))
    other = decode.draw_crops(len(paths), torch.Generator().manual_seed(2))
    for i in range(len(paths)):
        expected = workers[(i, draws[i])][0]
        assert decoded[i].shape == expected.shape == (3, 96, 96)
        # the same crop, up to the decoders (reduced-size decoding in the workers) and the resamplers:
        # a few grey levels on average, where another crop of the same image differs by tens
        assert (decoded[i].float() - expected.float()).abs().mean() < 6.0, i
        assert (workers[(i, other[i])][0].float() - expected.float()).abs().mean() > 15.0, i


def _jpeg_tree(root, n_per_class: int = 12):
    for split, n in (("train", n_per_class), ("val", 4)):
        for c, wnid in enumerate(("n001", "n002")):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                _photo(180 + 20 * (i % 3), 150 + 10 * (i % 4), seed=c + i).save(folder / f"{wnid}_{i}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def jpeg_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpeg")
    prepare_imagenet(_jpeg_tree(root / "imagenet"), root / "object", check_images=False, workers=1)
    return root / "object"


MODEL = ModelConfig(arch="resnet18", stem="small", embedding_dim=8)
AUG = AugmentSpec(crop_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)


def _trainer(data, ck, **kw):
    cfg = IRConfig(**{"epochs": 2, "batch_size": 8, "knn_k": 4, "num_negatives": 8, "device": "cpu", "threads": 1,
                      "lr": 0.05, **kw})
    return Trainer(InstanceRecognition(cfg), MODEL, AUG, data, ck, val_dir=data)


@pytest.mark.slow
def test_training_on_jpeg_files_with_persistent_workers_resumes_exactly_and_ignores_the_worker_count(jpeg_data,
                                                                                                       tmp_path):
    """The crops come from the sampler: 0 or 2 workers (persistent across the epochs) train the
    same model, and a run stopped mid-epoch and resumed ends bit-identical to it."""
    full = _trainer(jpeg_data, tmp_path / "full", num_workers=2)
    full.run()
    inline = _trainer(jpeg_data, tmp_path / "inline", num_workers=0)
    inline.run()
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, inline.model.state_dict()[name]), name
    cut = _trainer(jpeg_data, tmp_path / "cut", num_workers=2, checkpoint_every_steps=1)
    assert cut.run(stop_after_steps=4).interrupted  # 3 steps per epoch: stops inside epoch 2
    resumed = _trainer(jpeg_data, tmp_path / "cut", num_workers=2, checkpoint_every_steps=1)
    resumed.run()
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert torch.equal(full.method.bank.memory, resumed.method.bank.memory)


def test_device_decoding_trains_from_the_same_crops(jpeg_data, tmp_path):
    """jpeg_decode: device (here the CPU's decoder) trains through the main-process path; its
    first batch is the workers' first batch up to the decoders' rounding."""
    workers = _trainer(jpeg_data, tmp_path / "w", epochs=1, jpeg_decode="workers")
    device = _trainer(jpeg_data, tmp_path / "d", epochs=1, jpeg_decode="device")
    from localagg.training.batches import GlobalBatches

    batches = GlobalBatches(device.num_items, 0, 8, 0, device.dist)
    a = next(iter(workers._train_batches(batches, 0, 0)))
    b = next(iter(device._train_batches(batches, 0, 0)))
    assert torch.equal(a[2], b[2]) and (a[0].float() - b[0].float()).abs().mean() < 6.0
    assert device.run().epochs == 1 and device.protocol()["config"]["jpeg_decode"] == "device"


def _png_header(path, width: int, height: int) -> None:
    """A PNG whose header says width x height (no pixel data needed to read the size)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_the_size_policy_decodes_big_jpegs_quietly_and_names_a_file_above_it(tmp_path):
    """A 10,000 x 10,000 JPEG (over PIL's 89 Mpx warning) decodes without a warning, at a reduced
    DCT scale; a 20,000 x 20,000 image (PIL's DecompressionBombError, a 65-line traceback) is
    one message naming the file, at `prepare`'s check and when a stage reads it."""
    import warnings

    from localagg.data.image_check import check_image
    from localagg.errors import UserError

    big = tmp_path / "big.JPEG"
    Image.new("L", (10_000, 10_000), 128).save(big, quality=50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would fail here
        crop = decode.decode_box(big, (0, 0, 10_000, 10_000), 32)
        assert check_image(big) is None
    assert crop.shape == (3, 32, 32) and int(crop.float().mean().round()) == 128
    bomb = tmp_path / "bomb.png"
    _png_header(bomb, 20_000, 20_000)
    assert check_image(bomb).startswith("the image is 20,000 x 20,000 pixels, more than the 268,435,456")
    ds = FileImages(tmp_path, ["bomb.png"], np.zeros(1), 32)
    with pytest.raises(UserError, match=r"bomb.png: the image is 20,000 x 20,000 pixels.*prepare.object.exclude"):
        ds[0]
