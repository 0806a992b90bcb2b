"""Key compression for the selection as one Triton kernel (forward only).

Contract: reference.compress_keys(k, positions, mlp) for BlossomRec's compressor MLP
Linear(32d -> 32d), ReLU, Linear(32d -> d), where selection is all that reads the result, so no
gradient is needed (official BlossomRec never trains the compressor; the `compressed` variant,
which does, keeps the PyTorch path).

In PyTorch that is a left pad of K, the overlapping windows (unfold), the positions added into a
copy, two GEMMs and a ReLU: six launches and two [B, G, L/16, 32d] intermediates. Here one program
per (64 blocks, batch, kv head) reads the windows' key rows straight from K (rows before 0 are the
pad: zeros), adds the positions, and runs both layers on tensor cores, one chunk of 128 hidden
units at a time (the hidden layer never leaves registers). H100, bf16, B = 64: 65 us against 160 us
at L = 4096, 25-32 us against 39-53 us at L = 200-1024. Rounding follows the PyTorch path in the
input dtype: the window, the hidden layer (after its bias) and the output are rounded to it, and
products accumulate in fp32; the keys it gave there were identical to the PyTorch path's.

fp16 and bf16 only on a GPU: in fp32, cuBLAS's SGEMMs are faster than this kernel's exact fp32
products (and 3xTF32 products were no faster at the training shape), so fp32 keeps the PyTorch path.
The Triton interpreter runs the kernel in fp32 with exact products: that is what CPU tests check.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl
from torch import Tensor, nn

from blossom.attention import reference
from blossom.attention.triton_common import block_d, dot, dot_mode, interpreted, sm_count

_HIDDEN_CHUNK = 128  # the narrow tile's hidden units per step: a [64, 128] fp32 accumulator over 4 warps
# window rows per dot (K = 4 d). H100, B = 64, bf16 (2, 4, 8 rows x 64, 128 hidden units): 4 x 128
# was fastest or within 10% at every L: 25 us at L = 200, 65 us at 4096 (one row per dot: 56, 143)
_ROWS_PER_STEP = 4
# Windows per program, hidden units per step and warps: the narrow tile (64, _HIDDEN_CHUNK, 4) below
# _WIDE_FROM_BLOCKS blocks (L = 2048), the wide one, never split, from there. Each program reads all
# of W1 (512 KiB at d = 16) from L2, and the narrow tile's programs (218 registers, 2 per SM) waited
# on it: twice the windows and hidden units per step halve those reads per window and double the
# products per load. H100, B = 64, bf16, alone, CUDA graphs (session 23): the wide tile 37.5 against
# 47.8 us at L = 4096, 72.7 against 94.1 at 8192, outputs identical; at L = 2048 19.4 against 23.9
# (split in two, for 128 tiles and 132 SMs, 22.2); at L = 1024 (64 blocks, half its windows empty)
# 19.1 against the split narrow tile's 15.3. With few sequences its programs leave SMs idle, so it
# also needs _WIDE_MIN_SM_SHARE x SMs tiles: at L = 2048-8192 and B = 1-64, 0.77-0.80x the narrow
# tile's time with 128 or more tiles, 1.20-1.22x with 64, 1.85-2.63x with 2-32 (18 against 7-10 us)
_WIDE_TILE = (128, 256, 8)
_WIDE_FROM_BLOCKS, _WIDE_MIN_SM_SHARE = 128, 0.75
# The hidden units split across programs while tiles x split < _SPLIT_BELOW x SMs (at B = 64: 2 programs
# per tile at L = 200-1024, 128 tiles; none from 2048, 256+ tiles). Alone, CUDA graphs, H100, bf16, split 2
# against none: 0.90x / 0.93x / 0.87x at L = 200 / 512 / 1024, 1.04-1.11x at 2048-8192 (session 20)
_SPLIT_BELOW = 1  # programs per SM the split stops at
_COMBINE_ROWS = 128
_INTERPRETER_SPLIT = 1  # what CPU tests run (they set 2 to cover the split path)


@triton.jit
def _compress_fwd(
    K, POS, W1, B1, W2, B2, CK, PART,
    sk_b, sk_g, sk_l, sk_d,
    sp_g, sp_n, sp_d,
    sw1_o, sw1_i, sw2_o, sw2_i,
    sc_b, sc_g, sc_n, sc_d,
    num_blocks, kv_heads,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, WINDOW: tl.constexpr, STRIDE: tl.constexpr,
    HIDDEN: tl.constexpr, CHUNK: tl.constexpr, ROWS: tl.constexpr, BLOCK_J: tl.constexpr, PRECISION: tl.constexpr,
    SPLIT: tl.constexpr,
):  # fmt: skip
    """ck [BLOCK_J blocks, d] of one (batch, kv head): MLP(window + positions) per block. Each
    step takes ROWS window rows (a [BLOCK_J, ROWS * d] tile against ROWS * d columns of W1):
    fewer, larger dots than one row at a time, whose accumulation chain bounds the kernel."""
    b = tl.program_id(1) // kv_heads
    g = tl.program_id(1) % kv_heads
    j = tl.program_id(0) * BLOCK_J + tl.arange(0, BLOCK_J)
    j_ok = j < num_blocks
    col = tl.arange(0, ROWS * BLOCK_D)  # (window row r, feature e) of a step's tile
    r = col // BLOCK_D
    e = col % BLOCK_D
    e_ok = e < HEAD_DIM
    c = tl.arange(0, CHUNK)
    f = tl.arange(0, BLOCK_D)  # output feature
    f_ok = f < HEAD_DIM
    dtype = K.dtype.element_ty
    k_base = K + b.to(tl.int64) * sk_b + g * sk_g
    first = j * STRIDE - (WINDOW - STRIDE)  # window j: keys 16j - 16 .. 16j + 15 (zero left pad)
    out = tl.zeros([BLOCK_J, BLOCK_D], tl.float32)
    part = tl.program_id(2)  # SPLIT > 1: this program's share of the hidden units, its output a partial sum
    for c0 in range(part * (HIDDEN // SPLIT), (part + 1) * (HIDDEN // SPLIT), CHUNK):
        hidden = tl.zeros([BLOCK_J, CHUNK], tl.float32)
        for n0 in range(0, WINDOW, ROWS):
            key = first[:, None] + (n0 + r)[None, :]
            rows = tl.load(k_base + key * sk_l + (e * sk_d)[None, :],
                           mask=(key >= 0) & j_ok[:, None] & e_ok[None, :], other=0.0)
            pos = tl.load(POS + g * sp_g + (n0 + r) * sp_n + e * sp_d, mask=e_ok, other=0.0).to(dtype)
            window = (rows.to(tl.float32) + pos.to(tl.float32)[None, :]).to(dtype)
            w1 = tl.load(W1 + (c0 + c)[None, :] * sw1_o + ((n0 + r) * HEAD_DIM + e)[:, None] * sw1_i,
                         mask=e_ok[:, None], other=0.0)  # [ROWS d, CHUNK]: W1[c0 + c, (n0 + r) d + e]
            hidden += dot(window, w1, PRECISION)
        hidden = hidden + tl.load(B1 + c0 + c).to(tl.float32)[None, :]
        hidden = tl.maximum(hidden.to(dtype), 0.0).to(dtype)
        w2 = tl.load(W2 + f[None, :] * sw2_o + (c0 + c)[:, None] * sw2_i, mask=f_ok[None, :], other=0.0)
        out += dot(hidden, w2, PRECISION)  # [CHUNK, d]: W2[f, c0 + c]
    if SPLIT > 1:  # partials [SPLIT, B * G, num_blocks, BLOCK_D], summed by _compress_combine
        rows = (part * tl.num_programs(1) + tl.program_id(1)).to(tl.int64) * num_blocks + j
        tl.store(PART + rows[:, None] * BLOCK_D + f[None, :], out, mask=j_ok[:, None])
    else:
        out = out + tl.load(B2 + f, mask=f_ok, other=0.0).to(tl.float32)[None, :]
        ck = CK + b.to(tl.int64) * sc_b + g * sc_g + j[:, None] * sc_n + f[None, :] * sc_d
        tl.store(ck, out.to(CK.dtype.element_ty), mask=j_ok[:, None] & f_ok[None, :])


@triton.jit
def _compress_combine(PART, B2, CK, sc_b, sc_g, sc_n, sc_d, num_blocks, kv_heads, n_rows,
                      HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, SPLIT: tl.constexpr, ROWS: tl.constexpr):  # fmt: skip
    """ck rows [ROWS] (flat (b, g, block)) = the SPLIT partials summed in order, plus the bias, rounded."""
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    r_ok = r < n_rows
    f = tl.arange(0, BLOCK_D)
    f_ok = f < HEAD_DIM
    out = tl.zeros([ROWS, BLOCK_D], tl.float32)
    for p in tl.static_range(SPLIT):
        out += tl.load(PART + (p * n_rows + r.to(tl.int64))[:, None] * BLOCK_D + f[None, :], mask=r_ok[:, None], other=0.0)
    out = out + tl.load(B2 + f, mask=f_ok, other=0.0).to(tl.float32)[None, :]
    bg = r // num_blocks
    ck = CK + (bg // kv_heads).to(tl.int64) * sc_b + (bg % kv_heads) * sc_g + (r % num_blocks) * sc_n
    tl.store(ck[:, None] + f[None, :] * sc_d, out.to(CK.dtype.element_ty), mask=r_ok[:, None] & f_ok[None, :])


def _compressor_layers(mlp: nn.Module) -> tuple[nn.Linear, nn.Linear] | None:
    """(first, second) Linear of a BlossomRec compressor (Linear, ReLU, Linear with biases), else None."""
    if (isinstance(mlp, nn.Sequential) and len(mlp) == 3 and isinstance(mlp[1], nn.ReLU)
            and all(isinstance(m, nn.Linear) and m.bias is not None for m in (mlp[0], mlp[2]))):
        return mlp[0], mlp[2]
    return None


def _kernel_applies(k: Tensor, positions: Tensor, mlp: nn.Module) -> bool:
    """The kernel's case: BlossomRec's compressor for this head dim, in k's dtype (fp16 or bf16 on
    a GPU), and no gradient wanted from k, the positions or the MLP."""
    layers = _compressor_layers(mlp)
    g, d = k.shape[1], k.shape[3]
    width = reference.WINDOW * d
    if layers is None or width % _HIDDEN_CHUNK or positions.shape != (g, reference.WINDOW, d):
        return False
    if layers[0].weight.shape != (width, width) or layers[1].weight.shape != (d, width):
        return False
    params = [layers[0].weight, layers[0].bias, layers[1].weight, layers[1].bias]  # all of them: ReLU has none
    wants_grad = torch.is_grad_enabled() and any(t.requires_grad for t in [k, positions, *params])
    # fp32 on a GPU: cuBLAS's SGEMMs beat the kernel's exact fp32 products (H100: 0.83 against
    # 5.2 ms at B = 2048, L = 200); the interpreter runs it in fp32, which is how CPU CI checks it
    fp32_on_gpu = k.dtype == torch.float32 and not interpreted()
    return not wants_grad and not fp32_on_gpu and all(p.dtype == k.dtype for p in params)


def compress_keys(k: Tensor, positions: Tensor, mlp: nn.Module) -> Tensor:
    """reference.compress_keys(k, positions, mlp), forward only: ck [B, G, L // 16, d] in k's dtype.

    k [B, G, L, d] (any strides, fp16/bf16 on a GPU, or under TRITON_INTERPRET=1); positions
    [G, 32, d]; mlp BlossomRec's Linear(32d, 32d), ReLU, Linear(32d, d) in k's dtype. Any other case
    (fp32 on a GPU, another MLP or dtype, a gradient wanted) is computed by the reference.
    """
    if not _kernel_applies(k, positions, mlp):
        return reference.compress_keys(k, positions, mlp)
    b, g, length, d = k.shape
    num_blocks = length // reference.BLOCK
    ck = k.new_empty(b, g, num_blocks, d)
    if num_blocks == 0:
        return ck
    first, second = mlp[0], mlp[2]
    block_j, chunk, warps, split = _launch(num_blocks, reference.WINDOW * d, b * g, ck.device)
    width = block_d(d)
    part = torch.empty(split, b * g * num_blocks, width, device=k.device, dtype=torch.float32) if split > 1 else None
    _compress_fwd[(triton.cdiv(num_blocks, block_j), b * g, split)](
        k, positions, first.weight, first.bias, second.weight, second.bias, ck, part,
        *k.stride(), *positions.stride(), *first.weight.stride(), *second.weight.stride(), *ck.stride(),
        num_blocks, g,
        HEAD_DIM=d, BLOCK_D=width, WINDOW=reference.WINDOW, STRIDE=reference.BLOCK,
        HIDDEN=reference.WINDOW * d, CHUNK=chunk, ROWS=_ROWS_PER_STEP, BLOCK_J=block_j, PRECISION=dot_mode(k.dtype),
        SPLIT=split, num_warps=warps,
    )  # fmt: skip
    if split > 1:
        n_rows = b * g * num_blocks
        _compress_combine[(triton.cdiv(n_rows, _COMBINE_ROWS),)](
            part, second.bias, ck, *ck.stride(), num_blocks, g, n_rows, HEAD_DIM=d, BLOCK_D=width, SPLIT=split,
            ROWS=_COMBINE_ROWS,
        )  # fmt: skip
    return ck


def _launch(num_blocks: int, hidden: int, sequences: int, device: torch.device) -> tuple[int, int, int, int]:
    """(windows per program, hidden units per step, warps, programs per tile) for sequences (batch x
    kv heads) of num_blocks blocks: the wide tile, unsplit, from _WIDE_FROM_BLOCKS blocks where its
    step divides the hidden units and its tiles fill _WIDE_MIN_SM_SHARE of the SMs; else the narrow
    one (fewer windows for fewer blocks), split as _split says."""
    block_j, chunk, warps = _WIDE_TILE
    if (num_blocks >= _WIDE_FROM_BLOCKS and hidden % chunk == 0
            and triton.cdiv(num_blocks, block_j) * sequences >= _WIDE_MIN_SM_SHARE * sm_count(device)):
        return block_j, chunk, warps, 1
    block_j = min(64, max(16, triton.next_power_of_2(num_blocks)))
    return block_j, _HIDDEN_CHUNK, 4, _split(triton.cdiv(num_blocks, block_j) * sequences, hidden, device)


def _split(tiles: int, hidden: int, device: torch.device) -> int:
    """Programs per narrow tile of windows, each taking a share of the hidden units: several where the
    tiles alone would leave SMs idle (L = 512 at B = 64: 128 tiles for 132 SMs), 1 otherwise."""
    chunks = hidden // _HIDDEN_CHUNK
    if interpreted() or device.type != "cuda":
        return _INTERPRETER_SPLIT if chunks % _INTERPRETER_SPLIT == 0 else 1
    split = 1
    while split * 2 <= chunks and chunks % (split * 2) == 0 and tiles * split < _SPLIT_BELOW * sm_count(device):
        split *= 2
    return split
