"""Mamba4Rec (Liu et al., 2024, "Mamba4Rec: Towards Efficient Sequential Recommendation with
Selective State Space Models", arXiv 2403.03900): a selective-SSM sequential recommender.

Follows the paper and the authors' public RecBole model (github.com/chengkai-liu/Mamba4Rec @ 061e02b,
`mamba4rec.py`, `config.yaml`): item embedding -> dropout -> LayerNorm; N layers of
Mamba block -> dropout -> LayerNorm, with the residual around the Mamba block only when N > 1 (as in
the public code), then a position-wise FFN (Linear 4d, GELU, dropout, Linear, dropout, LayerNorm(+x));
no position embedding; item embedding tied with the output, CE over all items. Like the public model,
RecBole's N(0, 0.02) init also overwrites the Mamba block's own Linear init, its dt bias included.

The Mamba block is `mamba_ssm.Mamba` (CUDA kernels, what the authors ran) when importable and the
model runs on a GPU, otherwise mambapy's pure-PyTorch `MambaBlock` (same parameters and math,
parallel scan in PyTorch); `mamba_backend: auto | mambapy | mamba_ssm` picks one explicitly.
"""

from __future__ import annotations

import importlib.util

from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import FeedForward
from recbole.model.loss import BPRLoss
from recbole.model.sequential_recommender.sasrec import SASRec
from torch import Tensor, nn

MAMBA_BACKENDS = ("auto", "mambapy", "mamba_ssm")


def mamba_block(backend: str, on_cuda: bool, d_model: int, d_state: int, d_conv: int, expand: int) -> nn.Module:
    """One Mamba block [B, L, D] -> [B, L, D] from the requested backend (`auto`: mamba_ssm on CUDA)."""
    if backend not in MAMBA_BACKENDS:
        raise ValueError(f"unknown mamba_backend {backend!r}; choose one of {', '.join(MAMBA_BACKENDS)}")
    if backend == "auto":
        backend = "mamba_ssm" if on_cuda and importlib.util.find_spec("mamba_ssm") else "mambapy"
    if backend == "mamba_ssm":
        from mamba_ssm import Mamba

        return Mamba(d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand)
    from mambapy.mamba import MambaBlock, MambaConfig

    return MambaBlock(MambaConfig(d_model=d_model, n_layers=1, d_state=d_state, d_conv=d_conv, expand_factor=expand))


class MambaFeedForward(FeedForward):
    """RecBole's FeedForward plus the dropout Mamba4Rec applies after the activation."""

    def forward(self, input_tensor: Tensor) -> Tensor:
        hidden = self.dropout(self.intermediate_act_fn(self.dense_1(input_tensor)))
        return self.LayerNorm(self.dropout(self.dense_2(hidden)) + input_tensor)


class MambaLayer(nn.Module):
    """Mamba block -> dropout -> LayerNorm (+x when `residual`), then the FFN."""

    def __init__(self, mamba: nn.Module, hidden_size: int, dropout: float, eps: float, residual: bool) -> None:
        super().__init__()
        self.mamba = mamba
        self.residual = residual
        self.dropout = nn.Dropout(dropout)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.feed_forward = MambaFeedForward(hidden_size, 4 * hidden_size, dropout, "gelu", eps)

    def forward(self, hidden: Tensor) -> Tensor:
        mixed = self.dropout(self.mamba(hidden))
        return self.feed_forward(self.LayerNorm(mixed + hidden if self.residual else mixed))


class Mamba4Rec(SequentialRecommender):
    """Sequential recommender whose sequence encoder is a stack of Mamba layers."""

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        self.hidden_size = config["hidden_size"]
        self.num_layers = config["num_layers"]
        self.initializer_range = config["initializer_range"]
        self.loss_type = config["loss_type"]
        dropout, eps = config["dropout_prob"], config["layer_norm_eps"]
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=eps)

        def layer() -> MambaLayer:
            on_cuda = self.device.type == "cuda"
            sizes = (self.hidden_size, config["d_state"], config["d_conv"], config["expand"])
            mamba = mamba_block(config["mamba_backend"], on_cuda, *sizes)
            return MambaLayer(mamba, self.hidden_size, dropout, eps, residual=self.num_layers > 1)

        self.mamba_layers = nn.ModuleList(layer() for _ in range(self.num_layers))
        if self.loss_type == "BPR":
            self.loss_fct = BPRLoss()
        elif self.loss_type == "CE":
            self.loss_fct = nn.CrossEntropyLoss()
        else:
            raise NotImplementedError("Make sure 'loss_type' in ['BPR', 'CE']!")
        self.apply(self._init_weights)

    # The public model's init, loss and scoring are SASRec's, line for line.
    _init_weights = SASRec._init_weights
    calculate_loss = SASRec.calculate_loss
    predict = SASRec.predict
    full_sort_predict = SASRec.full_sort_predict

    def forward(self, item_seq: Tensor, item_seq_len: Tensor) -> Tensor:
        hidden = self.LayerNorm(self.dropout(self.item_embedding(item_seq)))
        for layer in self.mamba_layers:
            hidden = layer(hidden)
        return self.gather_indexes(hidden, item_seq_len - 1)
