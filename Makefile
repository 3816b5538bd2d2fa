# Every target runs inside the project's virtual environment (.venv), created or refreshed from requirements.txt.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PYTHONUNBUFFERED := 1

SCRATCH ?= scratch
# Settings for `make sweep`: one papermill run of notebook 03 per value of SWEEP_PARAM.
SWEEP_PARAM  ?= dropout
SWEEP_VALUES ?= 0.0 0.1 0.2
SWEEP_ARGS   ?= -p profile smoke
# Models of the report's Table 1 that `make reproduce` trains with the paper profile.
REPRODUCE_MODELS ?= light_resnet18 light_resnet18_v2 light_resnet18_v2_b45 robust_resnet64

.PHONY: venv test smoke reproduce sweep lab bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# The test suite: unit tests, notebooks under nbval and the papermill chain, all on smoke data, on the CPU.
test: venv
	$(PY) -m pytest -q

# Train, predict and report end to end on the smoke profile (synthetic CIFAR-format data when CIFAR-10 is absent).
smoke: venv
	$(PY) -m lib.train --profile smoke --model robust_resnet64 --out $(SCRATCH)/smoke-run --no-progress --resume
	$(PY) -m lib.predict --checkpoint $(SCRATCH)/smoke-run/best.pt --test-file data/smoke/kaggle_test.pkl \
		--out $(SCRATCH)/submission.csv
	$(PY) -m lib.report --runs $(SCRATCH)/smoke-run --figures figures --report report

# The report's runs (paper profile, 300 epochs; needs a GPU). Downloads CIFAR-10 into data/ if absent.
reproduce: venv
	for m in $(REPRODUCE_MODELS); do \
		$(PY) -m lib.train --model $$m --data-dir data --download --out runs/$$m --resume || exit 1; \
	done
	$(PY) -m lib.report --runs $(addprefix runs/,$(REPRODUCE_MODELS)) --figures figures --report report

sweep: venv
	mkdir -p $(SCRATCH)/sweep
	for v in $(SWEEP_VALUES); do \
		$(PY) -m papermill notebooks/03_training.ipynb $(SCRATCH)/sweep/03_training_$(SWEEP_PARAM)_$$v.ipynb \
			-k python3 $(SWEEP_ARGS) -p $(SWEEP_PARAM) $$v -p run_name sweep_$(SWEEP_PARAM)_$$v || exit 1; \
	done

lab: venv
	$(VENV)/bin/jupyter lab notebooks

bench: venv
	$(PY) -m lib.bench --json $(SCRATCH)/bench.json

clean:
	rm -rf $(SCRATCH) runs/smoke data/smoke .pytest_cache
