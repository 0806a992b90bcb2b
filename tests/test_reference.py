"""The reference attention is the spec: check it against hand-built cases and a brute-force loop."""

from __future__ import annotations

import math

import pytest
import torch

from blossom.attention import reference as R
from blossom.attention.module import BlossomAttention


def one_hot_values(batch: int, heads: int, length: int) -> torch.Tensor:
    """v[j] = e_j: with uniform attention the output's support is exactly the attended key set."""
    eye = torch.eye(length, dtype=torch.float64)
    return eye.expand(batch, heads, length, length).clone()


def attended(out_row: torch.Tensor) -> list[int]:
    return torch.nonzero(out_row > 0).flatten().tolist()


def test_stis_offsets():
    assert R.stis_offsets(1) == [0]
    assert R.stis_offsets(8) == list(range(8))
    assert R.stis_offsets(9) == list(range(9))
    assert R.stis_offsets(100) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64]


def test_stis_key_set_by_hand():
    length = 40
    q = torch.zeros(1, 2, length, length, dtype=torch.float64)
    k = torch.zeros(1, 1, length, length, dtype=torch.float64)
    out = R.stis_attention(q, k, one_hot_values(1, 1, length), scale=1.0)
    assert attended(out[0, 0, 39]) == [7, 23, 31, 32, 33, 34, 35, 36, 37, 38, 39]
    assert attended(out[0, 1, 39]) == [7, 23, 31, 32, 33, 34, 35, 36, 37, 38, 39]
    assert attended(out[0, 0, 16]) == [0, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    assert attended(out[0, 0, 3]) == [0, 1, 2, 3]
    assert attended(out[0, 0, 0]) == [0]
    # uniform weights over the set
    torch.testing.assert_close(out[0, 0, 39].sum(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(out[0, 0, 39][out[0, 0, 39] > 0], torch.tensor(1 / 11, dtype=torch.float64))


def test_block_visibility_by_hand():
    length = 64  # 4 blocks
    q = torch.randn(1, 4, length, 8)
    ck = torch.randn(1, 2, 4, 8)
    visible = R.block_importance(q, ck, 1.0).isfinite()[0, 0]
    assert visible[15].tolist() == [False] * 4  # first block: nothing strictly in the past
    assert visible[16].tolist() == [True, False, False, False]  # block 0 ends at 15 < 16
    assert visible[31].tolist() == [True, False, False, False]  # own block 1 is never scored
    assert visible[32].tolist() == [True, True, False, False]
    assert visible[63].tolist() == [True, True, True, False]


def test_importance_is_mean_of_group_logits():
    q = torch.randn(2, 4, 48, 8, dtype=torch.float64)
    ck = torch.randn(2, 2, 3, 8, dtype=torch.float64)
    imp = R.block_importance(q, ck, 0.5)
    by_hand = (q[0, 2:4, 40] @ ck[0, 1, 1]).mean() * 0.5  # kv head 1 is read by query heads 2, 3
    torch.testing.assert_close(imp[0, 1, 40, 1], by_hand)


@pytest.mark.parametrize(
    ("scores", "n", "expected"),
    [
        ([5.0, 1.0, 3.0, -math.inf, 2.0, 4.0], 4, [0, 5, 2, 4]),  # top-4 by score
        ([1.0, 1.0, 1.0], 4, [0, 1, 2]),  # n = min(4, nb); ties -> lower index first
        ([2.0, 7.0, 7.0, 1.0, 7.0], 2, [1, 2]),  # ties broken by index
        ([0.0, -30.0], 4, [0, -1]),  # probability e^-30 < 1e-10: slot dropped
        ([-math.inf, -math.inf], 4, [-1, -1]),  # no visible block: only the null slot
        ([-990.0], 4, [0]),  # beats the null logit -1e3: probability ~1, kept
        ([-1030.0], 4, [-1]),  # e^-30 below the null logit: dropped
    ],
)
def test_select_blocks_by_hand(scores, n, expected):
    picked = R.select_blocks(torch.tensor([scores]), n)[0].tolist()
    assert picked == expected


def test_ltis_key_set_by_hand():
    length = 100
    q = torch.zeros(1, 1, length, length, dtype=torch.float64)
    k = torch.zeros(1, 1, length, length, dtype=torch.float64)
    block_idx = torch.full((1, 1, length, 4), -1)
    block_idx[0, 0, 99] = torch.tensor([0, 3, -1, -1])
    out = R.ltis_attention(q, k, one_hot_values(1, 1, length), block_idx, scale=1.0)
    assert attended(out[0, 0, 99]) == list(range(16)) + list(range(48, 64)) + [96, 97, 98, 99]
    assert attended(out[0, 0, 5]) == list(range(6))  # no selection: causal own block
    torch.testing.assert_close(out[0, 0, 99].sum(), torch.tensor(1.0, dtype=torch.float64))


def test_compress_keys_windows():
    """Block j's window is keys 16j-16 .. 16j+15 (zero left pad), position-major flattening."""
    k = torch.arange(40, dtype=torch.float64).view(1, 1, 40, 1).expand(1, 1, 40, 2).clone()
    pos = torch.zeros(1, 32, 2, dtype=torch.float64)
    ck = R.compress_keys(k, pos, lambda flat: flat)  # identity "MLP": expose the flattened window
    assert ck.shape == (1, 1, 2, 64)  # floor(40/16) = 2 blocks; keys 32..39 not covered
    assert ck[0, 0, 0, :32].tolist() == [0.0] * 32  # left zero pad
    assert ck[0, 0, 0, 32:].tolist() == [float(i // 2) for i in range(32)]  # keys 0..15, each d=2 wide
    assert ck[0, 0, 1].view(32, 2)[:, 0].tolist() == [float(i) for i in range(32)]  # keys 0..31
    assert R.compress_keys(k[:, :, :15], pos, lambda flat: flat).shape[2] == 0


def test_rope_matches_complex_rotation():
    x = torch.randn(2, 3, 10, 8, dtype=torch.float64)
    out = R.rope(x)
    freqs = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    angle = torch.arange(10, dtype=torch.float64)[:, None] * freqs
    as_complex = torch.complex(x[..., 0::2], x[..., 1::2]) * torch.polar(torch.ones_like(angle), angle)
    expected = torch.stack((as_complex.real, as_complex.imag), dim=-1).flatten(-2)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)  # angles are computed in fp32


def brute_force_blossom(q, k, v, ck, scale, num_selected=4):
    """Per (batch, head, query) loops over explicit key sets: LTIS and STIS outputs, float64."""
    b_, h_, length, d = q.shape
    group = h_ // k.shape[1]
    ltis = torch.zeros_like(q)
    stis = torch.zeros_like(q)
    offsets = [o for o in list(range(8)) + [8 * 2**m for m in range(12)] if o < length]
    for b in range(b_):
        for h in range(h_):
            g = h // group
            for i in range(length):
                # STIS
                keys = [i - o for o in offsets if o <= i]
                stis[b, h, i] = _softmax_attend(q[b, h, i], k[b, g, keys], v[b, g, keys], scale)
                # LTIS selection from the group's mean logit
                visible = [j for j in range(ck.shape[2]) if 16 * j + 15 < i]
                heads = range(g * group, (g + 1) * group)
                imp = {j: sum(float(q[b, hh, i] @ ck[b, g, j]) for hh in heads) / group * scale for j in visible}
                lse = math.log(sum(math.exp(s) for s in imp.values()) + math.exp(-1000.0)) if imp else -1000.0
                ranked = sorted(imp, key=lambda j: (-imp[j], j))[: min(num_selected, ck.shape[2])]
                chosen = [j for j in ranked if math.exp(imp[j] - lse) > 1e-10]
                keys = [16 * j + c for j in chosen for c in range(16)] + list(range(16 * (i // 16), i + 1))
                ltis[b, h, i] = _softmax_attend(q[b, h, i], k[b, g, keys], v[b, g, keys], scale)
    return ltis, stis


def _softmax_attend(query, keys, values, scale):
    weights = torch.softmax(keys @ query * scale, dim=0)
    return weights @ values


@pytest.mark.parametrize("length", [7, 16, 37, 120])
def test_reference_matches_brute_force(length):
    torch.manual_seed(length)
    b, h, g, d = 2, 4, 2, 8
    q = torch.randn(b, h, length, d, dtype=torch.float64) * 2
    k = torch.randn(b, g, length, d, dtype=torch.float64) * 2
    v = torch.randn(b, g, length, d, dtype=torch.float64)
    ck = torch.randn(b, g, length // 16, d, dtype=torch.float64) * 2
    scale = d**-0.5
    block_idx = R.select_blocks(R.block_importance(q, ck, scale), 4)
    if length >= 96:
        assert (block_idx[:, :, 96:] >= 0).all(), "selection must bite: 5+ visible blocks, 4 kept"
    ltis = R.ltis_attention(q, k, v, block_idx, scale)
    stis = R.stis_attention(q, k, v, scale)
    ltis_bf, stis_bf = brute_force_blossom(q, k, v, ck, scale)
    torch.testing.assert_close(stis, stis_bf, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ltis, ltis_bf, atol=1e-10, rtol=1e-10)


def make_attention(**kwargs) -> BlossomAttention:
    torch.manual_seed(0)
    module = BlossomAttention(hidden_size=32, n_heads=4, kv_heads=2, backend="torch", **kwargs).double()
    for p in module.parameters():  # non-trivial gate and compressor, so every path matters
        torch.nn.init.normal_(p, std=0.3)
    return module


@pytest.mark.parametrize("length", [1, 5, 16, 17, 70, 113])
def test_causal_gradients(length):
    module = make_attention()
    x = torch.randn(2, length, 32, dtype=torch.float64, requires_grad=True)
    out = module(x)
    for t in sorted({0, length // 2, length - 1}):
        (grad,) = torch.autograd.grad(out[:, t].sum(), x, retain_graph=True)
        if t + 1 < length:
            assert grad[:, t + 1 :].abs().max().item() == 0.0
        assert grad[:, t].abs().max().item() > 0


def test_right_padding_invariance():
    module = make_attention()
    length = 100
    seq_len = torch.tensor([100, 83, 1])
    x = torch.randn(3, length, 32, dtype=torch.float64)
    out = module(x, seq_len)
    noisy = x.clone()
    for b, n in enumerate(seq_len.tolist()):
        noisy[b, n:] = torch.randn(length - n, 32, dtype=torch.float64) * 100
    out_noisy = module(noisy, seq_len)
    for b, n in enumerate(seq_len.tolist()):
        torch.testing.assert_close(out[b, :n], out_noisy[b, :n], atol=1e-12, rtol=1e-12)
    assert out[1, 83:].abs().max() == 0  # padded positions: both branches 0, out-projection has no bias


def test_padded_positions_are_zero_in_each_branch():
    q = torch.randn(2, 4, 50, 8)
    k, v = torch.randn(2, 2, 50, 8), torch.randn(2, 2, 50, 8)
    seq_len = torch.tensor([50, 20])
    stis = R.stis_attention(q, k, v, 0.3, seq_len)
    idx = R.select_blocks(R.block_importance(q, torch.randn(2, 2, 3, 8), 0.3))
    ltis = R.ltis_attention(q, k, v, idx, 0.3, seq_len)
    for branch in (stis, ltis):
        assert branch[1, :, 20:].abs().max() == 0
        assert branch[1, :, :20].abs().sum(-1).min() > 0


@pytest.mark.parametrize("branches", ["ltis", "stis"])
def test_ablations_use_one_branch(branches):
    module = make_attention(branches=branches)
    x = torch.randn(1, 40, 32, dtype=torch.float64)
    q, k, v = module.project(x)
    gates = module.gates(x).unflatten(-1, (-1, 2)).permute(0, 2, 1, 3)
    if branches == "stis":
        branch = R.stis_attention(q, k, v, module.scale) * gates[..., 1:2]
    else:
        ck = R.compress_keys(k, module.k_intrablock_positions, module.k_compress)
        idx = R.select_blocks(R.block_importance(q, ck, module.scale))
        branch = R.ltis_attention(q, k, v, idx, module.scale) * gates[..., 0:1]
    expected = module.combine_heads(branch.transpose(1, 2).flatten(2))
    torch.testing.assert_close(module(x), expected)


def test_fixed_gate():
    module = make_attention(fixed_gate=0.5)
    x = torch.randn(1, 20, 32, dtype=torch.float64)
    assert torch.all(module.gates(x) == 0.5)


def test_intended_gate_init():
    module = BlossomAttention(hidden_size=32, n_heads=4, kv_heads=2, backend="torch")
    gates = module.gates(torch.randn(1, 3, 32))
    torch.testing.assert_close(gates[..., 0::2], torch.full((1, 3, 4), torch.sigmoid(torch.tensor(-2.0)).item()))
    torch.testing.assert_close(gates[..., 1::2], torch.full((1, 3, 4), torch.sigmoid(torch.tensor(2.0)).item()))


def test_bf16_close_to_fp32():
    module = BlossomAttention(hidden_size=128, n_heads=8, kv_heads=2, backend="torch")
    x = torch.randn(2, 200, 128)
    ref = module(x)
    low = module.to(torch.bfloat16)(x.bfloat16())
    assert low.dtype == torch.bfloat16
    rel = (low.float() - ref).norm() / ref.norm()
    assert rel < 3e-2, rel  # bf16 has 8 mantissa bits: ~1e-2 relative error end to end


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown branches"):
        BlossomAttention(32, 4, 2, backend="torch", branches="none")
    with pytest.raises(ValueError, match="attention_backend"):
        BlossomAttention(32, 4, 2, backend="cuda-magic")
