# Two commands on a fresh machine (see README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e '.[test]'
	touch $(STAMP)

# The main job: the whole Snakemake workflow on the default (offline) config, config/config.yaml. The rules find the
# venv's `ddpm` themselves: nothing needs activating.
demo: $(STAMP)
	$(BIN)/snakemake --cores all

# pytest exits 5 when it collects no tests: that is a failure too, said plainly.
test: $(STAMP)
	@$(BIN)/python -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$status

clean:
	rm -rf $(VENV) .snakemake
