"""MemoryBank: init range, momentum update, untouched rows, repeated indices, checkpoints."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from localagg.memory_bank import MemoryBank


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_init_is_uniform_in_plus_minus_s_without_normalising():
    bank = MemoryBank(2000, dim=48, generator=seeded())
    s = 1.0 / math.sqrt(48 / 3)
    memory = bank.memory
    assert memory.shape == (2000, 48) and memory.dtype == torch.float32
    assert memory.min() >= -s and memory.max() <= s
    assert memory.min() < -0.99 * s and memory.max() > 0.99 * s  # fills the range
    assert abs(memory.mean().item()) < 0.01 * s
    assert memory.var().item() == pytest.approx(s * s / 3, rel=0.02)  # = 1 / dim
    norms = memory.norm(dim=1)
    assert norms.mean().item() == pytest.approx(1.0, abs=0.02)
    assert norms.std() > 0.05  # not normalised (TensorFlow reference)


def test_normalize_init_gives_unit_rows_from_the_same_draw():
    plain = MemoryBank(500, dim=16, generator=seeded(3))
    unit = MemoryBank(500, dim=16, normalize_init=True, generator=seeded(3))
    torch.testing.assert_close(unit.memory.norm(dim=1), torch.ones(500), rtol=0, atol=1e-6)
    torch.testing.assert_close(unit.memory, F.normalize(plain.memory, dim=1))


def test_init_is_reproducible_with_a_generator():
    first, same, other = (MemoryBank(50, 8, generator=seeded(s)).memory for s in (1, 1, 2))
    assert torch.equal(first, same)
    assert not torch.equal(first, other)


def test_update_matches_hand_computation():
    bank = MemoryBank(4, dim=2)
    bank.memory.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]]))
    bank.update(torch.tensor([0, 2]), torch.tensor([[0.0, 1.0], [0.8, -0.6]]))
    # row 0: normalize(0.5 * (1, 0) + 0.5 * (0, 1)) = (1, 1) / sqrt(2)
    # row 2: normalize(0.5 * (0.6, 0.8) + 0.5 * (0.8, -0.6)) = (1.4, 0.2) / sqrt(2)
    r = 1 / math.sqrt(2)
    expected = torch.tensor([[r, r], [0.0, 1.0], [1.4 * r, 0.2 * r], [-1.0, 0.0]])
    torch.testing.assert_close(bank.memory, expected, rtol=0, atol=1e-7)


def test_update_uses_the_momentum():
    bank = MemoryBank(3, dim=2, momentum=0.9)
    bank.memory.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    bank.update(torch.tensor([2]), torch.tensor([[0.0, 1.0]]))
    expected_row = F.normalize(torch.tensor([0.9, 0.1]), dim=0)
    torch.testing.assert_close(bank.memory[2], expected_row)


def test_update_leaves_rows_outside_the_batch_untouched():
    bank = MemoryBank(100, dim=8, generator=seeded(4))
    before = bank.memory.clone()
    indices = torch.tensor([5, 17, 63])
    embeddings = F.normalize(torch.randn(3, 8, generator=seeded(5)), dim=1)
    bank.update(indices, embeddings)
    others = torch.ones(100, dtype=torch.bool)
    others[indices] = False
    assert torch.equal(bank.memory[others], before[others])
    expected = F.normalize(0.5 * before[indices] + 0.5 * embeddings, dim=1)
    torch.testing.assert_close(bank.memory[indices], expected)


def test_update_with_repeated_index_keeps_the_last_occurrence():
    bank = MemoryBank(10, dim=4, generator=seeded(6))
    before = bank.memory.clone()
    indices = torch.tensor([3, 7, 3, 1, 3])
    embeddings = F.normalize(torch.randn(5, 4, generator=seeded(7)), dim=1)
    bank.update(indices, embeddings)
    # row 3 mixes its old value with the last occurrence (position 4), once
    expected = F.normalize(0.5 * before[[3, 7, 1]] + 0.5 * embeddings[[4, 1, 3]], dim=1)
    torch.testing.assert_close(bank.memory[[3, 7, 1]], expected)
    for _ in range(3):
        again = MemoryBank(10, dim=4, generator=seeded(6))
        again.update(indices, embeddings)
        assert torch.equal(again.memory, bank.memory)


def test_update_detaches_and_casts_embeddings():
    bank = MemoryBank(10, dim=4, generator=seeded(8))
    embeddings = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    bank.update(torch.tensor([0, 1]), embeddings * 2)
    assert bank.memory.dtype == torch.float32 and not bank.memory.requires_grad
    torch.testing.assert_close(bank.memory[:2].norm(dim=1), torch.ones(2))


def test_update_rejects_bad_shapes():
    bank = MemoryBank(10, dim=4)
    with pytest.raises(ValueError, match="embeddings"):
        bank.update(torch.tensor([0, 1]), torch.randn(2, 5))
    with pytest.raises(ValueError, match="indices"):
        bank.update(torch.tensor([[0, 1]]), torch.randn(2, 4))
    with pytest.raises(ValueError, match="indices"):
        bank.update(torch.tensor([0.0, 1.0]), torch.randn(2, 4))


def test_state_dict_round_trip_restores_the_bank():
    bank = MemoryBank(30, dim=8, generator=seeded(9))
    bank.update(torch.tensor([1, 2]), torch.randn(2, 8, generator=seeded(10)))
    assert set(bank.state_dict()) == {"memory"}
    buffer = io.BytesIO()
    torch.save(torch.nn.ModuleDict({"bank": bank}).state_dict(), buffer)
    buffer.seek(0)
    restored = torch.nn.ModuleDict({"bank": MemoryBank(30, dim=8, generator=seeded(11))})
    restored.load_state_dict(torch.load(buffer))
    assert torch.equal(restored["bank"].memory, bank.memory)
    assert restored["bank"].num_items == 30 and restored["bank"].dim == 8


def test_load_state_dict_of_another_size_fails():
    with pytest.raises(RuntimeError, match="memory"):
        MemoryBank(31, dim=8).load_state_dict(MemoryBank(30, dim=8).state_dict())
