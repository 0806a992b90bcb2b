"""RecBole's Trainer with per-epoch timing and a sampled evaluation that encodes each user once.

RecBole's uni100/pop100 evaluation calls `model.predict` on every (user, candidate) row: the
whole sequence encoder runs 101 times per user. For a model whose `predict(user, item)` equals
`full_sort_predict(user)[item]` (every sequence model in this suite), encoding each user once and
gathering the candidates gives the same scores at a fraction of the cost (tests check equality).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from recbole.trainer import Trainer
from recbole.utils import EvaluatorType


class BlossomTrainer(Trainer):
    """Trainer that times each training/validation epoch and can evaluate sampled rankings fast."""

    def __init__(self, config, model, fast_eval: bool = True) -> None:
        super().__init__(config, model)
        self.fast_eval = fast_eval
        self.epoch_train_s: list[float] = []
        self.epoch_valid_s: list[float] = []

    def _timed(self, times: list[float], fn, *args, **kwargs):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        times.append(time.perf_counter() - start)
        return out

    def _train_epoch(self, *args, **kwargs):
        return self._timed(self.epoch_train_s, super()._train_epoch, *args, **kwargs)

    def _valid_epoch(self, *args, **kwargs):
        return self._timed(self.epoch_valid_s, super()._valid_epoch, *args, **kwargs)

    def _neg_sample_batch_eval(self, batched_data):
        if not self.fast_eval or self.config["eval_type"] != EvaluatorType.RANKING:
            return super()._neg_sample_batch_eval(batched_data)
        interaction, row_idx, positive_u, positive_i = batched_data
        users, inverse = torch.unique(row_idx, return_inverse=True)
        rows = torch.arange(len(row_idx), device=row_idx.device)
        first = torch.full((len(users),), len(row_idx), dtype=torch.long, device=row_idx.device)
        first = first.scatter_reduce(0, inverse, rows, reduce="amin")
        # some models (Pop) return full-sort scores flattened, as RecBole's own full-sort path allows
        per_user = self.model.full_sort_predict(interaction[first].to(self.device)).view(len(users), -1)
        col_idx = interaction[self.config["ITEM_ID_FIELD"]].to(self.device)
        inverse, row_idx = inverse.to(self.device), row_idx.to(self.device)
        scores = torch.full((int(positive_u[-1]) + 1, self.tot_item_num), -np.inf, device=self.device)
        scores[row_idx, col_idx] = per_user[inverse, col_idx].float()
        return interaction, scores, positive_u, positive_i
