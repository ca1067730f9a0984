# Two commands on a fresh machine (see README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := results/demo

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e '.[test]'
	touch $(STAMP)

# Until the Snakemake pipeline lands: train a small model on the offline digits data set, then sample a grid.
demo: $(STAMP)
	$(BIN)/ddpm train --out $(DEMO) --dataset digits --preset tiny --schedule linear --T 200 --schedule-rescale true \
		--steps 1500 --batch-size 128 --lr 1e-3 --warmup 100 --ema-decay 0.995 --log-every 100
	$(BIN)/ddpm sample --checkpoint $(DEMO)/checkpoint.pt --out $(DEMO)/samples.npz --grid $(DEMO)/samples.png --count 64

# pytest exits 5 when it collects no tests: that is a failure too, said plainly.
test: $(STAMP)
	@$(BIN)/python -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$status

clean:
	rm -rf $(VENV) results/demo
