# interest-stream: `make demo` (the main job) and `make test` (the tests) do all set-up themselves.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# pip's cache stays outside the repository (pip's default, ~/.cache/pip); Maven's is ~/.m2
PIP_FLAGS ?= -q --disable-pip-version-check
# uv installs the environment (the CUDA build of torch is 5 GB) in seconds where pip takes minutes
# (bench/install.py); its cache is ~/.cache/uv. pip stays the fallback and the worker-only install.
UV_PIN ?= uv>=0.5,<1
# Python writes each module's bytecode at its first import, under .venv/pycache, even where
# PYTHONDONTWRITEBYTECODE is set: uv writes none at install time (pip writes all of it, in minutes),
# and without a cache every process of the tests and the demo that imports torch compiles it again
unexport PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX := $(CURDIR)/$(VENV)/pycache

.PHONY: install lint test test-lowest demo bench kafka-jars clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11+ is needed (found $$($(PYTHON) --version))"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	{ $(PY) -m pip install $(PIP_FLAGS) '$(UV_PIN)' && \
	  $(VENV)/bin/uv pip install --python $(PY) -q -e '.[train,dev]'; } || \
	{ echo "uv could not install the environment; installing it with pip instead"; \
	  $(PY) -m pip install $(PIP_FLAGS) -e '.[train,dev]'; }
	@touch $(STAMP)

# ruff, configured in pyproject.toml: undefined or unused names, syntax errors and lines over 120
# characters, in every Python file (under a second)
lint: install
	$(PY) -m ruff check --quiet .

# Every test, against a real Kafka broker that the test session starts and stops itself. Most of a
# test's time is spent waiting for workers and the broker, so TEST_PROCESSES pytest processes
# (pytest-xdist; 0 runs in this one) take the test files in turn, each with its own broker, the
# longest files first (tests/conftest.py). Three on two cores: the tests' own time grew by 1 % over
# two processes, with four by 18 % (README, "The two commands").
TEST_PROCESSES ?= 3
test: install lint
	$(PY) -m pytest -p no:cacheprovider -n $(TEST_PROCESSES) --dist loadfile --no-loadscope-reorder --durations=15

# The same suite with the worker's own dependencies at the lowest versions pyproject.toml allows (uv's
# lowest-direct resolution) and the train and dev extras at .venv's versions (.ci/extras_pins.py):
# the lower bounds are versions that passed, not guesses. Not part of make test: a second suite,
# about as long. Its own environment, LOWEST_VENV; the list of what it installed comes first. Before
# the suite, .ci/serve_check.py serves a model made in .venv with a worker-only install at the
# lowest versions (LOWEST_WORKER_VENV: no extras, so tokenizers may be older than transformers needs).
LOWEST_VENV ?= .venv-lowest
LOWEST_WORKER_VENV ?= .venv-lowest-worker
test-lowest: install
	@test -x $(LOWEST_VENV)/bin/python || $(PYTHON) -m venv $(LOWEST_VENV)
	$(PY) .ci/extras_pins.py > $(LOWEST_VENV)/extras-pins.txt
	$(VENV)/bin/uv pip install --python $(LOWEST_VENV)/bin/python -q --resolution lowest-direct \
		-e '.[train,dev]' -c $(LOWEST_VENV)/extras-pins.txt
	@test -x $(LOWEST_WORKER_VENV)/bin/python || $(PYTHON) -m venv $(LOWEST_WORKER_VENV)
	$(VENV)/bin/uv pip install --python $(LOWEST_WORKER_VENV)/bin/python -q --resolution lowest-direct -e .
	rm -rf $(LOWEST_VENV)/model && $(PY) -c 'import sys; sys.path[:0] = ["tests"]; \
		from tiny_model import build_tiny_model_dir; build_tiny_model_dir(sys.argv[1])' $(LOWEST_VENV)/model
	$(PY) .ci/serve_check.py $(LOWEST_VENV)/model --write $(LOWEST_VENV)/served.json
	$(LOWEST_WORKER_VENV)/bin/python .ci/serve_check.py $(LOWEST_VENV)/model --check $(LOWEST_VENV)/served.json
	$(LOWEST_VENV)/bin/python .ci/extras_pins.py --worker
	$(LOWEST_VENV)/bin/python -m pytest -p no:cacheprovider -n $(TEST_PROCESSES) --dist loadfile --no-loadscope-reorder

demo: install
	$(VENV)/bin/interest-stream demo

# the highest simulator rate the soak held with bounded lag on the 2-core reference machine
SUSTAINED_RATE ?= 4500
# the worker before the write-behind state: the "old" side of the new-against-old runs
OLD_REF ?= ba99db7
OLD_SUSTAINED_RATE ?= 1500
# where bench/sim_bound.py's lagged bounds train the model they are compared with (one workdir per mechanisms)
SIM_BOUND_DIR ?= /tmp/interest-stream-sim-bound
# where the simulator without its mechanisms is trained on more populations and training seeds (one workdir per run)
SIM_OFF_DIR ?= /tmp/interest-stream-sim-off
# where bench/sim_scale.py trains the model on more users of one simulator (one workdir per population)
SIM_SCALE_DIR ?= /tmp/interest-stream-sim-scale
# where bench/cross_target.py and the next-basket backtest work (one workdir per run: each retrains its models)
CROSS_DIR ?= /tmp/interest-stream-cross-target

# Real training, benchmarks and the soak: figures as JSON under bench-out/. It stops at the first that fails:
# without pipefail a pipeline's status is tee's, and make went on past a benchmark that failed
bench: .SHELLFLAGS := -o pipefail -c
bench: install
	@mkdir -p bench-out
	$(PY) bench/ingest.py --old $(OLD_REF) | tee bench-out/ingest.json
	$(PY) bench/ingest.py --events 300000 --users 20000 --order inorder --old $(OLD_REF) | tee bench-out/ingest-inorder.json
	$(PY) bench/score_pass.py | tee bench-out/score_pass.json
	$(PY) bench/score_overlap.py | tee bench-out/score_overlap.json
	$(PY) bench/ingest_split.py | tee bench-out/ingest_split.json
	$(PY) bench/hot_path.py | tee bench-out/hot_path.json
	$(PY) bench/align_cost.py | tee bench-out/align_cost.json
	$(PY) bench/contention.py | tee bench-out/contention.json
	$(PY) bench/producer_cpu.py | tee bench-out/producer_cpu.json
	$(PY) bench/interrupt_send.py | tee bench-out/interrupt_send.json
	$(PY) bench/freshness.py | tee bench-out/freshness.json
	$(PY) bench/freshness.py --rate 2400 | tee bench-out/freshness-2400.json
	$(PY) bench/freshness.py --rate $(SUSTAINED_RATE) | tee bench-out/freshness-sustained.json
	$(PY) bench/soak.py --rate $(SUSTAINED_RATE) | tee bench-out/soak.json
	$(PY) bench/soak.py --rate $(OLD_SUSTAINED_RATE) --old $(OLD_REF) | tee bench-out/soak-old.json
	$(PY) bench/rebalance.py | tee bench-out/rebalance.json
	$(PY) bench/rebalance.py --kill --old ff8d33e | tee bench-out/rebalance-kill.json
	$(PY) bench/rebalance.py --kill --workers 3 --trials 2 --old ff8d33e | tee bench-out/rebalance-kill-3.json
	$(PY) bench/crash_backlog.py | tee bench-out/crash_backlog.json
	$(PY) bench/score.py | tee bench-out/score.json
	$(PY) bench/replay_speed.py | tee bench-out/replay_speed.json
	$(PY) bench/web_latency.py | tee bench-out/web_latency.json
	$(PY) bench/train_eval.py | tee bench-out/train_eval.json
	$(PY) bench/hindsight.py | tee bench-out/hindsight.json
	$(PY) bench/sim_bound.py --lags '' | tee bench-out/sim_bound.json
	for m in on off; do d=$(SIM_BOUND_DIR)-$$m; r=$$([ $$m = on ] && echo 2 || echo 3); \
		$(PY) bench/model_eval.py --dataset sim --users 1000 --days 14 --seed 2 --mechanisms $$m --workdir $$d > bench-out/sim_bound-model-$$m.json && \
		$(PY) bench/sim_bound.py --run $$r --model $$d/sim/default --max-users 150 --max-cuts 150 --workdir $$d \
		| tee bench-out/sim_bound-lags-$$m.json; done
	$(PY) bench/sim_bound.py --run 2 --model $(SIM_BOUND_DIR)-on/sim/default --max-users 75 --lags 1,2 \
		--particles 8000 --max-cuts 100 --workdir $(SIM_BOUND_DIR)-on | tee bench-out/sim_bound-lag2-on.json
	$(PY) bench/sim_bound.py --run 2 --model $(SIM_BOUND_DIR)-on/sim/default --max-users 75 --lags 2 --seed 1 \
		--particles 8000 --max-cuts 100 --workdir $(SIM_BOUND_DIR)-on | tee bench-out/sim_bound-lag2-on-seed1.json
	$(PY) bench/sim_bound.py --run 3 --model $(SIM_BOUND_DIR)-off/sim/default --max-users 75 --lags 2 \
		--particles 8000 --max-cuts 100 --workdir $(SIM_BOUND_DIR)-off | tee bench-out/sim_bound-lag2-off.json
	for s in 0 1; do $(PY) bench/sim_bound.py --run 2 --model $(SIM_BOUND_DIR)-on/sim/default --max-users 20 --lags 2 \
		--particles 8000 --max-cuts 40 --seed $$s --workdir $(SIM_BOUND_DIR)-on | tee bench-out/sim_bound-lag2-on-20-seed$$s.json; done
	for s in 0 1; do $(PY) bench/sim_bound.py --run 2 --model $(SIM_BOUND_DIR)-on/sim/default --max-users 20 --lags 2 \
		--particles 2000 --block 32 --block-moves 2 --moves 10 --max-cuts 20 --seed $$s --workdir $(SIM_BOUND_DIR)-on \
		| tee bench-out/sim_bound-lag2-on-20-moves-seed$$s.json; done
	for s in 0 1; do $(PY) bench/sim_bound.py --run 2 --model $(SIM_BOUND_DIR)-on/sim/default --max-users 20 --lags '' \
		--from-start --particles 2000 --block 32 --block-moves 2 --moves 10 --moves-last 128 --max-cuts 20 --seed $$s \
		--workdir $(SIM_BOUND_DIR)-on | tee bench-out/sim_bound-start-on-20-seed$$s.json; done
	for s in 0 1; do $(PY) bench/sim_bound.py --run 2 --model $(SIM_BOUND_DIR)-on/sim/default --max-users 10 --lags '' \
		--from-start --particles 8000 --block 32 --block-moves 2 --moves 10 --moves-last 128 --cut-every 3 \
		--max-cuts 5 --seed $$s --workdir $(SIM_BOUND_DIR)-on | tee bench-out/sim_bound-start8000-on-10-seed$$s.json; done
	for s in 0 1; do $(PY) bench/sim_bound.py --run 2 --model $(SIM_BOUND_DIR)-on/sim/default --max-users 10 --lags '' \
		--from-start --unknown-constants --particles 8000 --block 32 --block-moves 2 --moves 10 --moves-last 128 \
		--cut-every 3 --max-cuts 5 --seed $$s --workdir $(SIM_BOUND_DIR)-on \
		| tee bench-out/sim_bound-start8000-unknown-on-10-seed$$s.json; done
	$(PY) bench/sim_bound.py --run 2 --model $(SIM_BOUND_DIR)-on/sim/default --lags '' --max-cuts 100 \
		--workdir $(SIM_BOUND_DIR)-on | tee bench-out/sim_bound-mechanisms-1000x14.json
	d=$(SIM_BOUND_DIR)-on7; $(PY) bench/model_eval.py --dataset sim --users 2000 --days 7 --seed 1 --mechanisms on --threads 1 \
		--workdir $$d > bench-out/sim_bound-model-on7.json && \
		$(PY) bench/sim_bound.py --run 0 --model $$d/sim/default --lags '' --max-cuts 100 --workdir $$d \
		| tee bench-out/sim_bound-mechanisms-2000x7.json
	$(PY) bench/model_eval.py --dataset sim --users 1000 --days 14 --seed 2 --mechanisms on --set max_steps=6000 --threads 1 \
		--workdir $(SIM_BOUND_DIR)-steps | tee bench-out/model_eval-sim-max-steps-6000.json
	$(PY) bench/sim_scale.py --users 500,2000,8000,16000 --workdir $(SIM_SCALE_DIR) | tee bench-out/sim_scale.json
	$(PY) bench/live_eval.py | tee bench-out/live_eval.json
	$(PY) bench/tuned_counter.py | tee bench-out/tuned_counter.json
	$(PY) bench/rerank_eval.py | tee bench-out/rerank_eval.json
	$(PY) bench/model_eval.py --dataset cj --variants default,features,plain,single_target,no_profile | tee bench-out/ablations-cj.json
	$(PY) bench/model_eval.py --dataset movielens --variants default,features,plain,single_target,no_profile | tee bench-out/ablations-movielens.json
	$(PY) bench/pretrain_eval.py --dataset movielens | tee bench-out/pretrain_eval.json
	# the context the model reads: max_len tokens (bench/README.md, "The context the model reads")
	for L in 64 128 256; do for s in 1337 1 2; do \
		$(PY) bench/model_eval.py --dataset movielens --set seed=$$s --data-set max_len=$$L --threads 1 \
		| tee bench-out/context-movielens-$$L-$$s.json; done; \
		$(PY) bench/model_eval.py --dataset cj --data-set max_len=$$L --threads 1 | tee bench-out/context-cj-$$L.json; done
	# the test split moved back in time: four disjoint test periods per real log, pooled (bench/README.md, "The test split moved back in time")
	$(PY) bench/backtest.py --dataset movielens --variants default,features,plain,single_target,no_profile \
		| tee bench-out/backtest-movielens.json
	$(PY) bench/backtest.py --dataset cj --workdir $(CROSS_DIR)-bt-cj | tee bench-out/backtest-cj.json
	# the two periods before those four, on which no default was chosen (bench/README.md, "Two test periods no default ...")
	for d in movielens cj; do $(PY) bench/backtest.py --dataset $$d --folds 6 --skip 4 --workdir $(CROSS_DIR)-bt-heldback-$$d \
		| tee bench-out/backtest-heldback-$$d.json; done
	# train's target: chosen from the log, against the old default of the next 6 hours (bench/README.md, "The target train chooses")
	for d in movielens cj; do $(PY) bench/cross_target.py --dataset $$d | tee bench-out/cross_target-$$d.json; done
	$(PY) bench/backtest.py --dataset movielens --data-set target=time --data-set val_frac=0.15 | tee bench-out/backtest-movielens-time.json
	$(PY) bench/backtest.py --dataset movielens --data-set target=auto --data-set val_frac=0.15 --variants default,no_refit \
		--workdir $(CROSS_DIR)-bt-ml-auto | tee bench-out/backtest-movielens-auto.json
	# with and without the refit in one run: the live check's first test cuts (docs/model.md, "Through the live pipeline")
	for d in movielens cj rees46; do $(PY) bench/model_eval.py --dataset $$d --data-set target=auto --data-set val_frac=0.15 \
		--variants default,no_refit | tee bench-out/model_eval-$$d-auto.json; done
	$(PY) bench/model_eval.py --dataset sim --variants plain --data-set target=auto | tee bench-out/model_eval-sim-auto.json
	# the plain path's weights per history length, kept off (bench/README.md, "The plain path's weights per history length")
	for d in movielens cj; do $(PY) bench/model_eval.py --dataset $$d --data-set target=auto --data-set val_frac=0.15 \
		--variants default,per_length,plain,plain_per_length --threads 1 | tee bench-out/length-buckets-$$d.json; done
	# the refit on the training and validation periods, over four test periods (bench/README.md, "Refit on the training and validation periods")
	for d in movielens cj; do $(PY) bench/backtest.py --dataset $$d --variants default,no_refit \
		--workdir $(CROSS_DIR)-bt-refit-$$d | tee bench-out/backtest-refit-$$d.json; done
	# the simulator without its mechanisms at train's defaults (the refit on), against ema_prior on the events and the truth:
	# more populations, and train's seed 1337 and seeds 1, 2 on 1,000 x 14 and 4,000 x 4 days (bench/README.md, "Refit on the training and validation periods")
	for p in 2000:7:1 4000:4:3; do IFS=: read u d s <<< "$$p"; $(PY) bench/model_eval.py --dataset sim --users $$u --days $$d --seed $$s \
		--mechanisms off --variants default,no_refit --threads 1 --workdir $(SIM_OFF_DIR)-$$u-$$d | tee bench-out/refit-sim-off-$$u-$$d.json; done
	$(PY) bench/model_eval.py --dataset sim --users 3000 --days 5 --seed 4 --mechanisms off --threads 1 \
		--workdir $(SIM_OFF_DIR)-3000-5 | tee bench-out/refit-sim-off-3000-5.json
	for t in 1337 1 2; do $(PY) bench/model_eval.py --dataset sim --users 1000 --days 14 --seed 2 --mechanisms off --set seed=$$t \
		--threads 1 --workdir $(SIM_OFF_DIR)-1000-14-$$t | tee bench-out/refit-sim-off-1000-14-seed$$t.json; done
	for t in 1 2; do $(PY) bench/model_eval.py --dataset sim --users 4000 --days 4 --seed 3 --mechanisms off --set seed=$$t \
		--threads 1 --workdir $(SIM_OFF_DIR)-4000-4-$$t | tee bench-out/refit-sim-off-4000-4-seed$$t.json; done
	$(PY) bench/model_eval.py --dataset sim --users 4000 --days 4 --seed 3 --mechanisms off --set max_steps=3000 --threads 2 \
		--workdir $(SIM_OFF_DIR)-4000-4-steps | tee bench-out/refit-sim-off-4000-4-max-steps-3000.json
	# the query map: the window's searches read by the per-category network, on and off in one run
	# (docs/model.md, "Searches")
	for p in on:1000:14:2 on:2000:7:1 off:1000:14:2 off:4000:4:3; do IFS=: read m u d s <<< "$$p"; \
		$(PY) bench/model_eval.py --dataset sim --users $$u --days $$d --seed $$s --mechanisms $$m --variants default,no_queries \
		--workdir $(SIM_OFF_DIR)-q-$$m-$$u-$$d | tee bench-out/queries-sim-$$m-$$u-$$d.json; done
	$(PY) bench/model_eval.py --dataset movielens --data-set target=auto --data-set val_frac=0.15 --variants default,no_queries \
		| tee bench-out/queries-movielens.json
	$(PY) bench/backtest.py --dataset movielens --data-set target=auto --data-set val_frac=0.15 --variants default,no_queries \
		--workdir $(CROSS_DIR)-bt-ml-queries | tee bench-out/backtest-movielens-queries.json
	# the query map chosen on validation (the default, queries=auto) against the map whatever validation says (queries_on,
	# the default before 185163c) (docs/model.md, "Searches")
	$(PY) bench/backtest.py --dataset movielens --data-set target=auto --data-set val_frac=0.15 --variants default,queries_on \
		--workdir $(CROSS_DIR)-bt-ml-query-choice | tee bench-out/backtest-movielens-query-choice.json
	$(PY) bench/model_eval.py --dataset sim --users 2000 --days 7 --seed 1 --mechanisms on \
		--workdir $(SIM_OFF_DIR)-query-choice-on-2000-7 | tee bench-out/query-choice-sim-on-2000-7.json
	# the choice's verdict on MovieLens' four backtest periods and every simulated population and seed above
	$(PY) bench/query_choice.py | tee bench-out/query_choice.json
	# other horizons: train's default model asked about a shorter one, beside that horizon's own model
	$(PY) bench/cross_target.py --dataset movielens --trained-with target=auto --trained-with val_frac=0.15 \
		--scored-with target_k=3 --workdir $(CROSS_DIR)-ml3 | tee bench-out/cross_target-movielens-next3.json
	$(PY) bench/cross_target.py --dataset cj --trained-with target=auto --trained-with val_frac=0.15 \
		--scored-with target_k=1 --workdir $(CROSS_DIR)-cj1 | tee bench-out/cross_target-cj-next1.json
	$(PY) bench/cross_target.py --dataset cj --trained-with target=next_baskets --trained-with target_k=1 \
		--trained-with val_frac=0.15 --mix --workdir $(CROSS_DIR)-cj1to4 | tee bench-out/cross_target-cj-1-on-4.json
	$(PY) bench/backtest.py --dataset cj --data-set target_k=1 --workdir $(CROSS_DIR)-bt-cj1 | tee bench-out/backtest-cj-next1.json
	# an auxiliary target over other spans, training the backbone (TrainConfig.aux_horizon, off): MovieLens' next 40
	# ratings beside its next 10, the Complete Journey's next basket beside its next 4, the simulator's next day beside
	# its next 6 hours (bench/README.md, "An auxiliary target over other spans")
	$(PY) bench/backtest.py --dataset movielens --data-set target=auto --data-set val_frac=0.15 --variants default,aux4 \
		--workdir $(CROSS_DIR)-bt-ml-aux | tee bench-out/backtest-movielens-aux.json
	$(PY) bench/model_eval.py --dataset cj --variants default,aux_quarter --workdir $(CROSS_DIR)-cj-aux \
		| tee bench-out/aux-cj.json
	$(PY) bench/model_eval.py --dataset sim --users 2000 --days 7 --seed 1 --mechanisms on --variants default,aux4 \
		--workdir $(SIM_OFF_DIR)-aux-on-2000-7 | tee bench-out/aux-sim-on-2000-7.json
	# the plain path's weights per history length over MovieLens' four periods, and on their first test cuts
	$(PY) bench/backtest.py --dataset movielens --data-set target=auto --data-set val_frac=0.15 --variants default,per_length \
		--workdir $(CROSS_DIR)-bt-ml-per-length | tee bench-out/backtest-movielens-per-length.json
	$(PY) bench/first_cuts.py --workdir $(CROSS_DIR)-bt-ml-per-length | tee bench-out/first_cuts-movielens.json
	# what the items of a window add to the trained model (an item-to-interest lift), on those folds and on the grocery log's
	$(PY) bench/item_lift.py --workdir $(CROSS_DIR)-bt-ml-per-length | tee bench-out/item_lift-movielens.json
	$(PY) bench/item_lift.py --workdir $(CROSS_DIR)-bt-ml-per-length --slots 5 | tee bench-out/item_lift-movielens-5.json
	$(PY) bench/item_lift.py --dataset cj --workdir $(CROSS_DIR)-bt-cj | tee bench-out/item_lift-cj.json
	# train's stage 6 (the item lift) against the same training without it, over MovieLens' four periods
	$(PY) bench/backtest.py --dataset movielens --data-set target=auto --data-set val_frac=0.15 --variants default,no_item_lift \
		--workdir $(CROSS_DIR)-bt-ml-items | tee bench-out/backtest-movielens-items.json
	# other forms of the item lift (recency, two tables, per-length and per-category strengths, residual) on its folds
	$(PY) bench/item_lift_forms.py --workdir $(CROSS_DIR)-bt-ml-items | tee bench-out/item_lift_forms-movielens.json
	# reading the items beyond the table: neighbours' lifts, genre lists (an attribute events do not carry), a next-items model
	$(PY) bench/item_models.py --workdir $(CROSS_DIR)-bt-ml-items | tee bench-out/item_models-movielens.json
	$(PY) bench/model_eval.py --dataset cj --variants default --workdir $(CROSS_DIR)-cj-items | tee bench-out/items-cj.json
	$(PY) bench/train_cost.py | tee bench-out/train_cost.json
	$(PY) bench/install.py | tee bench-out/install.json

clean:
	rm -rf $(VENV) $(LOWEST_VENV) $(LOWEST_WORKER_VENV) *.egg-info .pytest_cache
