# make venv   : .venv with the pinned requirements and the package (editable: `nucleunet` command, `import nucleunet`)
# make train  : venv + data + train (preset picked by the hardware) + evaluate + figures
# make test   : the whole test suite (what CI runs)
# make bench  : data, training, inference, memory, large-image and engine benchmarks (tables + bench/results/*.json)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: venv data train test test-slow notebook clean-cache bench

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	touch $@

# Finds the training set (DSB_DATA, datasets/, ../shared/datasets/) or downloads the public BBBC038 zip.
data: venv
	$(PY) dsb.py

train: venv data
	$(PY) train_and_predicted_masks.py $(ARGS)

# --durations: the slowest tests end the log, so that a run nearing the 15-minute aim shows where its time went.
test: venv
	$(PY) -m pytest -m "not slow" --durations=15

test-slow: venv
	$(PY) -m pytest -m slow

# Opens the exploratory notebook in JupyterLab.
notebook: venv
	$(PY) -m jupyter lab EDA.ipynb

clean-cache:
	rm -rf datasets/cache

# Benchmarks of this machine (bench/RESULTS.md keeps the record). BENCH_MINUTES shortens the memory run's training;
# `make bench BENCH_MINUTES=` runs the whole cpu preset (about 14 more minutes).
BENCH_MINUTES ?= 2
bench: venv data
	$(PY) bench/bench_data.py
	$(PY) bench/bench_train.py
	$(PY) bench/bench_infer.py
	$(PY) bench/bench_memory.py $(if $(BENCH_MINUTES),--minutes $(BENCH_MINUTES))
	$(PY) bench/bench_large.py
	$(PY) bench/bench_flatfield.py
	$(PY) bench/bench_engines.py
	$(PY) bench/report.py
