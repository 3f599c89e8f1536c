# The two commands of the README. Both set up .venv (idempotent) and then run.
.PHONY: demo test test-all test-latest

demo:
	bash scripts/setup.sh
	.venv/bin/tirex demo

test:
	bash scripts/setup.sh dev,eval,pretrain,data,serve,distributed
	.venv/bin/python -m pytest -q

# the slow tests too (full offline-suite reproduction, longer trainings)
test-all:
	bash scripts/setup.sh dev,eval,pretrain,data,serve,distributed
	.venv/bin/python -m pytest -q -m "not gpu"

# the suite against the newest releases of the dependencies tirex allows (no constraints file: what a new user's
# `pip install tirex` gets, e.g. pandas 3 and huggingface_hub 2); the extras that cap them (eval, data) are left out
test-latest:
	LATEST=1 bash scripts/setup.sh dev,pretrain,serve,distributed
	.venv-latest/bin/python -m pytest -q
