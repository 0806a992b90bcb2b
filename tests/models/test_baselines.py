"""The baselines we implement: SASRec-SDPA against RecBole's SASRec, LinRec's attention, Mamba4Rec's parts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from blossom.models.linrec import LinRecMultiHeadAttention
from blossom.models.mamba4rec import mamba_block

from .conftest import MAX_LEN, build


def _last_layer_states(model, batch) -> torch.Tensor:
    """Encoder output at every position [B, L, D], read through a hook on the last layer."""
    states = []
    hook = model.trm_encoder.layer[-1].register_forward_hook(lambda mod, args, out: states.append(out))
    try:
        model.predict(batch)
    finally:
        hook.remove()
    return states[0]


def test_sdpa_equals_recbole_sasrec(built_models, recbole_data):
    """Same weights, eval mode: identical encoder states at every valid position."""
    sasrec, sdpa = built_models["SASRec"], build(recbole_data, "SASRec-SDPA")
    torch.nn.init.normal_(sdpa.model.position_embedding.weight)  # weights differ until copied
    sdpa.model.load_state_dict(sasrec.model.state_dict())
    batch = sasrec.eval_batch
    with torch.no_grad():
        expected = _last_layer_states(sasrec.model.eval(), batch)
        got = _last_layer_states(sdpa.model.eval(), batch)
    valid = torch.arange(MAX_LEN)[None, :] < batch["item_length"][:, None]
    torch.testing.assert_close(got[valid], expected[valid], rtol=1e-5, atol=1e-5)


def test_linrec_attention_equals_its_quadratic_form():
    """The O(L d^2) product equals rho(elu Q) sigma(elu K)^T V / sqrt(d) with padded keys dropped."""
    torch.manual_seed(0)
    layer = LinRecMultiHeadAttention(2, 8, hidden_dropout_prob=0.0, attn_dropout_prob=0.0, layer_norm_eps=1e-12)
    x = torch.randn(2, 7, 8)
    real = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.bool)
    out = layer(x, real[:, None, :, None])

    def heads(t):
        return t.view(2, 7, 2, 4).transpose(1, 2)

    q = F.normalize(F.elu(heads(layer.query(x))), dim=-1)
    k = F.normalize(F.elu(heads(layer.key(x))), dim=-1)
    scores = (q @ k.transpose(-1, -2)).masked_fill(~real[:, None, None, :], 0.0)
    context = (scores @ heads(layer.value(x)) / math.sqrt(4)).transpose(1, 2).reshape(2, 7, 8)
    torch.testing.assert_close(out, layer.LayerNorm(layer.dense(context) + x))


def test_linrec_is_bidirectional_as_published(built_models):
    """The public LinRec attention reads the whole sequence (see linrec.py): items after t change t."""
    model = built_models["LinRec"].model.eval()
    seq = torch.randint(1, model.n_items, (2, MAX_LEN), generator=torch.Generator().manual_seed(4))
    changed = seq.clone()
    changed[:, 10:] = torch.randint(1, model.n_items, (2, MAX_LEN - 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert not torch.allclose(model(seq, torch.full((2,), 10)), model(changed, torch.full((2,), 10)))


def test_mamba4rec_layers_follow_the_public_model(built_models, recbole_data):
    from mambapy.mamba import MambaBlock

    one = built_models["Mamba4Rec"].model
    assert len(one.mamba_layers) == 1 and not one.mamba_layers[0].residual  # one layer: no residual
    assert isinstance(one.mamba_layers[0].mamba, MambaBlock)  # no mamba_ssm / CUDA here
    block = one.mamba_layers[0].mamba
    assert (block.config.d_state, block.config.d_conv, block.config.expand_factor) == (32, 4, 2)
    assert one.mamba_layers[0].feed_forward.dense_1.out_features == 4 * one.hidden_size
    two = build(recbole_data, "Mamba4Rec", num_layers=2).model
    assert len(two.mamba_layers) == 2 and all(layer.residual for layer in two.mamba_layers)


def test_mamba_backends():
    from mambapy.mamba import MambaBlock

    assert isinstance(mamba_block("auto", False, 16, 8, 4, 2), MambaBlock)
    assert isinstance(mamba_block("mambapy", True, 16, 8, 4, 2), MambaBlock)
    with pytest.raises(ValueError, match="unknown mamba_backend 'cuda'"):
        mamba_block("cuda", False, 16, 8, 4, 2)
