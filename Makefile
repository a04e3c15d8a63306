# The two commands of the README, and a few more for developers.
# scripts/setup_venv.sh creates (first run) or reuses the venv and prints its path.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

.PHONY: demo test test-all bench venv

demo:  ## the shipped demo model on bundled synthetic scenes, through the real ROS 2 node
	@venv=$$(scripts/setup_venv.sh); $$venv/bin/python -m meres_ros.demo --out out/demo

test:  ## the default test suite (CPU, < 15 minutes on 2 cores)
	@venv=$$(scripts/setup_venv.sh); $$venv/bin/python -m pytest -q

test-all:  ## include the slow tests
	@venv=$$(scripts/setup_venv.sh); $$venv/bin/python -m pytest -q -m "slow or not slow"

bench:  ## every benchmark section (model, backends, node, train), one JSON: out/bench/bench.json
	@venv=$$(scripts/setup_venv.sh); $$venv/bin/python -m bench --out out/bench/bench.json

venv:  ## print the venv path (creating it if needed)
	@scripts/setup_venv.sh
