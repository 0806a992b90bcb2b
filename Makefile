# Two commands on a fresh machine (Python >= 3.11, no GPU needed):
#   make run    create .venv, install pinned dependencies, run the workflow on the default config
#   make test   run the test suite (creates .venv first if missing)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
SNAKEMAKE_ARGS ?=

export OMP_NUM_THREADS ?= 1

.PHONY: run test test-gpu lint clean

$(BIN)/blossom: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	# recbole's own pins (ray<=2.6.3) have no wheel for Python >= 3.12; its real needs are above.
	$(BIN)/pip install --disable-pip-version-check -q --no-deps recbole==1.2.1
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

$(VENV): $(BIN)/blossom

run: $(VENV)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) --rerun-incomplete --printshellcmds $(SNAKEMAKE_ARGS)

test: $(VENV)
	@$(BIN)/python -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$status

test-gpu: $(VENV)
	$(BIN)/python -m pytest -q -m gpu tests/kernels

lint: $(VENV)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --lint
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake -n --quiet

clean:
	rm -rf .snakemake results/runs results/tables results/plots results/logs results/index.md log log_tensorboard saved
