# make test  - create .venv if missing, then run the whole test suite (CPU, about 15 minutes on 2 cores)
# make test-fast - the same without the tests marked slow (real training, Ray, kills): about 2 minutes
# make demo  - create .venv if missing, then a short real CIFAR-10 training run (data under DATA_DIR)
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= $(or $(SLN_DATA_DIR),data)
# idle OpenMP threads sleep instead of spinning: on a CPU shared with other work this made the tests ~2x
# faster (docs/performance.md); a value already in the environment wins
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: test test-fast demo env clean-venv

env: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow" tests

demo: $(VENV)/.installed
	$(PY) train_cifar.py --dataset_name cifar10 --batch_size 128 --n_epochs 2 --lr 0.001 --noise_mode sym --p 0.4 \
		--sigma 1.0 --mo --lc_n_epoch 1 --seed 123 --data_dir $(DATA_DIR) --model wrn-16-1 --train_subset 2000 --test_subset 1000

clean-venv:
	rm -rf $(VENV)
