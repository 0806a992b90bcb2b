# Shared setup: validate the config, expose the run plan. Logic lives in blossom.config / blossom.plan.
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)

from blossom import plan
from blossom.config import validate_config
from blossom.errors import BlossomError

try:
    validate_config(config)
except BlossomError as err:
    raise WorkflowError(str(err)) from None

DATA_DIR = config["data"]["dir"]
MIRROR = config["data"].get("mirror") or ""
# Every rule runs `python -m blossom.cli` from this checkout: the python on PATH is the rule's
# conda env with --use-conda, else the active environment (`make run` puts .venv/bin first).
shell.prefix(f"set -euo pipefail; export PYTHONPATH={workflow.basedir}:${{{{PYTHONPATH:-}}}}; ")
PAPER_STATS = str(Path(config["report"]["paper"]).parent / "dataset_stats.csv")
for name, reason in plan.missing_datasets(config).items():
    print(f"blossom: dataset {name} is missing and left out: {reason}", file=sys.stderr)
GPUS_PER_JOB = 1 if config["run"].get("gpus", 0) > 0 else 0
# table -> experiment whose runs it reads; ablation only when the config defines that experiment
TABLE_EXPERIMENTS = {"accuracy": "main", "efficiency": "efficiency"}
if "ablation" in config["experiments"]:
    TABLE_EXPERIMENTS["ablation"] = "ablation"
TABLES = list(TABLE_EXPERIMENTS)
PLOTS = ["memory", "time", "accuracy"]


wildcard_constraints:
    dataset=r"[A-Za-z0-9_-]+",
    model=r"[A-Za-z0-9_.-]+",
    max_len=r"\d+",
    seed=r"\d+",
