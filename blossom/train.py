"""One RecBole training run -> one run record (DESIGN section 7).

RecBole is driven through its Config / data_preparation / Trainer API with the model class
passed in (its `run_recbole` only resolves built-in names). Out-of-memory is a result, not a
crash: the record says "oom" and the workflow goes on with the other runs.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blossom import compat
from blossom.errors import BlossomError
from blossom.models.registry import get_model
from blossom.records import write_record

# Settings that make every run comparable to the public run.py (DESIGN section 5).
FIXED_RECBOLE = {
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    "reproducibility": True,
    "show_progress": False,
    "save_dataset": False,
    "save_dataloaders": False,
    "log_wandb": False,
    "state": "INFO",
}
METRIC_KEYS = ("recall@10", "mrr@10", "ndcg@10")

if TYPE_CHECKING:
    from blossom.trainer import BlossomTrainer


def is_oom(err: BaseException) -> bool:
    """CUDA or host allocation failure (torch raises RuntimeError subclasses for both)."""
    import torch

    if isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def recbole_settings(model: str, max_len: int, seed: int, settings: dict[str, Any], data_dir: str) -> dict[str, Any]:
    """The config_dict RecBole gets: model yaml < suite settings < the name's fixed settings
    (a variant stays itself whatever the shared settings say) < this run's own values."""
    spec = get_model(model)
    device = settings.get("device", "auto")
    return {
        **spec.yaml_defaults(),
        **{k: v for k, v in settings.items() if k != "device"},
        **FIXED_RECBOLE,
        **spec.fixed,
        "data_path": str(Path(data_dir).resolve()),
        "MAX_ITEM_LIST_LENGTH": max_len,
        "seed": seed,
        **_device_settings(device),
    }


def _device_settings(device: str) -> dict[str, Any]:
    """RecBole rewrites CUDA_VISIBLE_DEVICES from gpu_id: hand it the current value so a GPU
    assigned by the scheduler is kept; an empty gpu_id means CPU."""
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise BlossomError(f"unknown device {device!r}; choose auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise BlossomError("device 'cuda' requested but no CUDA GPU is available")
    use_gpu = device != "cpu" and torch.cuda.is_available()
    gpu_id = os.environ.get("CUDA_VISIBLE_DEVICES", "0") if use_gpu else ""
    return {"use_gpu": use_gpu, "gpu_id": gpu_id}


def _metrics(result: dict[str, float] | None) -> dict[str, float]:
    return {key: float(result[key]) for key in METRIC_KEYS if result and key in result}


def run(
    dataset: str,
    model: str,
    max_len: int,
    seed: int,
    settings: dict[str, Any],
    data_dir: str,
    out: str | Path,
    fast_eval: bool = True,
    threads: int | None = None,
    time_both_evals: bool = False,
) -> dict[str, Any]:
    """Train and test one model; write and return its record (status ok or oom).

    time_both_evals: also time the test evaluation through the other sampled-evaluation path
    (RecBole's per-row one when fast_eval is on), recorded as eval_time {fast_s, recbole_s}.
    """
    compat.apply()
    import torch
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from blossom.measure import Measure, environment
    from blossom.trainer import BlossomTrainer

    if threads:
        torch.set_num_threads(threads)
    inter_file = Path(data_dir) / dataset / f"{dataset}.inter"
    if not inter_file.exists():
        raise BlossomError(f"prepared dataset not found: {inter_file} (run `blossom data prepare {dataset}`)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr, force=True)
    spec = get_model(model)
    config_dict = recbole_settings(model, max_len, seed, settings, data_dir)
    record: dict[str, Any] = {
        "dataset": dataset, "model": model, "variant": config_dict.get("variant", "default"),
        "max_len": max_len, "seed": seed, "status": "ok", "error": None,
        "metrics": {}, "valid_metrics": {}, "eval_mode": _eval_mode(config_dict),
        "memory": {}, "memory_infer": {}, "time": {}, "env": environment(), "config": config_dict,
    }
    with tempfile.TemporaryDirectory(prefix="blossom-ckpt-") as ckpt:
        config_dict["checkpoint_dir"] = ckpt
        config = _recbole_config(spec.load_class(), dataset, config_dict)
        init_seed(config["seed"], config["reproducibility"])
        train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
        device = config["device"]
        try:
            model_obj = spec.load_class()(config, train_data._dataset).to(device)
            trainer = BlossomTrainer(config, model_obj, fast_eval=fast_eval)
            with Measure(device) as fit:
                best_valid, valid_result = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
            # hand the training's cached blocks back first: the test evaluation's reserved and NVML
            # peaks then show what inference needs, not what training left in the cache
            _free_memory()
            with Measure(device) as infer:
                test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
            if time_both_evals:
                record["eval_time"] = _time_both_evals(trainer, test_data, infer.wall_s, device)
        except Exception as err:  # noqa: BLE001 - only OOM becomes a record; the rest re-raises
            if not is_oom(err):
                raise
            record.update(status="oom", error=str(err).splitlines()[0][:300])
            _free_memory()
        else:
            epochs = len(trainer.epoch_train_s)
            record["metrics"] = _metrics(test_result)
            record["valid_metrics"] = _metrics(valid_result)
            record["memory"] = {k: v for k, v in fit.result().items() if k != "wall_s"}
            record["memory_infer"] = {k: v for k, v in infer.result().items() if k != "wall_s"}
            record["time"] = {
                "train_s_per_epoch": round(sum(trainer.epoch_train_s) / max(epochs, 1), 4),
                "valid_s_per_epoch": round(sum(trainer.epoch_valid_s) / max(len(trainer.epoch_valid_s), 1), 4),
                "epochs": epochs,
                "best_epoch": _best_epoch(trainer),
                "infer_s": infer.result()["wall_s"],
                "fit_s": fit.result()["wall_s"],
                "total_s": round(fit.result()["wall_s"] + infer.result()["wall_s"], 4),
            }
            if device.type != "cuda":
                record["env"]["device"] = "cpu"
    write_record(out, record)
    return record


def _time_both_evals(trainer: BlossomTrainer, test_data, this_path_s: float, device) -> dict[str, float]:
    """Seconds of the test evaluation through the fast path and through RecBole's per-row path
    (the best checkpoint is already loaded; the other path runs once more)."""
    from blossom.measure import Measure

    used_fast = trainer.fast_eval
    trainer.fast_eval = not used_fast
    try:
        with Measure(device) as other:
            trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    finally:
        trainer.fast_eval = used_fast
    fast, recbole = (this_path_s, other.wall_s) if used_fast else (other.wall_s, this_path_s)
    return {"fast_s": round(fast, 4), "recbole_s": round(recbole, 4)}


def _recbole_config(model_class: type, dataset: str, config_dict: dict[str, Any]):
    """RecBole's Config, shielded from our own command line (it parses `--key=value` argv)."""
    from recbole.config import Config

    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        return Config(model=model_class, dataset=dataset, config_dict=config_dict)
    finally:
        sys.argv = argv


def _eval_mode(config_dict: dict[str, Any]) -> str:
    mode = config_dict.get("eval_args", {}).get("mode", "full")
    return mode if isinstance(mode, str) else str(mode.get("valid", mode))


def _best_epoch(trainer: BlossomTrainer) -> int:
    """Index of the epoch whose checkpoint was tested: RecBole's cur_step counts the epochs
    since the last validation improvement (validation runs every epoch here)."""
    return len(trainer.epoch_train_s) - 1 - trainer.cur_step


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
