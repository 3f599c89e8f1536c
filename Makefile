# The two commands of the README. Both set up .venv (idempotent) and then run.
.PHONY: demo test test-all

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
