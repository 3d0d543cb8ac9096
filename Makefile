# Two entry points for a fresh machine: `make book` (the main job) and `make test`.
# Each creates .venv if it is missing and installs the pinned dependencies into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SCALE ?=

.PHONY: book test publish clean-book

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[book,test,ray]"
	touch $(STAMP)

book: $(STAMP)
	$(VENV)/bin/gradpath book $(if $(SCALE),--scale $(SCALE))

test: $(STAMP)
	$(PY) -m pytest -q

publish: book
	$(VENV)/bin/ghp-import --no-jekyll --push --force _build/html

clean-book:
	rm -rf _build
