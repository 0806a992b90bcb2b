"""Every registry model on real RecBole objects: trains, scores consistently, is causal, ignores padding."""

from __future__ import annotations

import pytest
import torch

from blossom.models.registry import MODELS

from .conftest import MAX_LEN

SEQUENTIAL = sorted(set(MODELS) - {"Pop"})
# models whose encoder output at t must not see items after t (LinRec is bidirectional as published,
# BERT4Rec by design, LightSANs' item-to-interest pooling mixes the whole sequence)
CAUSAL = ["SASRec", "SASRec-SDPA", "GRU4Rec", "Mamba4Rec"] + sorted(m for m in MODELS if m.startswith("BlossomRec"))
# models whose valid outputs must not depend on how much right padding follows (LightSANs: see below)
PADDING_SAFE = CAUSAL + ["LinRec"]


def _items(model, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random real item ids (never 0 = padding)."""
    return torch.randint(1, model.n_items, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loss_is_finite_and_backpropagates(built_models, name):
    built = built_models[name]
    model = built.model.train()
    model.zero_grad(set_to_none=True)
    loss = model.calculate_loss(built.train_batch)
    assert loss.ndim <= 1 and torch.isfinite(loss).all()
    if name == "Pop":  # a counting model: its loss is a constant placeholder, nothing to train
        return
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert grads["item_embedding.weight"].abs().sum() > 0
    assert sum(g.abs().sum() for g in grads.values()) > 0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_predict_equals_full_sort_predict(built_models, name):
    """What makes BlossomTrainer's fast sampled evaluation exact. Holds for BERT4Rec too: RecBole
    scores both ways from the same reconstructed sequence (mask token appended, first item dropped)."""
    built = built_models[name]
    model = built.model
    if name == "Pop":
        model.calculate_loss(built.train_batch)  # counts items; scoring needs the counts
    model.eval()
    with torch.no_grad():
        rows = model.predict(built.eval_batch)
        full = model.full_sort_predict(built.eval_batch).view(len(rows), -1)
    items = built.eval_batch[built.config["ITEM_ID_FIELD"]]
    torch.testing.assert_close(rows.double(), full[torch.arange(len(rows)), items].double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CAUSAL)
def test_encoder_is_causal(built_models, name):
    """Reading position t (item_seq_len = t + 1) gives the same state whatever follows t."""
    model = built_models[name].model.eval()
    seq = _items(model, (2, MAX_LEN), seed=1)
    with torch.no_grad():
        for t in (0, 5, 17, 33, MAX_LEN - 2):
            changed = seq.clone()
            changed[:, t + 1 :] = _items(model, (2, MAX_LEN - t - 1), seed=t)
            read_t = torch.full((2,), t + 1)
            torch.testing.assert_close(model(seq, read_t), model(changed, read_t), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(model(seq, torch.full((2,), MAX_LEN)), model(changed, torch.full((2,), MAX_LEN)))


@pytest.mark.parametrize("name", PADDING_SAFE)
def test_right_padding_does_not_leak(built_models, name):
    """The same histories, right-padded to MAX_LEN or cut to 24 positions, give the same outputs."""
    model = built_models[name].model.eval()
    lengths = torch.tensor([24, 20, 9, 1])
    seq = _items(model, (4, MAX_LEN), seed=2)
    seq[torch.arange(MAX_LEN)[None, :] >= lengths[:, None]] = 0
    with torch.no_grad():
        torch.testing.assert_close(model(seq, lengths), model(seq[:, :24], lengths), rtol=1e-5, atol=1e-6)


def test_lightsans_pools_padding(built_models):
    """Documents a property of RecBole's LightSANs (not ours, so not fixed): its item-to-interest pooling
    softmaxes over every position, padding included, so its outputs depend on the amount of padding."""
    model = built_models["LightSANs"].model.eval()
    lengths = torch.tensor([10])
    seq = torch.cat([_items(model, (1, 10), seed=3), torch.zeros(1, MAX_LEN - 10, dtype=torch.long)], dim=1)
    with torch.no_grad():
        assert not torch.allclose(model(seq, lengths), model(seq[:, :24], lengths), rtol=1e-5, atol=1e-6)
