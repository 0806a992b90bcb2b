"""LinRec (Liu et al., SIGIR 2023, "LinRec: Linear Attention Mechanism for Long-term Sequential
Recommender Systems", doi:10.1145/3539618.3591717, arXiv 2411.01537): SASRec with L2-normalised
linear attention.

Follows the authors' public code (github.com/Applied-Machine-Learning-Lab/LinRec @ 1f3d743,
`layers.py` MultiHeadAttention, a drop-in for RecBole's layer; only the paper's abstract could be
read here, not its equations). Per head, with Q, K, V the usual projections:

    out = rho(elu(Q)) (sigma(elu(K))^T V) / sqrt(d)

rho L2-normalises every row of elu(Q) (one query over its d features); sigma L2-normalises every
column of elu(K)^T, i.e. again every key over its d features (the code normalises K^T [d, L] along d;
it is not a normalisation over the sequence). The product is taken right to left, O(L d^2) per head.
Everything else is RecBole's SASRec: position embedding, post-LN residual blocks, FFN, tied CE.

Causality: the published attention is NOT causal. It ignores RecBole's causal mask and every
position reads every key, so the encoder output at t depends on items after t. Under RecBole's
training (CE on the item after the last input position) no input position holds a target, so this
leaks nothing, and the model is implemented as published.

Deviations from the public code, both so that right padding cannot reach valid positions:
- padded keys (item id 0) are zeroed before K^T V; the public code sums them in, so its outputs
  depend on how much padding a batch carries (and hence on MAX_ITEM_LIST_LENGTH);
- the normalisation divides by max(norm, 1e-12) (F.normalize), so an all-zero row gives 0, not 0/0.
As in the public code: plain ELU (no +1), no attention dropout, no row-sum normalisation.
"""

from __future__ import annotations

import torch.nn.functional as F
from recbole.model.layers import MultiHeadAttention
from recbole.model.sequential_recommender.sasrec import SASRec
from torch import Tensor


class LinRecMultiHeadAttention(MultiHeadAttention):
    """RecBole's MultiHeadAttention with LinRec's L2-normalised linear attention as the core."""

    def forward(self, input_tensor: Tensor, attention_mask: Tensor) -> Tensor:
        """attention_mask: [B, 1, L, 1], True at real items (LinRec.get_attention_mask)."""
        batch, length, _ = input_tensor.shape

        def heads(x: Tensor) -> Tensor:
            return self.transpose_for_scores(x).transpose(1, 2)  # [B, H, L, d]

        query = F.normalize(F.elu(heads(self.query(input_tensor))), dim=-1)
        key = F.normalize(F.elu(heads(self.key(input_tensor))), dim=-1) * attention_mask
        value = heads(self.value(input_tensor))
        context = query @ (key.transpose(-1, -2) @ value) / self.sqrt_attention_head_size
        context = context.transpose(1, 2).reshape(batch, length, self.all_head_size)
        hidden = self.out_dropout(self.dense(context))
        return self.LayerNorm(hidden + input_tensor)


class LinRec(SASRec):
    """RecBole SASRec whose every layer uses LinRecMultiHeadAttention (parameters unchanged)."""

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        for layer in self.trm_encoder.layer:
            layer.multi_head_attention.__class__ = LinRecMultiHeadAttention

    def get_attention_mask(self, item_seq: Tensor, bidirectional: bool = False) -> Tensor:
        """Which keys are real items, [B, 1, L, 1]: LinRec has no causal mask, only padding to drop."""
        return (item_seq != 0)[:, None, :, None]
