"""BlossomAttention: projections, RoPE, LTIS + STIS branches, sigmoid gate, head merge."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blossom.attention import reference
from blossom.attention.backends import get_backend

BRANCHES = ("both", "ltis", "stis")


class BlossomAttention(nn.Module):
    """One BlossomRec attention (DESIGN section 2), the parameters of the public SparseAttention.

    branches: "both" (the model), "ltis" or "stis" (ablations: w/o STIS, w/o LTIS).
    fixed_gate: if set, every gate is this constant instead of the learned sigmoid (ablation).
    compressed: add NSA's compressed-attention branch (the `improved` variant, see
        `compressed_attention`); it belongs to the long-term side, so it runs whenever LTIS does.
    """

    def __init__(
        self,
        hidden_size: int = 128,
        n_heads: int = 8,
        kv_heads: int = 2,
        num_selected: int = reference.NUM_SELECTED,
        backend: str = "auto",
        branches: str = "both",
        fixed_gate: float | None = None,
        compressed: bool = False,
    ) -> None:
        super().__init__()
        if hidden_size % n_heads or n_heads % kv_heads:
            raise ValueError(f"need n_heads | hidden_size and kv_heads | n_heads, got {hidden_size}, {n_heads}, {kv_heads}")
        if branches not in BRANCHES:
            raise ValueError(f"unknown branches {branches!r}; choose one of {', '.join(BRANCHES)}")
        self.n_heads, self.kv_heads = n_heads, kv_heads
        self.head_dim = hidden_size // n_heads
        self.num_selected = num_selected
        self.branches = branches
        self.fixed_gate = fixed_gate
        self.backend = get_backend(backend)
        self.scale = reference.default_scale(self.head_dim)
        d = self.head_dim
        self.to_qkv = nn.Linear(hidden_size, (n_heads + 2 * kv_heads) * d, bias=False)
        self.k_intrablock_positions = nn.Parameter(torch.zeros(kv_heads, reference.WINDOW, d))
        window_dim = reference.WINDOW * d
        self.k_compress = nn.Sequential(nn.Linear(window_dim, window_dim), nn.ReLU(), nn.Linear(window_dim, d))
        self.gate = nn.Linear(hidden_size, 2 * n_heads)
        self.combine_heads = nn.Linear(n_heads * d, hidden_size, bias=False)
        self.compressed = compressed
        if compressed:
            self.v_intrablock_positions = nn.Parameter(torch.zeros(kv_heads, reference.WINDOW, d))
            self.v_compress = nn.Sequential(nn.Linear(window_dim, window_dim), nn.ReLU(), nn.Linear(window_dim, d))
            # one learned key/value slot every query sees (NSA's compressed memory kv; it is what the public
            # code's null logit stands in for): no query is left with nothing to attend
            self.compressed_memory_kv = nn.Parameter(torch.zeros(2, kv_heads, 1, d))
            self.compressed_gate = nn.Linear(hidden_size, n_heads)
        self.reset_gate()

    def reset_gate(self) -> None:
        """The intended gate init: weight 0, bias -2 (LTIS) / +2 (STIS), i.e. favour local first.

        The compressed branch (if any) starts like LTIS, at bias -2 (NSA's init for its coarse branches).
        """
        nn.init.zeros_(self.gate.weight)
        with torch.no_grad():
            self.gate.bias.copy_(torch.tensor([-2.0, 2.0] * self.n_heads))
        if self.compressed:
            nn.init.zeros_(self.compressed_gate.weight)
            nn.init.constant_(self.compressed_gate.bias, -2.0)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, L, D] -> q [B, H, L, d], k, v [B, G, L, d]; RoPE on q and k."""
        return self.backend.split_heads(self.to_qkv(x), self.n_heads, self.kv_heads)

    def gates(self, x: Tensor) -> Tensor:
        """[B, L, 2H] gate values in (0, 1); channel 2h is LTIS of head h, 2h+1 STIS."""
        if self.fixed_gate is not None:
            return x.new_full(x.shape[:-1] + (2 * self.n_heads,), self.fixed_gate)
        return torch.sigmoid(self.gate(x))

    def compressed_gates(self, x: Tensor) -> Tensor:
        """[B, H, L, 1] gate of the compressed branch per head and token."""
        if self.fixed_gate is not None:
            return x.new_full((x.shape[0], self.n_heads, x.shape[1], 1), self.fixed_gate)
        return torch.sigmoid(self.compressed_gate(x)).transpose(1, 2)[..., None]

    def compressed_attention(self, q: Tensor, ck: Tensor, v: Tensor, seq_len: Tensor | None) -> Tensor:
        """NSA's compressed-attention branch: query i attends the compressed blocks it may score.

        The keys are the compressed keys ck the selection scores (so the compressor now learns from the
        loss, which official BlossomRec never lets it do), the values a second MLP over the same windows
        of V; block j is visible iff 16j+15 < i (the selection's rule: strictly past, causal), plus the
        always-visible memory slot. One exact softmax per query over <= L/16 + 1 keys, through SDPA with
        a [L, nb+1] boolean mask, so either backend runs it: O(L^2 d / 16) time, and on a GPU the
        memory-efficient kernel keeps memory O(L) (the CPU math path materialises [B, H, L, nb+1]).
        """
        group = self.n_heads // self.kv_heads
        cv = reference.compress_keys(v, self.v_intrablock_positions, self.v_compress)
        memory_k, memory_v = (m.expand(q.shape[0], -1, -1, -1).to(q.dtype) for m in self.compressed_memory_kv)
        keys = torch.cat([memory_k, ck.to(q.dtype)], dim=2).repeat_interleave(group, dim=1)
        values = torch.cat([memory_v, cv.to(q.dtype)], dim=2).repeat_interleave(group, dim=1)
        length, num_blocks = q.shape[2], ck.shape[2]
        block_end = torch.arange(num_blocks, device=q.device) * reference.BLOCK + reference.BLOCK - 1
        visible = block_end[None, :] < torch.arange(length, device=q.device)[:, None]  # [L, nb]
        visible = F.pad(visible, (1, 0), value=True)  # the memory slot
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible, scale=self.scale)
        return reference._zero_padding(out, seq_len)

    def forward(self, x: Tensor, seq_len: Tensor | None = None) -> Tensor:
        """x [B, L, D] right-padded, seq_len [B] -> [B, L, D]."""
        ops = self.backend
        learned_gate = self.branches == "both" and self.fixed_gate is None  # the model
        if learned_gate and not self.compressed:  # one call: the backend may fuse the whole layer
            return ops.layer(x, self.to_qkv.weight, self.gate.weight, self.gate.bias, self.n_heads, self.kv_heads,
                             self._choose_blocks, self.scale, seq_len, self.combine_heads.weight)  # fmt: skip
        if learned_gate:  # both projections of x at once: the backend may run them as one GEMM
            q, k, v, gate_logits = ops.project(x, self.to_qkv.weight, self.gate.weight, self.gate.bias, self.n_heads,
                                               self.kv_heads)  # fmt: skip
        else:
            q, k, v = self.project(x)
        if self.branches == "stis":
            return self._merge(None, ops.stis(q, k, v, self.scale, seq_len), x)
        # selection passes no gradient: the compressor records a graph only for the compressed branch
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.compressed):
            ck = ops.compress(k, self.k_intrablock_positions, self.k_compress)
        block_idx = ops.select(q.detach(), ck.detach(), self.scale, self.num_selected)
        if self.branches == "ltis":
            out = self._merge(ops.ltis(q, k, v, block_idx, self.scale, seq_len), None, x)
        elif learned_gate:  # one call: the backend may fuse branches, gate and projection
            out = ops.attend(q, k, v, block_idx, self.scale, seq_len, gate_logits, self.combine_heads.weight)
        else:
            out = self._merge(*ops.branches(q, k, v, block_idx, self.scale, seq_len), x)
        if self.compressed:  # the projection is linear: project the compressed branch on its own
            compressed = self.compressed_gates(x) * self.compressed_attention(q, ck, v, seq_len)
            out = out + self.combine_heads(reference.merge_heads(compressed))
        return out

    def _choose_blocks(self, q: Tensor, k: Tensor) -> Tensor:
        """LTIS's block choice for ops.layer, which calls it without gradient: the compressed keys,
        then the top blocks of every query."""
        ck = self.backend.compress(k, self.k_intrablock_positions, self.k_compress)
        return self.backend.select(q, ck, self.scale, self.num_selected)

    def _merge(self, ltis: Tensor | None, stis: Tensor | None, x: Tensor) -> Tensor:
        """Ablations (one branch, or constant gates): gated sum, heads merged, output projection."""
        return self.combine_heads(reference.merge_heads(reference.combine_gated(ltis, stis, self.gates(x))))
