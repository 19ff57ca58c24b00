# Two commands for a newcomer: `make quickstart` and `make test`. Both create .venv and install into it first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Tests and the quickstart never touch the Hugging Face Hub.
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

QUICKSTART_DIR ?= outputs/quickstart
QUICKSTART_STEPS ?= 400

.PHONY: install quickstart test bench clean

install: $(VENV)/.installed

# torch is pinned and installed first when missing: a looser requirement would pull the multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -e ".[training,dev]"
	touch $@

# The main job on the bundled data: tokenizer -> a few minutes of MLM pretraining with the enhanced mask decoder on
# data/wiki_sample (validation perplexity and masked-token accuracy before and after) -> fill-mask -> fine-tuning
# on data/sentiment_sample -> the classifier reloaded through AutoModelForSequenceClassification and pipeline().
quickstart: install
	$(PY) scripts/train_tokenizer.py --train_files data/wiki_sample/train.txt --vocab_size 4000 \
		--output_dir $(QUICKSTART_DIR)/tokenizer
	$(PY) scripts/pretrain_mlm.py --config_name configs/mini.json --tokenizer_name $(QUICKSTART_DIR)/tokenizer \
		--output_dir $(QUICKSTART_DIR)/mlm --do_train --do_eval --eval_before_training \
		--max_steps $(QUICKSTART_STEPS) --per_device_train_batch_size 32 --learning_rate 1e-3 --warmup_steps 40 \
		--logging_steps 50 --save_steps 200 --save_total_limit 1 --use_cpu --report_to none --seed 0
	$(PY) scripts/fill_mask.py $(QUICKSTART_DIR)/mlm "The city is located on the [MASK] of the river."
	$(PY) scripts/finetune_glue.py --model_name_or_path $(QUICKSTART_DIR)/mlm --output_dir $(QUICKSTART_DIR)/sentiment \
		--do_train --do_eval --use_cpu --report_to none --seed 0
	$(PY) scripts/classify.py $(QUICKSTART_DIR)/sentiment "A moving, beautifully acted and often funny film." \
		"A dull, lifeless mess that goes nowhere."

# Lint and format checks first (ruff, configured in pyproject.toml), then the whole suite.
test: install
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# Speed and memory against transformers' DebertaV2 and BertModel (base size: hours on 2 CPU cores). Pass
# BENCH_ARGS="--shapes 1x512 1x2048 --lean_shapes --train_shapes" for a subset, or "--device cuda --dtype bf16".
bench: install
	$(PY) scripts/benchmark.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache
