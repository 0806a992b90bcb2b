"""BlossomRec attention in plain PyTorch: the specification every kernel is tested against.

The math follows the authors' public code (github.com/ronineume/BlossomRec @ 8fe1eb2, see
DESIGN.md section 2), with the exact softmax of its pure-torch path. Everything here is written
for clarity, not memory: each branch builds the boolean [L, L] "query i may read key j" matrix
and runs a masked softmax; block scores are materialised ([B, G, L, L/16]). It works for every
L >= 1, any batch, any float dtype, CPU and GPU; memory is O(L^2) (the kernels are O(L)).

Layout: q [B, H, L, d]; k, v [B, G, L, d]; query head h reads kv head h // (H // G).
Sequences are right-padded; when ``seq_len`` is given, outputs at positions >= seq_len are 0
(they are never read, and zeros keep padded positions finite in the next layer).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK = 16  # selection block size = compression stride
WINDOW = 32  # compression window: the block plus the previous one
NUM_SELECTED = 4  # top-n blocks per query and kv head
NULL_LOGIT = -1e3  # extra logit in the block softmax (the public code's "memory" slot)
KEEP_PROB = 1e-10  # a selected block is used only if its probability exceeds this
LOCAL_WINDOW = 8  # STIS: offsets 0 .. LOCAL_WINDOW - 1, then powers of two


ROPE_BASE = 10000.0


def rope_tables(length: int, dim: int, device: torch.device | str, base: float = ROPE_BASE) -> tuple[Tensor, Tensor]:
    """(cos, sin) [L, dim / 2] fp32 of the rotation angles pos * base^(-2m / dim): the one place
    the angles are computed, so the RoPE kernel rotates by exactly the reference's angles."""
    inv_freq = base ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    angle = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq
    return angle.cos(), angle.sin()


def rope(x: Tensor, base: float = ROPE_BASE) -> Tensor:
    """Rotary embedding on interleaved pairs (x[2m], x[2m+1]) at positions 0..L-1, in fp32."""
    length, dim = x.shape[-2:]
    cos, sin = rope_tables(length, dim, x.device, base)
    pairs = x.float().unflatten(-1, (dim // 2, 2))
    x1, x2 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


def head_dim(qkv_width: int, n_heads: int, kv_heads: int) -> int:
    """d of a fused projection [B, L, (H + 2G) d]: its width shared by H query heads and G k and v heads."""
    return qkv_width // (n_heads + 2 * kv_heads)


def split_heads_rope(qkv: Tensor, n_heads: int, kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """The fused projection's output qkv [B, L, (H + 2G) d] -> q [B, H, L, d], k, v [B, G, L, d],
    with RoPE on q and k (not on v)."""
    b, length, width = qkv.shape
    heads = qkv.view(b, length, n_heads + 2 * kv_heads, head_dim(width, n_heads, kv_heads)).transpose(1, 2)
    q, k, v = heads.split([n_heads, kv_heads, kv_heads], dim=1)
    return rope(q), rope(k), v


def project_split_rope(
    x: Tensor, w_qkv: Tensor, w_gate: Tensor, b_gate: Tensor, n_heads: int, kv_heads: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The model's two projections of x [B, L, D]: split_heads_rope of the qkv projection (no bias)
    and the gate logits x W_gate^T + b_gate [B, L, n]."""
    return *split_heads_rope(F.linear(x, w_qkv), n_heads, kv_heads), F.linear(x, w_gate, b_gate)


def stis_offsets(length: int) -> list[int]:
    """Distances i - j that STIS attends: 0..7, then 8, 16, 32, ... (only those < length)."""
    local = list(range(min(LOCAL_WINDOW, length)))
    powers = []
    offset = LOCAL_WINDOW
    while offset < length:
        powers.append(offset)
        offset *= 2
    return local + powers


def _at_least_fp32(x: Tensor) -> Tensor:
    """Upcast half types to fp32; keep fp32 and fp64 (the fp64 reference stays fp64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _group_queries(q: Tensor, kv_heads: int) -> Tensor:
    """[B, H, L, d] -> [B, G, H/G, L, d]: the query heads that share one kv head."""
    b, h, length, d = q.shape
    return q.view(b, kv_heads, h // kv_heads, length, d)


def _attend_masked(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, scale: float) -> Tensor:
    """Exact softmax attention where query i reads key j iff allowed[..., i, j].

    q [B, G, R, L, d]; k, v [B, G, L, d]; allowed [B or 1, G or 1, L, L] bool (every row has at
    least its own position). The score matmul runs in the input dtype, the softmax in at least
    fp32: for half types this is what "same-dtype reference" means in the kernel tolerance rule.
    """
    scores = _at_least_fp32(torch.einsum("bgrid,bgjd->bgrij", q, k)) * scale
    scores = scores.masked_fill(~allowed[:, :, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.einsum("bgrij,bgjd->bgrid", probs, v)


def _zero_padding(out: Tensor, seq_len: Tensor | None) -> Tensor:
    """Zero the outputs at right-padded positions (>= seq_len) of out [B, H, L, d]."""
    if seq_len is None:
        return out
    positions = torch.arange(out.shape[2], device=out.device)
    keep = positions[None, :] < seq_len.to(out.device)[:, None]
    return torch.where(keep[:, None, :, None], out, torch.zeros((), dtype=out.dtype, device=out.device))


def stis_allowed(length: int, device: torch.device | str = "cpu") -> Tensor:
    """[L, L] bool: query i reads key j iff i - j is one of stis_offsets(L)."""
    distance = torch.arange(length, device=device)[:, None] - torch.arange(length, device=device)[None, :]
    offsets = torch.tensor(stis_offsets(length), device=device)
    return torch.isin(distance, offsets)


def stis_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, seq_len: Tensor | None = None) -> Tensor:
    """Short-term branch: query i attends keys i - o for o in stis_offsets(L), o <= i."""
    b, h, length, d = q.shape
    allowed = stis_allowed(length, q.device)[None, None]
    out = _attend_masked(_group_queries(q, k.shape[1]), k, v, allowed, scale)
    return _zero_padding(out.reshape(b, h, length, d), seq_len)


def compress_keys(k: Tensor, positions: Tensor, mlp: Callable[[Tensor], Tensor]) -> Tensor:
    """One compressed key per block j: MLP over keys 16j-16 .. 16j+15 (zero left pad) + positions.

    k [B, G, L, d]; positions [G, 32, d]; mlp maps 32*d (position-major: n*d + c) -> d.
    Only the first floor(L/16)*16 keys are covered. Returns ck [B, G, L // 16, d].
    """
    b, g, length, d = k.shape
    num_blocks = length // BLOCK
    if num_blocks == 0:
        return k.new_zeros(b, g, 0, d)
    covered = F.pad(k[:, :, : num_blocks * BLOCK], (0, 0, WINDOW - BLOCK, 0))
    windows = covered.unfold(2, WINDOW, BLOCK).transpose(-1, -2)  # [B, G, nb, 32, d]
    windows = windows + positions[None, :, None].to(windows.dtype)
    return mlp(windows.flatten(-2))


def block_importance(q: Tensor, ck: Tensor, scale: float) -> Tensor:
    """Mean over the group's query heads of q_i . ck_j * scale, -inf where block j is not visible.

    Block j is visible to query i iff its last key 16j+15 < i (strictly past, never the query's
    own block). Returns fp32 (fp64 for fp64 inputs) [B, G, L, nb]. Right padding needs no mask: every block visible to
    a valid query lies before it.
    """
    kv_heads, num_blocks, length = ck.shape[1], ck.shape[2], q.shape[2]
    logits = torch.einsum("bgrld,bgnd->bgrln", _group_queries(_at_least_fp32(q), kv_heads), _at_least_fp32(ck))
    importance = logits.mean(dim=2) * scale
    block_end = torch.arange(num_blocks, device=q.device) * BLOCK + BLOCK - 1
    visible = block_end[None, :] < torch.arange(length, device=q.device)[:, None]  # [L, nb]
    return importance.masked_fill(~visible, float("-inf"))


def select_blocks(importance: Tensor, num_selected: int = NUM_SELECTED) -> Tensor:
    """Top-n blocks per query by softmax([importance, NULL_LOGIT]); -1 marks an unused slot.

    n = min(num_selected, nb). A slot is used only if its probability > KEEP_PROB. Ties go to the
    lower block index (stable sort), so the selection is a function of the scores alone.
    Returns int64 [B, G, L, n].
    """
    n = min(num_selected, importance.shape[-1])
    null = importance.new_full(importance.shape[:-1] + (1,), NULL_LOGIT)
    probs = torch.softmax(torch.cat([importance, null], dim=-1), dim=-1)[..., :-1]
    order = torch.sort(probs, dim=-1, descending=True, stable=True)
    top_probs, top_idx = order.values[..., :n], order.indices[..., :n]
    return torch.where(top_probs > KEEP_PROB, top_idx, torch.full_like(top_idx, -1))


def ltis_allowed(block_idx: Tensor, length: int) -> Tensor:
    """[B, G, L, L] bool: query i reads the 16 keys of each block in block_idx[..., i, :] (-1 =
    unused slot) and its own block causally (keys 16*floor(i/16) .. i)."""
    b, g, _, n = block_idx.shape
    device = block_idx.device
    num_blocks = length // BLOCK
    query = torch.arange(length, device=device)
    own = (query[:, None] // BLOCK == query[None, :] // BLOCK) & (query[None, :] <= query[:, None])
    # one column per block plus two spare ones: `num_blocks` (keys past the last full block,
    # never selectable) and `num_blocks + 1` (where unused slots point); both stay False
    selected = torch.zeros(b, g, length, num_blocks + 2, dtype=torch.bool, device=device)
    selected.scatter_(-1, torch.where(block_idx < 0, num_blocks + 1, block_idx), True)
    selected[..., num_blocks + 1] = False
    key_block = (query // BLOCK).clamp(max=num_blocks)
    return selected[..., key_block] | own


def ltis_attention(
    q: Tensor, k: Tensor, v: Tensor, block_idx: Tensor, scale: float, seq_len: Tensor | None = None
) -> Tensor:
    """Long-term branch: one exact softmax over the selected blocks' keys and the causal own block."""
    b, h, length, d = q.shape
    allowed = ltis_allowed(block_idx, length)
    out = _attend_masked(_group_queries(q, k.shape[1]), k, v, allowed, scale)
    return _zero_padding(out.reshape(b, h, length, d), seq_len)


def ltis_select(
    q: Tensor,
    k: Tensor,
    positions: Tensor,
    mlp: Callable[[Tensor], Tensor],
    scale: float,
    num_selected: int = NUM_SELECTED,
) -> Tensor:
    """Compress keys, score blocks and pick the top-n: the non-differentiable half of LTIS."""
    with torch.no_grad():
        ck = compress_keys(k, positions, mlp)
        return select_blocks(block_importance(q, ck, scale), num_selected)


def combine_gated(ltis: Tensor | None, stis: Tensor | None, gates: Tensor) -> Tensor:
    """out_h = g_ltis,h * ltis_h + g_stis,h * stis_h; gates [B, L, 2H] already through sigmoid.

    Gate layout follows the public code: channel 2h gates LTIS and 2h+1 gates STIS of head h.
    A missing branch (ablation) contributes nothing.
    """
    gates = gates.unflatten(-1, (-1, 2)).permute(0, 2, 1, 3)  # [B, H, L, 2]
    out = 0
    if ltis is not None:
        out = out + gates[..., 0:1] * ltis
    if stis is not None:
        out = out + gates[..., 1:2] * stis
    return out


def gated_sum(ltis: Tensor, stis: Tensor, gate_logits: Tensor) -> Tensor:
    """Both branches through the learned gate: combine_gated with sigmoid(gate_logits [B, L, 2H])."""
    return combine_gated(ltis, stis, torch.sigmoid(gate_logits))


def merge_heads(x: Tensor) -> Tensor:
    """[B, H, L, d] -> [B, L, H d], what the output projection reads; a view (no copy) when x is
    stored [B, L, H, d], as the kernels' outputs are."""
    return x.transpose(1, 2).flatten(2)


def gated_merge(ltis: Tensor, stis: Tensor, gate_logits: Tensor, weight: Tensor) -> Tensor:
    """The attention's output [B, L, D]: gated_sum, heads merged, output projection weight [D, H d]."""
    return F.linear(merge_heads(gated_sum(ltis, stis, gate_logits)), weight)


def default_scale(head_dim: int) -> float:
    """Softmax scale d^-1/2, shared by scoring and both branches."""
    return 1.0 / math.sqrt(head_dim)
