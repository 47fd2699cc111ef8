"""Linear readout of a frozen backbone (evaluation/linear.py) and loading backbones (transfer.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from localagg.data.augment import AugmentSpec
from localagg.data.datasets import ArrayImages, FileImages
from localagg.errors import UserError
from localagg.evaluation.heads import LayerReadout, pooled_dim
from localagg.evaluation.linear import train_linear_readout, train_linear_readouts
from localagg.evaluation.readout_config import LinearReadoutConfig
from localagg.evaluation.transfer import knn_eval, load_backbone, network_space_fn, pixel_space_fn
from localagg.models.backbone import READOUT_LAYERS, EmbeddingNet, RawPixels
from localagg.runtime import checkpoint as ckpt
from localagg.models.config import ModelConfig

from .conftest import gloo_worker

SIZE = 32
SPEC = AugmentSpec(crop_size=28)


def intensity_classes(n, noise=4.0, seed=0, num_classes=4):
    """Grey SIZE x SIZE images whose class sets their mean intensity: linearly separable at every layer."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    images = 40 + 50 * labels[:, None, None] + rng.normal(0, noise, (n, SIZE, SIZE))
    return ArrayImages(np.clip(images, 0, 255).astype(np.uint8), labels)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return EmbeddingNet("resnet18", "imagenet", 8)


def config(**kw):
    base = dict(epochs=1, batch_size=16, crop_size=28, device="cpu")  # eval_resize: round(28 * 256 / 224) = 32
    return LinearReadoutConfig(**(base | kw))


class Recorder:
    def __init__(self):
        self.rows = []

    def log_epoch(self, epoch, metrics):
        self.rows.append((epoch, dict(metrics)))


def test_readout_reaches_full_accuracy_on_linearly_separable_classes():
    logger = Recorder()
    cfg = config(epochs=4, train_augment="resize_random_crop_flip", ten_crop=True)
    result = train_linear_readout(tiny_model(), intensity_classes(48), intensity_classes(16, seed=1), 4, cfg, SPEC,
                                  logger=logger)
    for layer in READOUT_LAYERS:
        scores = result["layers"][layer]
        assert scores["top1"] == 100.0 and scores["top1_10crop"] == 100.0, (layer, scores)
        assert scores["top5"] == scores["top5_10crop"] == 100.0
    assert [epoch for epoch, _ in logger.rows] == [1, 2, 3, 4]
    assert set(logger.rows[0][1]) == {f"loss_{layer}" for layer in READOUT_LAYERS} | {"lr"}
    assert logger.rows[-1][1]["loss_conv1"] < logger.rows[0][1]["loss_conv1"]
    assert [row["epoch"] for row in result["history"]] == [1, 2, 3, 4]


# imagenet stem: conv1 at 1/2, conv2 at 1/4 (after the max-pool) ... conv5 at 1/32; small stem: 1, 1, 1/2, 1/4, 1/8
EXPECTED_DIMS = {
    ("resnet18", "imagenet", 224): [7744, 7744, 8192, 6400, 8192],
    ("resnet50", "imagenet", 224): [7744, 6400, 8192, 4096, 8192],
    ("resnet18", "imagenet", 28): [7744, 3136, 2048, 1024, 512],
    ("resnet50", "imagenet", 28): [7744, 6400, 8192, 4096, 2048],
    ("resnet18", "small", 28): [7744, 7744, 8192, 6400, 8192],
    ("resnet50", "small", 28): [7744, 6400, 8192, 4096, 8192],
}


@pytest.mark.parametrize("arch,stem,size", list(EXPECTED_DIMS))
def test_pooled_feature_sizes_follow_the_documented_rule(arch, stem, size):
    with torch.device("meta"):  # shapes only: no memory, no compute
        model = EmbeddingNet(arch, stem, 8)
        maps = model.features(torch.empty(2, 3, size, size))
        dims = []
        for layer in READOUT_LAYERS:
            c, h, w = maps[layer].shape[1:]
            head = LayerReadout(c, h, w, 10, 9000)
            pooled = head.pool(maps[layer])
            s = min(h, max(s for s in range(1, 200) if c * s * s <= 9000 or s == 1))
            assert pooled.shape == (2, c * s * s) and head.dim == c * s * s == pooled_dim(c, h, 9000)
            dims.append(head.dim)
    assert dims == EXPECTED_DIMS[(arch, stem, size)]


def test_readout_leaves_backbone_weights_and_batch_norm_statistics_unchanged():
    model = tiny_model()
    model.train()  # the readout must switch batch norm to eval itself
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_linear_readout(model, intensity_classes(32), intensity_classes(8, seed=1), 4,
                         config(train_augment="random_resized_crop_flip", ten_crop=False), SPEC)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert not any(p.requires_grad for p in model.parameters())


def test_cached_and_uncached_features_give_the_same_readout():
    train, val = intensity_classes(40, noise=60.0), intensity_classes(16, noise=60.0, seed=1)
    runs = [train_linear_readout(tiny_model(), train, val, 4,
                                 config(epochs=2, lr_drops=[1], train_augment="none", cache_features=cached, ten_crop=False),
                                 SPEC)
            for cached in (False, True)]
    uncached, cached = runs
    assert 0 < uncached["history"][0]["loss_conv5"]
    assert [r["lr"] for r in cached["history"]] == pytest.approx([0.01, 0.001])
    for a, b in zip(uncached["history"], cached["history"]):
        assert a == pytest.approx(b, rel=1e-4)
    assert uncached["layers"] == cached["layers"]
    assert uncached["feature_dims"] == cached["feature_dims"]


def test_readout_is_deterministic_for_a_seed_and_changes_with_it():
    train, val = intensity_classes(32, noise=60.0), intensity_classes(8, noise=60.0, seed=1)
    cfg = config(train_augment="random_resized_crop_flip", ten_crop=False, layers=["conv1", "conv3"])
    first, again = (train_linear_readout(tiny_model(), train, val, 4, cfg, SPEC) for _ in range(2))
    other = train_linear_readout(tiny_model(), train, val, 4, cfg.model_copy(update={"seed": 1}), SPEC)
    assert first == again
    assert first["history"] != other["history"]
    assert set(first["layers"]) == {"conv1", "conv3"}


def test_file_datasets_read_through_a_loader_give_the_arrays_result(tmp_path):
    arrays = intensity_classes(16, noise=60.0)
    paths = []
    for i, img in enumerate(arrays.images):
        paths.append(f"{i}.png")
        Image.fromarray(img).save(tmp_path / paths[-1])
    cfg = config(train_augment="resize_random_crop_flip", layers=["conv1"])
    files = FileImages(tmp_path, paths, arrays.labels.numpy(), cfg.resize, resize=cfg.resize)
    from_arrays = train_linear_readout(tiny_model(), arrays, arrays, 4, cfg, SPEC)
    from_files = train_linear_readout(tiny_model(), files, files, 4, cfg, SPEC)
    assert from_files == from_arrays


def test_config_rejects_caching_augmented_features_and_bad_drops():
    with pytest.raises(ValueError, match="cache_features"):
        config(train_augment="resize_random_crop_flip", cache_features=True)
    with pytest.raises(ValueError, match="lr_drops"):
        config(epochs=3, lr_drops=[3])
    with pytest.raises(ValueError, match="eval_resize"):
        config(eval_resize=20)
    with pytest.raises(ValueError, match="conv6"):
        config(layers=["conv1", "conv6"])
    with pytest.raises(ValueError, match="repeats"):
        config(layers=["conv1", "conv1"])


def test_load_backbone_restores_weights_and_names_a_mismatch(tmp_path):
    cfg = ModelConfig(arch="resnet18", stem="small", embedding_dim=8)
    model = load_backbone(None, cfg, seed=3)
    path = tmp_path / "pretrain_la.pt"
    ckpt.save_export(path, model, "la")
    loaded = load_backbone(path, cfg)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))

    random_again, other_seed = load_backbone(None, cfg, seed=3), load_backbone(None, cfg, seed=4)
    assert torch.equal(random_again.head.weight, model.head.weight)
    assert not torch.equal(other_seed.head.weight, model.head.weight)

    with pytest.raises(UserError, match=r"pretrain_la\.pt.*arch: checkpoint has 'resnet18', config asks for 'resnet50'"):
        load_backbone(path, cfg.model_copy(update={"arch": "resnet50"}))
    with pytest.raises(UserError, match=r"missing\.pt does not exist"):
        load_backbone(tmp_path / "missing.pt", cfg)
    ckpt.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match=r"other\.pt has no model, model_meta, objective: it is not a localagg model export"):
        load_backbone(tmp_path / "other.pt", cfg)


# the authors' TF rule, conv1 read after the max-pool: la-method.md's dimensions for ResNet-50
OFFICIAL_DIMS = {"resnet50": [50176, 50176, 100352, 50176, 100352], "resnet18": [50176, 50176, 100352, 50176, 25088]}


@pytest.mark.parametrize("arch", list(OFFICIAL_DIMS))
def test_official_pooling_gives_the_authors_dimensions(arch):
    with torch.device("meta"):
        model = EmbeddingNet(arch, "imagenet", 8)
        maps = model.features(torch.empty(2, 3, 224, 224), conv1_after_maxpool=True)
        dims = []
        for layer in READOUT_LAYERS:
            head = LayerReadout(*maps[layer].shape[1:], 10, 200_000, rule="official")
            assert head.pool(maps[layer]).shape == (2, head.dim)
            dims.append(head.dim)
    assert dims == OFFICIAL_DIMS[arch]


def test_official_pooling_averages_windows_past_the_edge_over_what_they_hold():
    head = LayerReadout(1000, 7, 7, 2, 10_000, rule="official")  # 49,000 dims > 10,000 x 4: pool by 4
    assert head.factor == 4 and head.pool_size == (2, 2)
    fmap = torch.arange(49.0).reshape(1, 1, 7, 7).expand(1, 1000, 7, 7)
    pooled = head.pool(fmap).reshape(1000, 2, 2)[0]
    assert pooled[1, 1].item() == pytest.approx(torch.arange(49.0).reshape(7, 7)[4:, 4:].mean().item())


def test_ten_crops_need_a_readout_trained_on_crops():
    with pytest.raises(ValueError, match="ten_crop needs a readout trained on crops"):
        config(train_augment="none", cache_features=True, ten_crop=True)


def test_seeds_share_the_backbone_and_each_equals_its_own_run():
    train, val = intensity_classes(32, noise=60.0), intensity_classes(8, noise=60.0, seed=1)
    cfg = config(train_augment="none", cache_features=True, ten_crop=False, layers=["conv1", "conv5"])
    together = train_linear_readouts(tiny_model(), train, val, 4, cfg, SPEC, seeds=[0, 1])
    for run in together["runs"]:
        alone = train_linear_readout(tiny_model(), train, val, 4, cfg.model_copy(update={"seed": run["seed"]}), SPEC)
        assert run["layers"] == alone["layers"] and run["per_class"] == alone["per_class"]
    # the seeds are different runs (their accuracies on 8 images may tie; their training losses do not)
    assert together["runs"][0]["history"] != together["runs"][1]["history"]


def test_knn_features_of_the_readout_cache_are_knn_evals():
    """The transfer stage's two kNN paths: the readout's cached forwards, and knn_eval's own
    streamed pass, see the same features and give the same neighbours."""
    train, val = intensity_classes(32, noise=60.0), intensity_classes(8, noise=60.0, seed=1)
    spec = AugmentSpec(crop_size=SIZE)
    cfg = config(crop_size=SIZE, eval_resize=SIZE, train_augment="none", cache_features=True, ten_crop=False)
    cached = train_linear_readouts(tiny_model(), train, val, 4, cfg, spec, seeds=[0])["knn_features"]
    direct = knn_eval(network_space_fn(tiny_model(), spec, "cpu"), train, val, 4, k=5, device="cpu", views=True)
    torch.testing.assert_close(cached["val"]["embedding"], direct["map_features"], rtol=1e-5, atol=1e-6)
    from localagg.evaluation.views import retrieval

    assert retrieval(cached["train"]["embedding"], cached["val"]["embedding"], val.labels) == direct["retrieval"]


def test_the_raw_pixel_baseline_reads_out_the_normalised_input(tiny_data):
    """Blobs whose class is their quadrant: the pixels separate them, linearly and by kNN."""
    from localagg.data.datasets import open_split

    train, val = open_split(tiny_data, "train"), open_split(tiny_data, "val")
    cfg = config(layers=["pixels"], epochs=10, train_augment="none", cache_features=True, ten_crop=False)
    result = train_linear_readout(RawPixels(), train, val, 4, cfg, SPEC)
    assert result["feature_dims"] == {"pixels": 3 * 28 * 28} and result["layers"]["pixels"]["top1"] >= 75.0
    knn = knn_eval(pixel_space_fn(SPEC, 28), train, val, 4, k=5, device="cpu")["knn"]
    assert set(knn) == {"pixels"} and knn["pixels"] >= 75.0
    with pytest.raises(UserError, match="only the layer 'pixels'"):
        RawPixels().features(torch.zeros(1, 3, 8, 8), ["conv1"])


@gloo_worker
def _readout_worker(rank: int, init: str, cfg, out):
    from localagg.runtime.distributed import DistInfo

    from .conftest import init_gloo

    init_gloo(init, rank, 2)
    train, val = intensity_classes(37, noise=60.0), intensity_classes(13, noise=60.0, seed=1)  # odd sizes
    result = train_linear_readouts(tiny_model().double(), train, val, 4, cfg, SPEC, seeds=[0, 1],
                                   dist=DistInfo(rank, 2, rank))
    torch.save(result["runs"], out / f"rank{rank}.pt")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["augmented images, 10 crops", "cached features"])
def test_two_gloo_processes_read_out_as_one_process(kind, tmp_path):
    """Each rank takes its share of every global batch (a slice of the images, or the images of
    its cache shard) and the gradients are summed: the same classifiers, accuracies and losses
    as one process, in float64 (sqrt(eps64) on the losses; accuracies exactly)."""
    import torch.multiprocessing as mp

    from .conftest import rendezvous

    kw = (dict(train_augment="random_resized_crop_flip", ten_crop=True) if kind.startswith("augmented")
          else dict(train_augment="none", cache_features=True, ten_crop=False))
    cfg = config(epochs=3, batch_size=8, layers=["conv1", "conv3", "conv5"], float64=True, lr=0.05,
                 standardize_images=20, **kw)
    train, val = intensity_classes(37, noise=60.0), intensity_classes(13, noise=60.0, seed=1)
    single = train_linear_readouts(tiny_model().double(), train, val, 4, cfg, SPEC, seeds=[0, 1])["runs"]
    mp.spawn(_readout_worker, args=(rendezvous(tmp_path), cfg, tmp_path), nprocs=2, join=True)
    tol = float(torch.finfo(torch.float64).eps) ** 0.5
    for rank in (0, 1):
        runs = torch.load(tmp_path / f"rank{rank}.pt")
        for got, expected in zip(runs, single):
            assert got["layers"] == expected["layers"] and got["per_class"] == expected["per_class"]
            for a, b in zip(got["history"], expected["history"]):
                assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=tol, abs=tol) for k in a)
    assert single[0]["history"] != single[1]["history"]  # the seeds are different runs: the check can fail
