"""Independent parity with the authors' attention: their SparseAttention vs our BlossomAttention.

The authors' code (github.com/ronineume/BlossomRec @ 8fe1eb2, `BlossomAttn.py`) is not shipped
here: point `--authors-code` at a checkout of it. Its pure-torch path (use_triton_kernel=False: its
Triton kernel's normalisation is the quirk DESIGN 2.3 describes, so the exact-softmax path is the
one our reference follows) gets random weights, ours gets the same ones, and both run one
right-padded batch: outputs at valid positions and the gradients of the input and of every shared
parameter must agree to fp32 rounding. Their code needs einops, einx and rotary-embedding-torch.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn

from blossom.attention.module import BlossomAttention
from blossom.errors import BlossomError

AUTHORS_CODE = "github.com/ronineume/BlossomRec @ 8fe1eb2"
# the public model's SparseAttention arguments (their blossomrec.py), at hidden 128 and 8 heads
AUTHORS_KWARGS = dict(dim=128, dim_head=16, heads=8, compress_block_size=32, stride=16, selection_block_size=16,
                      num_selected_blocks=4, kv_heads=2, causal=True, use_triton_kernel=False)
# ours <- theirs: every parameter both layers use
SHARED = {"to_qkv.weight": "to_qkv.weight", "k_intrablock_positions": "k_intrablock_positions",
          "k_compress.0.weight": "k_compress.1.weight", "k_compress.0.bias": "k_compress.1.bias",
          "k_compress.2.weight": "k_compress.3.weight", "k_compress.2.bias": "k_compress.3.bias",
          "gate.weight": "to_strategy_combine.0.weight", "gate.bias": "to_strategy_combine.0.bias",
          "combine_heads.weight": "combine_heads.weight"}
# the gradients compared (selection passes none to the compressor in either code)
GRADIENTS = {"x": "x", "to_qkv.weight": "to_qkv.weight", "gate.weight": "to_strategy_combine.0.weight",
             "gate.bias": "to_strategy_combine.0.bias", "combine_heads.weight": "combine_heads.weight"}
TOLERANCE = 1e-5  # relative (Frobenius) in fp32: both sides differ only by summation order


@dataclass(frozen=True)
class Row:
    """One (backend, L) comparison: relative errors of the valid outputs and of each gradient."""

    backend: str
    length: int
    lengths: tuple[int, ...]
    errors: dict[str, float]

    @property
    def worst(self) -> float:
        return max(self.errors.values())


def load_authors(code_dir: Path, device: str = "cpu") -> ModuleType:
    """Import BlossomAttn.py from a checkout of the authors' repository, its STIS mask built on `device`."""
    if not (Path(code_dir) / "BlossomAttn.py").is_file():
        raise BlossomError(f"no BlossomAttn.py in {code_dir}: clone {AUTHORS_CODE.split(' @ ')[0]} and check out 8fe1eb2")
    sys.path.insert(0, str(code_dir))
    sys.modules.pop("BlossomAttn", None)  # another checkout may have been imported before
    try:
        module = importlib.import_module("BlossomAttn")
    except ImportError as err:
        raise BlossomError(f"cannot import the authors' code ({err}); it needs: pip install einops einx rotary-embedding-torch") from err
    finally:
        sys.path.remove(str(code_dir))
    # their STIS mask is built on CUDA unless told otherwise
    module.power_bool_mask = partial(module.power_bool_mask, device=torch.device(device))
    return module


def paired_layers(authors: ModuleType, backend: str, device: str = "cpu", seed: int = 0) -> tuple[nn.Module, BlossomAttention]:
    """Their layer with random weights (rotary frequencies kept) and ours with the same weights, on `device`."""
    torch.manual_seed(seed)
    theirs = authors.SparseAttention(**AUTHORS_KWARGS)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if not name.startswith("rotary_emb"):  # its frequencies are a frozen Parameter
                p.normal_(0, 0.3 if p.dim() > 1 else 0.1)  # large enough for the gate and selection to matter
    ours = BlossomAttention(AUTHORS_KWARGS["dim"], AUTHORS_KWARGS["heads"], AUTHORS_KWARGS["kv_heads"], backend=backend)
    source = dict(theirs.named_parameters())
    with torch.no_grad():
        for mine, their_name in SHARED.items():
            ours.get_parameter(mine).copy_(source[their_name])
    return theirs.to(device), ours.to(device)


def _run(layer: nn.Module, call, x: Tensor, dout: Tensor, valid: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    x = x.detach().requires_grad_()
    out = call(layer, x)
    (out * dout * valid[..., None]).sum().backward()
    return out.detach(), {"x": x.grad, **{n: p.grad for n, p in layer.named_parameters() if p.grad is not None}}


def compare(theirs: nn.Module, ours: BlossomAttention, lengths: list[int], seed: int = 1) -> dict[str, float]:
    """Relative errors (ours vs theirs) of the outputs at valid positions and of the gradients."""
    length = max(lengths)
    gen = torch.Generator().manual_seed(seed)
    device = next(ours.parameters()).device
    x = torch.randn(len(lengths), length, AUTHORS_KWARGS["dim"], generator=gen).to(device)
    dout = torch.randn(x.shape, generator=gen).to(device)
    seq_len = torch.tensor(lengths, device=device)
    valid = torch.arange(length, device=device)[None, :] < seq_len[:, None]
    ref, ref_grads = _run(theirs, lambda m, x: m(x, attention_mask=valid), x, dout, valid)
    out, grads = _run(ours, lambda m, x: m(x, seq_len), x, dout, valid)
    errors = {"out": ((out - ref)[valid].norm() / ref[valid].norm()).item()}
    for mine, their_name in GRADIENTS.items():
        errors[f"d {mine}"] = ((grads[mine] - ref_grads[their_name]).norm() / ref_grads[their_name].norm()).item()
    return errors


def run_parity(code_dir: Path, backends: list[str], cases: list[list[int]], device: str = "cpu") -> list[Row]:
    """Every (backend, case); a case is the batch's sequence lengths, the first one the padded length."""
    authors = load_authors(code_dir, device)
    rows = []
    for backend in backends:
        theirs, ours = paired_layers(authors, backend, device)
        for lengths in cases:
            rows.append(Row(backend, max(lengths), tuple(lengths), compare(theirs, ours, lengths)))
    return rows


def format_rows(rows: list[Row]) -> str:
    """A Markdown table: one line per comparison, the worst error last."""
    names = list(rows[0].errors) if rows else []
    lines = ["| backend | L | lengths | " + " | ".join(names) + " | worst |", "|---" * (len(names) + 4) + "|"]
    for r in rows:
        cells = " | ".join(f"{r.errors[n]:.1e}" for n in names)
        lines.append(f"| {r.backend} | {r.length} | {list(r.lengths)} | {cells} | {r.worst:.1e} |")
    return "\n".join(lines)
