# noscope: `make demo` runs the main job on a shared clip, `make test` runs the tests.
# Both start with `make setup`, which does nothing when everything is already in place.

PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.noscope-installed
VIDEOS ?= ../shared/videos
DEMO_VIDEO ?= $(VIDEOS)/storefront-cctv_people.mp4
# torch and torchvision are pinned here, not in pyproject.toml, so a GPU host can keep its own build.
# The onnx extra brings ONNX Runtime, the default reference runtime on the CPU (reference.runtime: auto).
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup weights test demo bench clean

setup: $(STAMP) weights

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test,onnx]'
	touch $(STAMP)

weights: $(STAMP)
	$(PY) -m noscope.reference.weights

test: setup
	$(PY) -m pytest -q

# Train on the first 60% of a shared clip, then answer the whole clip at 1% error targets
# (its last 40% alone has nobody in it at the default min score, so a whole-clip timeline shows more).
# The demo searches the small grid of 3 CNNs (a few minutes on 2 cores); `noscope train`
# alone searches all 24 (about 15 minutes on 2 busy cores for this clip).
demo: setup
	$(VENV)/bin/noscope train $(DEMO_VIDEO) --object person --end 60% --name demo-storefront-person --set train.grid=small
	$(VENV)/bin/noscope query $(DEMO_VIDEO) --model demo-storefront-person \
		--target-fpr 0.01 --target-fnr 0.01 --out noscope-out/demo
	@echo "results: noscope-out/demo/{frames.csv,intervals.json,summary.json,timeline.png}"

clean:
	rm -rf noscope-out .noscope .pytest_cache
