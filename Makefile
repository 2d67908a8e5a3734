# CoCoPath: `make run` opens the app, `make test` runs every test. Both set up what is missing first.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cocopath-installed
# The CPU build of torch lies on disk on our machines; elsewhere pip fetches this release.
TORCH  ?= torch==2.13.0
SLIDE  ?=
# On machines that carry the shared test data, the sample slide comes from there (no download).
SHARED_SAMPLE := $(wildcard ../shared/data/slides/cmu-1-small-region.svs)
export COCOPATH_SAMPLE ?= $(if $(SHARED_SAMPLE),$(abspath $(SHARED_SAMPLE)),)

QT_LIBS  := libglib-2.0.so.0:libglib2.0-0 libGL.so.1:libgl1 libEGL.so.1:libegl1 \
            libxkbcommon.so.0:libxkbcommon0 libfontconfig.so.1:libfontconfig1 libdbus-1.so.3:libdbus-1-3
XCB_LIBS := libxcb-icccm.so.4:libxcb-icccm4 libxcb-keysyms.so.1:libxcb-keysyms1 \
            libxcb-cursor.so.0:libxcb-cursor0 libxcb-image.so.0:libxcb-image0 \
            libxcb-render-util.so.0:libxcb-render-util0 libxcb-shape.so.0:libxcb-shape0 \
            libxcb-xkb.so.1:libxcb-xkb1 libxkbcommon-x11.so.0:libxkbcommon-x11-0

.PHONY: run test setup check-qt-libs check-window-libs bench-viewer bench-distill bench-distill-long clean

run: setup check-window-libs
	$(BIN)/cocopath $(SLIDE)

test: setup check-qt-libs
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q $(PYTEST_ARGS)

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install "$(TORCH)"
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

# Qt needs a few system libraries; print the one apt command that installs the missing ones.
define check_libs
	@if command -v ldconfig >/dev/null 2>&1 || [ -x /sbin/ldconfig ]; then \
	  cache=$$( (ldconfig -p 2>/dev/null || /sbin/ldconfig -p) ); missing=""; \
	  for pair in $(1); do lib=$${pair%%:*}; pkg=$${pair##*:}; \
	    echo "$$cache" | grep -q "$$lib" || missing="$$missing $$pkg"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "Qt needs system libraries that this machine lacks. Install them with:"; \
	    sudo=$$([ "$$(id -u)" = 0 ] || echo "sudo "); \
	    echo "  $${sudo}apt-get install -y$$missing"; exit 1; fi; \
	fi
endef

check-qt-libs:
	$(call check_libs,$(QT_LIBS))

check-window-libs: check-qt-libs
	$(call check_libs,$(XCB_LIBS))

bench-viewer: setup
	QT_QPA_PLATFORM=offscreen $(BIN)/cocopath --bench-viewer resources/benchmarks/viewer.json

# The CPU distillation protocol, resumable in work/ (git-ignored): rerun to continue after a stop.
bench-distill: setup
	$(BIN)/cocopath-engine bench distill --protocol cpu --workdir work/distill-cpu \
	  --out resources/benchmarks/distill-cpu.json --ship resources/models

# The cpu-long protocol in the background at the lowest priority, resumable in work/: the teacher
# and its crop bank (2 threads), then the student runs in two processes (1 thread each; each takes
# the next run the other has not locked), then the report of the finished runs. Rerun to continue
# after a stop; the logs go to work/*.log.
LONG := $(BIN)/cocopath-engine bench distill --protocol cpu-long --workdir work/distill-cpu-long
# Lowest priority as seen from every session (engine/background.py: a session of its own whose
# autogroup is at nice 19; plain `nice` only ranks processes within one session). Ctrl-C still stops it.
BACKGROUND := $(BIN)/python -m engine.background
bench-distill-long: setup
	mkdir -p work
	$(BACKGROUND) $(LONG) --teacher-only >> work/teacher.log 2>&1
	$(BACKGROUND) $(LONG) --runs-only >> work/students-a.log 2>&1 & \
	$(BACKGROUND) $(LONG) --runs-only >> work/students-b.log 2>&1; wait
	$(BACKGROUND) $(LONG) --finished-only --out resources/benchmarks/distill-cpu-long.json

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
