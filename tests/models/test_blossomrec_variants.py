"""BlossomRec variants: the improved one keeps its gate init and trains its compressor; ablations drop a branch."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from blossom.attention import reference
from blossom.attention.module import BlossomAttention

COMPRESSOR = ("k_compress", "k_intrablock_positions", "v_compress", "v_intrablock_positions", "compressed_memory_kv")


def _attentions(model):
    return [block.attention for block in model.blocks]


def _grads_after_loss(built) -> dict[str, torch.Tensor | None]:
    model = built.model.train()
    model.zero_grad(set_to_none=True)
    model.calculate_loss(built.train_batch).backward()
    return {name: p.grad for name, p in model.named_parameters()}


def test_improved_gate_init_survives_recbole_init(built_models):
    for attention in _attentions(built_models["BlossomRec-improved"].model):
        heads = attention.n_heads
        assert not attention.gate.weight.any() and not attention.compressed_gate.weight.any()
        assert attention.gate.bias.tolist() == [-2.0, 2.0] * heads
        assert attention.compressed_gate.bias.tolist() == [-2.0] * heads
    for attention in _attentions(built_models["BlossomRec"].model):  # official: RecBole's init wins (the quirk)
        assert attention.gate.weight.any() and not attention.gate.bias.any()


def test_improved_trains_the_compressor_official_does_not(built_models):
    built = built_models["BlossomRec-improved"]
    improved = _grads_after_loss(built)
    trained = {name: grad for name, grad in improved.items() if any(part in name for part in COMPRESSOR)}
    # per layer: two MLPs (2 Linear, weight + bias), two intra-window position tables, the memory kv
    assert len(trained) == (2 * 4 + 2 + 1) * len(built.model.blocks)
    for name, grad in trained.items():
        assert grad is not None and grad.abs().sum() > 0, name
    official = _grads_after_loss(built_models["BlossomRec"])
    compressor = {name: grad for name, grad in official.items() if "compress" in name or "intrablock" in name}
    assert compressor and all(grad is None for grad in compressor.values())
    assert not any("v_compress" in name or "compressed_" in name for name in official)  # no extra branch


@pytest.mark.parametrize(("name", "dropped", "kept"), [
    ("BlossomRec-noLTIS", "ltis", "stis"),
    ("BlossomRec-noSTIS", "stis", "ltis"),
])
def test_ablations_drop_a_branch(built_models, name, dropped, kept, monkeypatch):
    """The dropped branch's primitive is never called; the kept one is."""
    model = built_models[name].model.eval()
    calls = {kept: 0}
    for attention in _attentions(model):
        backend = attention.backend

        def never(*args, **kwargs):
            raise AssertionError(f"{name} computed its {dropped} branch")

        def counted(*args, _inner=getattr(backend, kept), **kwargs):
            calls[kept] += 1
            return _inner(*args, **kwargs)

        monkeypatch.setattr(attention, "backend", dataclasses.replace(backend, **{dropped: never, kept: counted}))
    with torch.no_grad():
        model.predict(built_models[name].eval_batch)
    assert calls[kept] == len(model.blocks)


def test_fixed_gate_is_constant_and_untrained(built_models):
    built = built_models["BlossomRec-gate0.5"]
    x = torch.randn(2, 5, built.config["hidden_size"])
    for attention in _attentions(built.model):
        assert torch.equal(attention.gates(x), torch.full((2, 5, 2 * attention.n_heads), 0.5))
    grads = _grads_after_loss(built)
    assert all(grads[name] is None for name in grads if ".gate." in name)


def test_compressed_branch_by_hand():
    """Query i attends the memory slot and the compressed blocks j with 16j+15 < i: one exact softmax."""
    torch.manual_seed(0)
    layer = BlossomAttention(16, n_heads=4, kv_heads=2, backend="torch", compressed=True)
    torch.nn.init.normal_(layer.compressed_memory_kv)
    q, k, v = (torch.randn(1, heads, 50, 4) for heads in (4, 2, 2))
    ck = reference.compress_keys(k, layer.k_intrablock_positions, layer.k_compress)  # 3 blocks
    out = layer.compressed_attention(q, ck, v, torch.tensor([40]))
    cv = reference.compress_keys(v, layer.v_intrablock_positions, layer.v_compress)
    for head, i, blocks in ((3, 10, 0), (3, 16, 1), (1, 31, 1), (1, 32, 2), (2, 39, 2)):
        group = head // 2
        keys = torch.cat([layer.compressed_memory_kv[0, group], ck[0, group, :blocks]])
        values = torch.cat([layer.compressed_memory_kv[1, group], cv[0, group, :blocks]])
        weights = torch.softmax(keys @ q[0, head, i] * layer.scale, dim=0)
        torch.testing.assert_close(out[0, head, i], weights @ values)
    assert not out[0, :, 40:].any()  # padded positions are 0, like the other branches
