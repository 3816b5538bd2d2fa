# Every target runs inside the project's virtual environment (.venv), created or refreshed from
# tests/requirements.txt: what lib/ and the notebooks need (requirements.txt) plus the development tools.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PYTHONUNBUFFERED := 1

SCRATCH ?= scratch
# papermill runs the notebooks on the `python3` kernel, which resolves to this venv (.venv/bin is first on PATH).
PAPERMILL := $(PY) -m papermill -k python3 --no-progress-bar --log-output
# `make smoke`: the model of the smoke run (the notebooks' default, the report's best model).
SMOKE_MODEL ?= robust_resnet64
SMOKE_OUT   := $(SCRATCH)/smoke
SMOKE_RUNS  := $(SMOKE_OUT)/runs
SMOKE_NB    := CIFAR_PROFILE=smoke $(PAPERMILL)
# `make sweep`: a hyper-parameter sweep on Ray Tune (python -m lib.scale.sweep; a local Ray unless SWEEP_ADDRESS names a
# cluster), then its figure (sweep_<name>.png) and table (sweep_<name>.md) in figures/ and report/ -- for the smoke
# profile in $(SMOKE_OUT)/figures and $(SMOKE_OUT)/report. SWEEP_PARAMS: one NAME=V1,V2 per swept setting;
# SWEEP_PROFILE=paper for real runs (GPU); SWEEP_ARGS: any further lib.scale.sweep option, e.g. "--scheduler asha
# --gpus-per-trial 0.5". Rerunning continues the sweep (--resume).
SWEEP_PROFILE ?= smoke
SWEEP_MODEL   ?= light_resnet18
SWEEP_PARAMS  ?= dropout=0.0,0.1 lr=0.05,0.1
SWEEP_NAME    ?= $(SWEEP_MODEL)_$(SWEEP_PROFILE)
SWEEP_DIR     ?= runs/sweep_$(SWEEP_NAME)
SWEEP_ADDRESS ?=
SWEEP_ARGS    ?=
SWEEP_OUT     := $(if $(filter smoke,$(SWEEP_PROFILE)),$(SMOKE_OUT)/,)
# Models of the report's Table 1 that `make reproduce` trains with the paper profile.
REPRODUCE_MODELS ?= light_resnet18 light_resnet18_v2 light_resnet18_v2_b45 robust_resnet64

.PHONY: venv test smoke reproduce sweep lab bench mutants clean colab-links gpu-check gpu-dry-run

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt tests/requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r tests/requirements.txt
	touch $@

# The test suite, on smoke data, on the CPU, 2 workers: the unit tests; every notebook executed by papermill as a
# user runs it, from the repository root with -p values (tests/test_notebooks.py, in a scratch copy); and nbval
# (--nbval-lax: every cell runs without error) over notebooks 03 and 04 as Jupyter runs them, from notebooks/ with
# nothing injected (profile and model from CIFAR_PROFILE/CIFAR_MODEL), in a copy in $(NBVAL_DIR): 03 trains the
# smoke run under its default name, 04 reports on it. The other notebooks take nothing but the model in the
# papermill chain, so nbval would run their code again the same way (about 2 minutes more on one worker).
# Without the notebooks: $(PY) -m pytest -n 2 -m "not notebooks".
NBVAL_DIR       := $(SCRATCH)/nbval
NBVAL_NOTEBOOKS := 03_training 04_results
test: venv
	rm -rf $(NBVAL_DIR) && mkdir -p $(NBVAL_DIR)/report
	cp -r lib notebooks requirements.txt $(NBVAL_DIR)/ && cp -r report/reference $(NBVAL_DIR)/report/
	CIFAR_PROFILE=smoke CIFAR_MODEL=light_resnet18 $(PY) -m pytest -q -n 2 --nbval-lax --nbval-current-env \
		tests $(NBVAL_NOTEBOOKS:%=$(NBVAL_DIR)/notebooks/%.ipynb)

# Notebooks 01-06 on the smoke profile (synthetic CIFAR-format data in data/smoke when CIFAR-10 is absent), executed
# with papermill into $(SMOKE_OUT)/: 03 trains into $(SMOKE_RUNS), 04 writes Figure 1 and Table 1 (marked "NOT a
# reproduction") into $(SMOKE_OUT)/figures and $(SMOKE_OUT)/report, 05 writes $(SMOKE_OUT)/submission.csv, 06 analyses the run
# into $(SMOKE_RUNS)/<run>/analysis.
# The committed figures/ and report/ are never touched: only runs on real data update them (lib.report, notebook 04).
smoke: venv
	rm -rf $(SMOKE_OUT)
	mkdir -p $(SMOKE_OUT)
	$(SMOKE_NB) notebooks/01_data_exploration.ipynb $(SMOKE_OUT)/01_data_exploration.ipynb
	$(SMOKE_NB) notebooks/02_architectures.ipynb $(SMOKE_OUT)/02_architectures.ipynb
	$(SMOKE_NB) notebooks/03_training.ipynb $(SMOKE_OUT)/03_training.ipynb \
		-p model $(SMOKE_MODEL) -p runs_dir $(SMOKE_RUNS)
	$(SMOKE_NB) notebooks/04_results.ipynb $(SMOKE_OUT)/04_results.ipynb \
		-p model $(SMOKE_MODEL) -p runs_dir $(SMOKE_RUNS) \
		-p figures_dir $(SMOKE_OUT)/figures -p report_dir $(SMOKE_OUT)/report
	$(SMOKE_NB) notebooks/05_kaggle_submission.ipynb $(SMOKE_OUT)/05_kaggle_submission.ipynb \
		-p model $(SMOKE_MODEL) -p runs_dir $(SMOKE_RUNS) -p submission_file $(SMOKE_OUT)/submission.csv
	$(SMOKE_NB) notebooks/06_analysis.ipynb $(SMOKE_OUT)/06_analysis.ipynb \
		-p model $(SMOKE_MODEL) -p runs_dir $(SMOKE_RUNS)
	@echo "smoke: executed notebooks, figures/, report/ and submission.csv in $(SMOKE_OUT)/" \
		"(synthetic data: a pipeline check, not results; the committed figures/ and report/ are unchanged)"

# The report's runs (paper profile, 300 epochs; needs a GPU). Downloads CIFAR-10 into data/ if absent.
reproduce: venv
	for m in $(REPRODUCE_MODELS); do \
		$(PY) -m lib.train --model $$m --data-dir data --download --out runs/$$m --resume || exit 1; \
	done
	$(PY) -m lib.report --runs $(addprefix runs/,$(REPRODUCE_MODELS)) --figures figures --report report

sweep: venv
	$(PY) -m lib.scale.sweep --profile $(SWEEP_PROFILE) --model $(SWEEP_MODEL) $(addprefix --param ,$(SWEEP_PARAMS)) \
		$(if $(SWEEP_ADDRESS),--address $(SWEEP_ADDRESS)) --out $(SWEEP_DIR) --resume $(SWEEP_ARGS)
	$(PY) -m lib.scale.sweep_report $(SWEEP_DIR) --figures $(SWEEP_OUT)figures --report $(SWEEP_OUT)report

# JupyterLab on the repository, in the project's environment, opened at notebooks/ (LAB_ARGS: e.g. --port 8889,
# or --allow-root inside a container).
LAB_ARGS ?=
lab: venv
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/notebooks $(LAB_ARGS)

bench: venv
	$(PY) -m lib.bench --json $(SCRATCH)/bench.json

# `make mutants`: mutation testing of the core modules with the unit tests (mutmut; settings in setup.cfg, results
# in mutants/, tests/README.md has the score). Hours on 2 cores: MUTANTS narrows it, e.g. MUTANTS='lib.data.*'.
# Rerunning continues where it stopped; `$(VENV)/bin/mutmut show NAME` prints one mutant's diff.
MUTANTS     ?=
MUTANT_JOBS ?= 1
mutants: venv
	nice -n 10 $(VENV)/bin/mutmut run --max-children $(MUTANT_JOBS) $(foreach m,$(MUTANTS),'$(m)')
	$(VENV)/bin/mutmut results
	$(VENV)/bin/mutmut export-cicd-stats

# `make gpu-check`: a new GPU machine checked in under 10 minutes (python -m lib.bench.gpu_check; its docstring says
# more): the CUDA tests, eager vs compiled training steps (lib.bench), then RobustResNet64 on its 300-epoch paper
# schedule for what is left of GPU_MINUTES (--time-limit, --resume: a second call continues it). Every result lands
# in GPU_OUT as its stage ends; a failing stage never stops the next. GPU_PY=python3: any python with torch,
# torchvision, pandas and pytest, no venv, no network. CIFAR-10 from DATA, else converted from the JPEG copy when
# GPU_JPEG holds its two tarballs and cifar10_from_jpeg.py, else GPU_ARGS=--download fetches it.
# `make gpu-dry-run`: every stage on the CPU on smoke data, tiny (a few minutes): the chain, not the machine.
GPU_PY      ?=
GPU_OUT     ?= runs/gpu-check
GPU_MINUTES ?= 9.5
DATA        ?= data
GPU_JPEG    ?= data/cifar10-jpeg
GPU_ARGS    ?=
GPU_PYTHON  := $(if $(GPU_PY),$(GPU_PY),$(PY))
gpu-check: $(if $(GPU_PY),,venv)
	$(GPU_PYTHON) -m lib.bench.gpu_check --out $(GPU_OUT) --minutes $(GPU_MINUTES) --data-dir $(DATA) \
		$(if $(wildcard $(GPU_JPEG)/cifar10_from_jpeg.py),--jpeg-dir $(GPU_JPEG)) $(GPU_ARGS)

gpu-dry-run: $(if $(GPU_PY),,venv)
	rm -rf $(SCRATCH)/gpu-dry-run
	$(GPU_PYTHON) -m lib.bench.gpu_check --dry-run --out $(SCRATCH)/gpu-dry-run --minutes 4 --min-train-minutes 1 $(GPU_ARGS)

clean:
	rm -rf $(SCRATCH) runs/*_smoke* data/smoke .pytest_cache

# Point the Colab badges (README and every notebook's title cell) and the notebooks' clone URL (their first cell's
# REPO_URL) at a GitHub copy of this repository: make colab-links REPO=github-user/repository
colab-links:
	@test -n "$(REPO)" || { echo "usage: make colab-links REPO=github-user/repository" >&2; exit 2; }
	@echo "$(REPO)" | grep -Eqx '[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+' || \
		{ echo "make colab-links: REPO=$(REPO): expected github-user/repository" >&2; exit 2; }
	sed -i 's#colab.research.google.com/github/[A-Za-z0-9_.-]*/[A-Za-z0-9_.-]*/blob/#colab.research.google.com/github/$(REPO)/blob/#g' \
		README.md notebooks/*.ipynb
	sed -i 's#https://github.com/[A-Za-z0-9_.-]*/[A-Za-z0-9_.-]*\.git#https://github.com/$(REPO).git#g' README.md notebooks/*.ipynb
