# The two commands of the README, and a few more for developers.
SHELL := /bin/bash
VENV = $(shell scripts/setup_venv.sh)
PY = $(VENV)/bin/python

.PHONY: demo test test-all bench venv

demo:  ## the shipped demo model on bundled synthetic scenes, through the real ROS 2 node
	@$(PY) -m meres_ros.demo --out out/demo

test:  ## the default test suite (CPU, < 15 minutes on 2 cores)
	@$(PY) -m pytest -q

test-all:  ## include slow tests
	@$(PY) -m pytest -q -m "slow or not slow"

bench:  ## inference and training benchmarks, JSON under out/bench
	@mkdir -p out/bench
	@$(PY) bench/bench_inference.py | tee out/bench/inference.json
	@$(PY) bench/bench_train.py | tee out/bench/train.json

venv:
	@echo $(VENV)
