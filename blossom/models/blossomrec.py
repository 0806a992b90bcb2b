"""BlossomRec (Xu et al., WWW 2026, arXiv 2512.13368): SASRec-style encoder with BlossomAttention.

Follows the authors' public RecBole model (github.com/ronineume/BlossomRec @ 8fe1eb2): no
absolute position embedding (RoPE inside the attention), post-LN blocks, item embedding tied
with the output, CE over all items.

Variants (DESIGN section 2.7):
- `official`: the public code's behaviour. RecBole's weight init overwrites the intended gate init
  (both gates start near 0.5), and the key compressor never learns: it only feeds the top-n block
  selection, which passes no gradient.
- `improved`: (a) the intended gate init (weight 0, bias -2 LTIS / +2 STIS) is re-applied after
  RecBole's init, so it survives; (b) NSA's compressed-attention branch is restored as a third gated
  branch (BlossomAttention(compressed=True)): queries attend the compressed keys the selection
  scores plus compressed values, under the selection's visibility rule, so the compressor and its
  intra-window positions learn from the loss and the blocks it ranks are the ones it was trained to
  summarise. Chosen over a straight-through top-k because the latter needs per-query gradients of
  the gathered keys, which the sparse LTIS kernel never forms; the compressed branch is one SDPA call
  over <= L/16 + 1 keys per query on either backend (cost: O(L^2 d / 16) time, see
  BlossomAttention.compressed_attention). Selection itself (mean-of-logits importance, top-n) is
  unchanged.
"""

from __future__ import annotations

import copy

from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import FeedForward
from recbole.model.loss import BPRLoss
from recbole.model.sequential_recommender.sasrec import SASRec
from torch import Tensor, nn

from blossom.attention.module import BlossomAttention

VARIANTS = ("official", "improved")


class BlossomBlock(nn.Module):
    """attention -> Linear -> dropout -> LayerNorm(+x), then the SASRec feed-forward."""

    def __init__(self, config, attention: BlossomAttention) -> None:
        super().__init__()
        hidden = config["hidden_size"]
        self.attention = attention
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.LayerNorm = nn.LayerNorm(hidden, eps=config["layer_norm_eps"])
        self.feed_forward = FeedForward(
            hidden, config["inner_size"], config["hidden_dropout_prob"], config["hidden_act"], config["layer_norm_eps"]
        )

    def forward(self, hidden: Tensor, seq_len: Tensor) -> Tensor:
        attended = self.dropout(self.dense(self.attention(hidden, seq_len)))
        return self.feed_forward(self.LayerNorm(attended + hidden))


class BlossomRec(SequentialRecommender):
    """Sequential recommender whose self-attention is BlossomAttention (LTIS + STIS + gate)."""

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        self.hidden_size = config["hidden_size"]
        self.initializer_range = config["initializer_range"]
        self.loss_type = config["loss_type"]
        self.variant = config["variant"]
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown BlossomRec variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        attention = BlossomAttention(
            hidden_size=self.hidden_size,
            n_heads=config["n_heads"],
            kv_heads=config["kv_heads"],
            num_selected=config["num_selected_blocks"],
            backend=config["attention_backend"],
            branches=config["branches"],
            fixed_gate=config["fixed_gate"],
            compressed=self.variant == "improved",
        )
        block = BlossomBlock(config, attention)
        self.blocks = nn.ModuleList(copy.deepcopy(block) for _ in range(config["n_layers"]))
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])
        if self.loss_type == "BPR":
            self.loss_fct = BPRLoss()
        elif self.loss_type == "CE":
            self.loss_fct = nn.CrossEntropyLoss()
        else:
            raise NotImplementedError("Make sure 'loss_type' in ['BPR', 'CE']!")
        self.apply(self._init_weights)
        if self.variant == "improved":
            for block in self.blocks:
                block.attention.reset_gate()

    # RecBole's SASRec weight init, loss and scoring only use self.forward / item_embedding / loss_fct.
    _init_weights = SASRec._init_weights
    calculate_loss = SASRec.calculate_loss
    predict = SASRec.predict
    full_sort_predict = SASRec.full_sort_predict

    def forward(self, item_seq: Tensor, item_seq_len: Tensor) -> Tensor:
        hidden = self.dropout(self.LayerNorm(self.item_embedding(item_seq)))
        for block in self.blocks:
            hidden = block(hidden, item_seq_len)
        return self.gather_indexes(hidden, item_seq_len - 1)
