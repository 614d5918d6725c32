# Two commands for a fresh machine: `make app` and `make test` (each sets up .venv first).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: app test setup bench notebooks clean

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m ipykernel install --prefix $(VENV) --name schedule-lab >/dev/null
	touch $(STAMP)

setup: $(STAMP)

app: $(STAMP)
	$(BIN)/streamlit run app.py --server.headless true --browser.gatherUsageStats false

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# execute the notebooks and store them with their outputs (static PNGs where kaleido finds Chromium)
notebooks: $(STAMP)
	$(BIN)/python notebooks/execute.py

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
