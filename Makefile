# Two set-up commands: `make demo` (the main job) and `make test` (the suite). Both create .venv if missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint test-lmms-eval

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the tested CPU build; nothing later may replace it.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mllm demo --config configs/demo.yaml --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check mllm tests benchmarks

# The lmms-eval plugin against the real lmms-eval 0.7.3, in a venv of its own layered over .venv: lmms-eval
# pulls packages (and a filelock < 4) that the default install must not carry.
LMMS := .venv-lmms
test-lmms-eval: $(STAMP)
	test -x $(LMMS)/bin/python || $(PYTHON) -m venv $(LMMS)
	$(LMMS)/bin/python -c "import site, sysconfig; open(site.getsitepackages()[0] + '/zz_mllm_base.pth', 'w').write(sysconfig.get_path('purelib', vars={'base': '$(abspath $(VENV))', 'platbase': '$(abspath $(VENV))'}) + '\n')"
	$(LMMS)/bin/pip install -q --no-deps lmms-eval==0.7.3
	$(LMMS)/bin/pip install -q loguru sacrebleu evaluate tenacity pytablewriter "filelock<4"
	$(LMMS)/bin/python -m pytest -q tests/test_lmms_plugin.py tests/test_lmms_agreement.py
