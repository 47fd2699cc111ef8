"""The InstDisc weighted kNN classifier, and the transfer stage's kNN evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.neighbors import KNeighborsClassifier

from localagg.data.augment import AugmentSpec, evaluate_transform
from localagg.data.datasets import ArrayImages
from localagg.knn import knn_scores, knn_top1
from localagg.evaluation.transfer import knn_eval
from localagg.models.backbone import EmbeddingNet


def clustered_points(n, num_classes=5, dim=16, seed=0):
    """L2-normalised float64 points around one random centre per class, with overlap."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    points = centres[labels] + 1.5 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    return F.normalize(points, dim=1), labels


@pytest.mark.parametrize("k", [1, 7, 50])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_knn_matches_sklearn_cosine_knn_with_exponential_weights(k, temperature):
    bank, bank_labels = clustered_points(300, seed=1)
    queries, query_labels = clustered_points(120, seed=2)

    def weights(distances):  # sklearn passes cosine distances d = 1 - cos
        return np.exp((1.0 - distances) / temperature)

    ref = KNeighborsClassifier(n_neighbors=k, weights=weights, metric="cosine", algorithm="brute")
    ref.fit(bank.numpy(), bank_labels.numpy())
    expected = ref.predict(queries.numpy())

    ours = knn_scores(queries, bank, bank_labels, 5, k=k, temperature=temperature).argmax(1).numpy()
    assert 0 < (ours != query_labels.numpy()).sum()  # the set is not trivially separable
    np.testing.assert_array_equal(ours, expected)
    accuracy = 100.0 * (expected == query_labels.numpy()).mean()
    assert knn_top1(queries, query_labels, bank, bank_labels, 5, k=k, temperature=temperature) == pytest.approx(accuracy)


def test_knn_eval_scores_the_embedding_and_the_normalised_pooled_conv5():
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 4
    images = rng.integers(0, 256, (40, 32, 32), dtype=np.uint8)
    images[labels == 1, :16] //= 4  # some class structure, not a perfect one
    train, val = ArrayImages(images[:24], labels[:24]), ArrayImages(images[24:], labels[24:])
    torch.manual_seed(0)
    model = EmbeddingNet("resnet18", "imagenet", 8)
    spec = AugmentSpec(crop_size=32)
    got = knn_eval(model, train, val, 4, k=5, temperature=0.1, augment_spec=spec, batch_size=10, device="cpu")

    with torch.no_grad():
        def feats(ds):
            x = evaluate_transform(ds.batch(torch.arange(len(ds)))[0], spec)
            return model(x), F.normalize(model.pooled(x), dim=1)

        (te, tc), (ve, vc) = feats(train), feats(val)
    assert got["embedding"] == pytest.approx(knn_top1(ve, val.labels, te, train.labels, 4, k=5, temperature=0.1))
    assert got["conv5"] == pytest.approx(knn_top1(vc, val.labels, tc, train.labels, 4, k=5, temperature=0.1))
    assert set(got) == {"embedding", "conv5"}
