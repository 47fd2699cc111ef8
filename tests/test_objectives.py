"""The LA and IR objectives against slow per-sample references written from the formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from localagg.memory_bank import MemoryBank
from localagg.objectives import InstanceRecognitionLoss, local_aggregation_loss

from .conftest import gloo_worker


TAU = 0.07
EMPTY_LOSS = -math.log(1e-7)


# ----------------------------------------------------------------------------------------
# Local Aggregation


def reference_la_loss(embeddings, indices, bank, labels, k, tau=TAU, per_sample=False):
    """L_i = -log(max(sum_{B_i ∩ C_i} e^(s/tau) / sum_{B_i} e^(s/tau), 1e-7)), sets by hand."""
    n = bank.shape[0]
    k = min(k, n)
    label_rows = labels.tolist()  # H lists of N labels
    losses, sets = [], []
    for b in range(embeddings.shape[0]):
        i = int(indices[b])
        sims = [torch.dot(embeddings[b], bank[j]) for j in range(n)]
        ranked = sorted(range(n), key=lambda j: -float(sims[j]))
        background = set(ranked[:k])
        close = {j for j in range(n) if any(row[j] == row[i] for row in label_rows)}
        both = background & close
        zero = torch.zeros((), dtype=bank.dtype)
        numerator = sum((torch.exp(sims[j] / tau) for j in both), zero)
        denominator = sum(torch.exp(sims[j] / tau) for j in background)
        ratio = numerator / denominator
        losses.append(-torch.log(torch.clamp(ratio, min=1e-7)))
        sets.append((background, close))
    losses = torch.stack(losses)
    return (losses, sets) if per_sample else losses.mean()


def make_problem(n=120, d=8, b=6, h=3, m=10, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    bank = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)
    embeddings = F.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=1)
    indices = torch.randperm(n, generator=g)[:b]
    labels = torch.randint(m, (h, n), generator=g)
    return embeddings, indices, bank, labels


def value_and_grad(fn, embeddings, *args, **kwargs):
    leaf = embeddings.detach().clone().requires_grad_(True)
    loss = fn(leaf, *args, **kwargs)
    loss.backward()
    return loss.detach(), leaf.grad


@pytest.mark.parametrize("h,k", [(1, 10), (3, 25), (5, 60), (2, 119)])
def test_la_loss_and_gradient_match_set_reference_float64(h, k):
    emb, idx, bank, labels = make_problem(h=h, seed=h * 100 + k)
    loss, grad = value_and_grad(local_aggregation_loss, emb, idx, bank, labels, k=k)
    ref, ref_grad = value_and_grad(reference_la_loss, emb, idx, bank, labels, k=k)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    assert grad.abs().sum() > 0


def test_la_loss_and_gradient_match_set_reference_float32():
    emb, idx, bank, labels = make_problem(n=150, h=4, seed=7, dtype=torch.float32)
    loss, grad = value_and_grad(local_aggregation_loss, emb, idx, bank, labels, k=40)
    ref, ref_grad = value_and_grad(reference_la_loss, emb, idx, bank, labels, k=40)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)


def test_la_close_neighbours_outside_background_are_left_out():
    emb, idx, bank, labels = make_problem(n=100, h=2, m=1000, seed=3)
    k = 15
    b, i = 0, int(idx[0])
    ranked = torch.argsort(bank @ emb[b], descending=True)
    near, outside = ranked[k - 3 : k], ranked[k : k + 4]  # the last 3 of B_i, 4 just outside
    labels[0, i] = labels[0, near] = labels[0, outside] = 5000  # one cluster holds all of them
    losses, sets = reference_la_loss(emb, idx, bank, labels, k, per_sample=True)
    background, close = sets[b]
    assert close - background, "some close neighbours must miss the background set"
    assert close & background, "some close neighbours must be in the background set"
    loss, grad = value_and_grad(local_aggregation_loss, emb, idx, bank, labels, k=k)
    ref, ref_grad = value_and_grad(reference_la_loss, emb, idx, bank, labels, k=k)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    # Counting the close neighbours outside B_i in the numerator would give another value.
    weights = torch.exp(bank @ emb[b] / TAU)  # (N,)
    counted_all = -torch.log(weights[sorted(close)].sum() / weights[sorted(background)].sum())
    single = local_aggregation_loss(emb[b : b + 1], idx[b : b + 1], bank, labels, k=k)
    torch.testing.assert_close(single, losses[b], rtol=1e-12, atol=1e-12)
    assert abs(single - counted_all) > 0.1


def test_la_empty_intersection_gives_clamped_loss_and_zero_gradient():
    emb, idx, bank, labels = make_problem(n=80, h=3, m=8, seed=5)
    k = 10
    b, i = 2, int(idx[2])
    bank[i] = -emb[b]  # row i is the farthest from v_i, so not in B_i
    labels[:, i] = 999  # i is alone in every clustering: C_i = {i}
    losses, sets = reference_la_loss(emb, idx, bank, labels, k, per_sample=True)
    background, close = sets[b]
    assert close == {i} and not (background & close)

    per_sample = [
        local_aggregation_loss(emb[s : s + 1], idx[s : s + 1], bank, labels, k=k)
        for s in range(emb.shape[0])
    ]
    assert per_sample[b].item() == pytest.approx(EMPTY_LOSS, rel=1e-12)
    loss, grad = value_and_grad(local_aggregation_loss, emb, idx, bank, labels, k=k)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert torch.equal(grad[b], torch.zeros_like(grad[b]))
    assert grad.abs().sum() > 0  # the other samples still learn
    ref, ref_grad = value_and_grad(reference_la_loss, emb, idx, bank, labels, k=k)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_la_ratio_below_1e7_is_clamped_with_zero_gradient():
    emb, idx, bank, labels = make_problem(n=80, h=2, seed=6)
    b, i = 1, int(idx[1])
    bank[i] = -emb[b]  # exp((-1 - 1) / tau) is about 4e-13 of the top term
    labels[:, i] = 999  # C_i = {i}, inside B_i because k = N
    losses, sets = reference_la_loss(emb, idx, bank, labels, k=80, per_sample=True)
    background, close = sets[b]
    assert background & close == {i}
    loss, grad = value_and_grad(local_aggregation_loss, emb, idx, bank, labels, k=80)
    assert losses[b].item() == pytest.approx(EMPTY_LOSS, rel=1e-12)
    assert torch.equal(grad[b], torch.zeros_like(grad[b]))
    ref, ref_grad = value_and_grad(reference_la_loss, emb, idx, bank, labels, k=80)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_la_every_sample_without_close_neighbours_is_finite():
    emb, idx, bank, labels = make_problem(n=50, b=4, h=1, seed=9)
    bank[idx] = -emb
    labels = torch.arange(50)[None]  # before the first clustering: every image alone
    loss, grad = value_and_grad(local_aggregation_loss, emb, idx, bank, labels, k=5)
    assert loss.item() == pytest.approx(EMPTY_LOSS, rel=1e-12)
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("k_extra", [0, 7, 10_000])
def test_la_k_at_least_n_uses_the_whole_bank(k_extra):
    emb, idx, bank, labels = make_problem(n=60, h=2, seed=11)
    k = 60 + k_extra
    loss, grad = value_and_grad(local_aggregation_loss, emb, idx, bank, labels, k=k)
    ref, ref_grad = value_and_grad(reference_la_loss, emb, idx, bank, labels, k=60)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_la_loss_is_the_mean_over_the_batch():
    emb, idx, bank, labels = make_problem(n=90, b=5, h=3, seed=13)
    batch = local_aggregation_loss(emb, idx, bank, labels, k=20)
    singles = torch.stack(
        [
            local_aggregation_loss(emb[s : s + 1], idx[s : s + 1], bank, labels, k=20)
            for s in range(5)
        ]
    )
    assert singles.std() > 0
    torch.testing.assert_close(batch, singles.mean(), rtol=1e-12, atol=1e-12)


def test_la_memory_bank_gets_no_gradient():
    emb, idx, bank, labels = make_problem(seed=17)
    bank.requires_grad_(True)
    leaf = emb.clone().requires_grad_(True)
    local_aggregation_loss(leaf, idx, bank, labels, k=30).backward()
    assert bank.grad is None
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0


def test_la_backward_refuses_a_bank_updated_in_place_before_it():
    emb, idx, _, labels = make_problem(seed=18, dtype=torch.float32)
    bank = MemoryBank(120, dim=8, generator=torch.Generator().manual_seed(18))
    leaf = emb.clone().requires_grad_(True)
    loss = local_aggregation_loss(leaf, idx, bank.memory, labels, k=30)
    bank.update(idx, emb)  # too early: the backward needs the rows the forward used
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


def test_la_under_cpu_autocast_bfloat16_stays_close():
    g = torch.Generator().manual_seed(19)
    _, idx, bank, labels = make_problem(n=200, d=16, b=8, h=3, seed=19, dtype=torch.float32)
    head = torch.nn.Linear(32, 16)
    x = torch.randn(8, 32, generator=g)

    def run(autocast: bool):
        head.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            emb = F.normalize(head(x), dim=1)
            loss = local_aggregation_loss(emb, idx, bank, labels, k=50)
        loss.backward()
        return emb.detach(), loss.detach(), head.weight.grad.clone()

    emb32, loss32, grad32 = run(autocast=False)
    emb16, loss16, grad16 = run(autocast=True)
    assert emb16.dtype == torch.bfloat16  # the embeddings really came out in low precision
    assert loss16.dtype == torch.float32 and torch.isfinite(grad16).all()
    # Inside the loss the math is float32: same as the loss of the upcast embeddings.
    same = local_aggregation_loss(emb16.float(), idx, bank, labels, k=50)
    torch.testing.assert_close(loss16, same, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss16, loss32, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(grad16, grad32, rtol=0.1, atol=0.1 * grad32.abs().max().item())


def test_la_autocast_on_float32_embeddings_changes_nothing():
    emb, idx, bank, labels = make_problem(n=100, d=8, seed=23, dtype=torch.float32)
    plain, plain_grad = value_and_grad(local_aggregation_loss, emb, idx, bank, labels, k=30)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast, cast_grad = value_and_grad(local_aggregation_loss, emb, idx, bank, labels, k=30)
    torch.testing.assert_close(cast, plain, rtol=0, atol=0)
    torch.testing.assert_close(cast_grad, plain_grad, rtol=0, atol=0)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda e, i, b, l: (e[:, :4], i, b, l), "dimension"),
        (lambda e, i, b, l: (e, i.float(), b, l), "indices"),
        (lambda e, i, b, l: (e, i[:-1], b, l), "indices"),
        (lambda e, i, b, l: (e, i, b, l[:, :-1]), "cluster_labels"),
        (lambda e, i, b, l: (e, i, b, l.float()), "cluster_labels"),
        (lambda e, i, b, l: (e, i, b, l[:0]), "H=0"),
        (lambda e, i, b, l: (e.long(), i, b, l), "embeddings"),
        (lambda e, i, b, l: (e[0], i, b, l), "embeddings"),
    ],
)
def test_la_rejects_bad_shapes_and_dtypes(change, match):
    args = change(*make_problem())
    with pytest.raises(ValueError, match=match):
        local_aggregation_loss(*args, k=10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_la_on_cuda_matches_cpu():
    emb, idx, bank, labels = make_problem(n=300, h=3, seed=29, dtype=torch.float32)
    cpu, cpu_grad = value_and_grad(local_aggregation_loss, emb, idx, bank, labels, k=64)
    gpu, gpu_grad = value_and_grad(
        local_aggregation_loss, emb.cuda(), idx.cuda(), bank.cuda(), labels.cuda(), k=64
    )
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gpu_grad.cpu(), cpu_grad, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------
# Instance Recognition


def reference_nce_normalizer(embeddings, indices, bank, noise, tau=TAU):
    """lemniscate NCEAverage: Z = mean(exp(v_j . v_i / tau)) * N over the first batch."""
    values = [
        torch.exp(torch.dot(bank[j], embeddings[b]) / tau)
        for b in range(embeddings.shape[0])
        for j in [int(indices[b])] + noise[b].tolist()
    ]
    return float(sum(values) / len(values)) * bank.shape[0]


def reference_nce_loss(embeddings, indices, bank, noise, z, tau=TAU):
    """lemniscate NCEAverage + NCECriterion, literally, one sample and one column at a time."""
    batch, k, n = embeddings.shape[0], noise.shape[1], bank.shape[0]
    pn, eps = 1.0 / n, 1e-7
    total = torch.zeros((), dtype=embeddings.dtype)
    for b in range(batch):
        columns = [int(indices[b])] + noise[b].tolist()
        x = [torch.exp(torch.dot(bank[j], embeddings[b]) / tau) / z for j in columns]
        total = total + torch.log(x[0] / (x[0] + k * pn + eps))
        for xj in x[1:]:
            total = total + torch.log(k * pn / (xj + k * pn + eps))
    return -total / batch


def make_ir_problem(n=200, d=8, b=6, k=16, seed=0, dtype=torch.float64):
    emb, idx, bank, _ = make_problem(n=n, d=d, b=b, seed=seed, dtype=dtype)
    noise = torch.randint(n, (b, k), generator=torch.Generator().manual_seed(seed + 1))
    return emb, idx, bank, noise


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_ir_nce_matches_lemniscate_reference(dtype, rtol):
    emb, idx, bank, noise = make_ir_problem(k=16, dtype=dtype)
    criterion = InstanceRecognitionLoss(200, num_negatives=16, temperature=TAU)
    assert criterion.normalizer.item() == -1.0
    loss, grad = value_and_grad(criterion, emb, idx, bank, noise_indices=noise)
    z = reference_nce_normalizer(emb.double(), idx, bank.double(), noise)
    assert criterion.normalizer.item() == pytest.approx(z, rel=rtol)
    ref, ref_grad = value_and_grad(reference_nce_loss, emb, idx, bank, noise, z=z)
    torch.testing.assert_close(loss, ref, rtol=rtol, atol=rtol)
    torch.testing.assert_close(grad, ref_grad, rtol=10 * rtol, atol=rtol)


def test_ir_normalizer_is_estimated_once_then_fixed():
    emb, idx, bank, noise = make_ir_problem(k=16, seed=1)
    emb2, idx2, bank2, noise2 = make_ir_problem(k=16, seed=2)
    criterion = InstanceRecognitionLoss(200, num_negatives=16)
    criterion(emb, idx, bank, noise_indices=noise)
    z = criterion.normalizer.item()
    assert z == pytest.approx(reference_nce_normalizer(emb, idx, bank, noise), rel=1e-12)
    second = criterion(emb2, idx2, bank2, noise_indices=noise2)
    assert criterion.normalizer.item() == z
    own_z = reference_nce_normalizer(emb2, idx2, bank2, noise2)
    assert abs(own_z - z) > 1e-3 * z  # a re-estimate would have changed the value
    ref = reference_nce_loss(emb2, idx2, bank2, noise2, z=z)
    torch.testing.assert_close(second.detach(), ref, rtol=1e-10, atol=1e-10)


def test_ir_normalizer_travels_in_the_state_dict():
    emb, idx, bank, noise = make_ir_problem(k=16, seed=3)
    emb2, idx2, bank2, noise2 = make_ir_problem(k=16, seed=4)
    first = InstanceRecognitionLoss(200, num_negatives=16)
    first(emb, idx, bank, noise_indices=noise)
    assert set(first.state_dict()) == {"normalizer"}
    resumed = InstanceRecognitionLoss(200, num_negatives=16)
    resumed.load_state_dict(first.state_dict())
    torch.testing.assert_close(
        resumed(emb2, idx2, bank2, noise_indices=noise2),
        first(emb2, idx2, bank2, noise_indices=noise2),
        rtol=0,
        atol=0,
    )
    assert resumed.normalizer.item() == first.normalizer.item()


def test_ir_draws_noise_uniformly_with_the_given_generator():
    emb, idx, bank, _ = make_ir_problem(k=16, seed=5)
    criterion = InstanceRecognitionLoss(200, num_negatives=16)
    drawn = criterion(emb, idx, bank, generator=torch.Generator().manual_seed(42))
    noise = torch.randint(200, (6, 16), generator=torch.Generator().manual_seed(42))
    again = InstanceRecognitionLoss(200, num_negatives=16)
    given = again(emb, idx, bank, noise_indices=noise)
    torch.testing.assert_close(drawn, given, rtol=0, atol=0)
    other = criterion(emb, idx, bank, generator=torch.Generator().manual_seed(43))
    assert other.item() != drawn.item()


def test_ir_full_softmax_is_cross_entropy_over_the_bank():
    emb, idx, bank, _ = make_ir_problem(seed=6)
    criterion = InstanceRecognitionLoss(200, num_negatives=0)
    loss, grad = value_and_grad(criterion, emb, idx, bank)
    ref, ref_grad = value_and_grad(lambda e: F.cross_entropy(e @ bank.T / TAU, idx), emb)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    assert criterion.normalizer.item() == -1.0


def test_ir_memory_bank_gets_no_gradient():
    emb, idx, bank, noise = make_ir_problem(seed=7)
    bank.requires_grad_(True)
    for k, extra in [(16, {"noise_indices": noise}), (0, {})]:
        leaf = emb.clone().requires_grad_(True)
        InstanceRecognitionLoss(200, num_negatives=k)(leaf, idx, bank, **extra).backward()
        assert bank.grad is None and leaf.grad.abs().sum() > 0


def test_ir_rejects_bad_inputs():
    emb, idx, bank, noise = make_ir_problem(k=16)
    with pytest.raises(ValueError, match="num_items"):
        InstanceRecognitionLoss(100, num_negatives=16)(emb, idx, bank, noise_indices=noise)
    with pytest.raises(ValueError, match="noise_indices"):
        InstanceRecognitionLoss(200, num_negatives=8)(emb, idx, bank, noise_indices=noise)
    with pytest.raises(ValueError, match="num_negatives=0"):
        InstanceRecognitionLoss(200, num_negatives=0)(emb, idx, bank, noise_indices=noise)
    with pytest.raises(ValueError, match="dimension"):
        InstanceRecognitionLoss(200, num_negatives=16)(emb[:, :4], idx, bank, noise_indices=noise)


@gloo_worker
def _distributed_normalizer(rank, world_size, address, results):
    from .conftest import init_gloo

    init_gloo(address, rank, world_size)
    emb, idx, bank, noise = make_ir_problem(k=16, seed=10 + rank)
    bank = make_ir_problem(k=16, seed=10)[2]  # the replicated bank
    criterion = InstanceRecognitionLoss(200, num_negatives=16)
    criterion(emb, idx, bank, noise_indices=noise)
    results[rank] = criterion.normalizer.item()


@pytest.mark.slow
def test_ir_normalizer_is_averaged_over_ranks(tmp_path):
    import torch.multiprocessing as mp

    from .conftest import rendezvous

    results = mp.Manager().dict()
    mp.spawn(_distributed_normalizer, args=(2, rendezvous(), results), nprocs=2, join=True)
    bank = make_ir_problem(k=16, seed=10)[2]
    expected = []
    for rank in range(2):
        emb, idx, _, noise = make_ir_problem(k=16, seed=10 + rank)
        expected.append(reference_nce_normalizer(emb, idx, bank, noise))
    assert results[0] == results[1]
    assert results[0] == pytest.approx(sum(expected) / 2, rel=1e-12)
    assert abs(expected[0] - expected[1]) > 1e-3 * expected[0]
