"""Synchronised batch norm: W gloo processes normalise over the global batch exactly as one
process with plain batch norm over that batch does (float64, so rounding cannot hide an error)."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from localagg.models.backbone import EmbeddingNet
from localagg.models.batchnorm import SyncBatchNorm2d, set_sync_bn

from .conftest import gloo_worker, init_gloo, rendezvous


def _net() -> EmbeddingNet:
    torch.manual_seed(0)
    return EmbeddingNet("resnet18", "small", 16).double()


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 3, 16, 16, generator=g, dtype=torch.float64), torch.randn(16, 16, generator=g, dtype=torch.float64)


def _train(model, forward, x, target, scale):
    """Three SGD steps (momentum 0.9) on a squared error summed over the batch times `scale`."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        loss = ((forward(x) - target) ** 2).sum() * scale
        opt.zero_grad()
        loss.backward()
        opt.step()


@gloo_worker
def _worker(rank, world, init, out):
    init_gloo(init, rank, world)
    model = _net()
    set_sync_bn(model)
    x, target = _data()
    b = len(x) // world
    _train(model, DistributedDataParallel(model), x[rank * b:(rank + 1) * b], target[rank * b:(rank + 1) * b], 1 / b)
    torch.save(model.state_dict(), out / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_processes_with_sync_bn_train_as_one_process_with_bn_over_the_whole_batch(tmp_path):
    mp.spawn(_worker, args=(2, rendezvous(tmp_path), tmp_path), nprocs=2, join=True)
    single = _net()
    x, target = _data()
    _train(single, single, x, target, 1 / len(x))
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for name, value in single.state_dict().items():
        assert torch.equal(r0[name], r1[name]), f"{name}: replicas differ"
        torch.testing.assert_close(r0[name], value, atol=1e-10, rtol=1e-10, msg=f"{name} differs")


def test_one_process_sync_bn_is_plain_batch_norm_with_the_same_state():
    model = _net()
    x, _ = _data()
    expected = model(x)
    set_sync_bn(model)
    assert all(type(m) is SyncBatchNorm2d for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.equal(model(x), expected)


def test_native_sync_bn_keeps_the_state_and_is_batch_norm_on_one_process():
    """On CUDA the pipeline uses torch.nn.SyncBatchNorm (fused kernels under NCCL): converting
    keeps every tensor of the state and, without a process group, computes plain batch norm."""
    import torchvision

    from localagg.models.batchnorm import set_sync_bn

    torch.manual_seed(0)
    plain = torchvision.models.resnet18(weights=None)
    native = set_sync_bn(torchvision.models.resnet18(weights=None), native=True)
    native.load_state_dict(plain.state_dict())
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in native.modules()) == 20
    assert list(native.state_dict()) == list(plain.state_dict())
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(native(x), plain(x), rtol=0, atol=0)
