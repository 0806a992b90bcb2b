"""SASRec-SDPA: RecBole's SASRec (Kang & McAuley, ICDM 2018) with torch's fused attention.

Same parameters, initialisation and outputs as RecBole's SASRec; only the attention core runs
through F.scaled_dot_product_attention (FlashAttention / memory-efficient kernels on a GPU):
the modern full-attention anchor. With right-padded sequences, `is_causal` alone is exact for
every valid position (padded keys only ever follow the query), so the padding mask is dropped.
"""

from __future__ import annotations

import torch.nn.functional as F
from recbole.model.layers import MultiHeadAttention
from recbole.model.sequential_recommender.sasrec import SASRec
from torch import Tensor


class SDPAMultiHeadAttention(MultiHeadAttention):
    """RecBole's MultiHeadAttention with the softmax(QK^T)V core replaced by SDPA (causal)."""

    def forward(self, input_tensor: Tensor, attention_mask: Tensor) -> Tensor:
        batch, length, _ = input_tensor.shape

        def heads(x: Tensor) -> Tensor:
            return x.view(batch, length, self.num_attention_heads, self.attention_head_size).transpose(1, 2)

        query, key, value = (heads(proj(input_tensor)) for proj in (self.query, self.key, self.value))
        dropout = self.attn_dropout.p if self.training else 0.0
        context = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, is_causal=True)
        context = context.transpose(1, 2).reshape(batch, length, self.all_head_size)
        hidden = self.out_dropout(self.dense(context))
        return self.LayerNorm(hidden + input_tensor)


class SASRecSDPA(SASRec):
    """RecBole SASRec whose every layer uses SDPAMultiHeadAttention (weights unchanged)."""

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        for layer in self.trm_encoder.layer:
            layer.multi_head_attention.__class__ = SDPAMultiHeadAttention
