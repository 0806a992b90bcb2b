"""The parity harness (blossom/parity.py) against stand-ins for the authors' BlossomAttn.py.

The real file is not shipped (CI cannot fetch it): a stand-in with the authors' parameter names and
call signature, computing with our reference, must agree; one with the gate channels swapped (a
layout slip the harness exists to catch) must not. `blossom parity --authors-code DIR` runs the
real comparison; its last result is in results/parity/.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from blossom import parity
from blossom.cli import main
from blossom.errors import BlossomError

STAND_IN = textwrap.dedent('''
    import torch
    from torch import nn
    from blossom.attention import reference as R

    SWAP_GATES = {swap}

    def power_bool_mask(seq_len, device=torch.device("cuda"), causal=False, padding_mask=None):
        return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device)

    class SparseAttention(nn.Module):
        def __init__(self, dim, dim_head, heads, kv_heads, compress_block_size, **_):
            super().__init__()
            self.h, self.g = heads, kv_heads
            self.rotary_emb = nn.Module()
            self.rotary_emb.freqs = nn.Parameter(torch.ones(dim_head // 2), requires_grad=False)
            self.to_qkv = nn.Linear(dim, (heads + 2 * kv_heads) * dim_head, bias=False)
            self.k_intrablock_positions = nn.Parameter(torch.zeros(kv_heads, compress_block_size, dim_head))
            width = compress_block_size * dim_head
            self.k_compress = nn.Sequential(nn.Identity(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, dim_head))
            self.to_strategy_combine = nn.Sequential(nn.Linear(dim, 2 * heads), nn.Sigmoid())
            self.combine_heads = nn.Linear(heads * dim_head, dim, bias=False)

        def forward(self, x, attention_mask=None):
            seq_len = attention_mask.sum(dim=1)
            q, k, v = R.split_heads_rope(self.to_qkv(x), self.h, self.g)
            scale = R.default_scale(q.shape[-1])
            idx = R.ltis_select(q, k, self.k_intrablock_positions, self.k_compress[1:], scale)
            ltis = R.ltis_attention(q, k, v, idx, scale, seq_len)
            stis = R.stis_attention(q, k, v, scale, seq_len)
            gates = self.to_strategy_combine(x)
            if SWAP_GATES:
                gates = gates.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
            return self.combine_heads(R.combine_gated(ltis, stis, gates).transpose(1, 2).flatten(2))
''')


def stand_in(tmp_path: Path, swap: bool) -> Path:
    folder = tmp_path / ("swapped" if swap else "faithful")
    folder.mkdir()
    (folder / "BlossomAttn.py").write_text(STAND_IN.format(swap=swap))
    return folder


def test_faithful_stand_in_agrees(tmp_path: Path) -> None:
    rows = parity.run_parity(stand_in(tmp_path, swap=False), ["torch"], [[96, 40]])
    assert len(rows) == 1 and set(rows[0].errors) == {"out", *(f"d {n}" for n in parity.GRADIENTS)}
    assert rows[0].worst <= parity.TOLERANCE, parity.format_rows(rows)


def test_swapped_gates_are_caught(tmp_path: Path) -> None:
    rows = parity.run_parity(stand_in(tmp_path, swap=True), ["torch"], [[96, 40]])
    assert rows[0].errors["out"] > 100 * parity.TOLERANCE, parity.format_rows(rows)


def test_missing_checkout_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BlossomError, match="no BlossomAttn.py"):
        parity.load_authors(tmp_path)


def test_cli_exit_code_says_whether_they_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "parity.md"
    args = ["parity", "--backends", "torch", "--lengths", "40", "--out", str(out)]
    assert main([*args, "--authors-code", str(stand_in(tmp_path, swap=False))]) == 0
    assert "the two agree" in out.read_text()
    assert main([*args, "--authors-code", str(stand_in(tmp_path, swap=True))]) == 1
    assert "DIFFER" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["parity", "--authors-code", str(stand_in(tmp_path, swap=False)), "--lengths", "32", "--device", "cuda"]
    assert main(args) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_both_backends_on_the_gpu(tmp_path: Path) -> None:
    """Both codes on the GPU, ours as compiled kernels: the harness moves layers and inputs there."""
    rows = parity.run_parity(stand_in(tmp_path, swap=False), ["torch", "triton"], [[200, 80]], device="cuda")
    assert max(r.worst for r in rows) <= parity.TOLERANCE, parity.format_rows(rows)
    assert parity.run_parity(stand_in(tmp_path, swap=True), ["triton"], [[200, 80]], device="cuda")[0].errors["out"] > 100 * parity.TOLERANCE
