# The two commands of the README, plus build. Everything else is CMake + ctest.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

SANITIZE_DIR ?= build-sanitize
TSAN_DIR ?= build-tsan
SANITIZE_TESTS ?= unit|fuzz|python
# Choice: left out of the sanitized run for time. It counts the GFLOPs of nine paper-size presets by running them
# (~20 GFLOPs a forward), through the code the tiny tests sanitize; under ASan and libFuzzer's coverage it took 4 of
# the run's 7.7 minutes.
SANITIZE_EXCLUDE ?= Methods.PresetFlopsMatchThePapers
FUZZ_SECONDS ?= 60

.PHONY: build test demo bench deps clean install sanitize-build test-sanitize test-tsan fuzz

deps:
	./scripts/install-deps.sh

build: deps
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)
	cmake --build $(BUILD_DIR) -j $(JOBS)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)

# The adafocus binary and the Python package (import adafocus) into /usr/local.
install: build
	cmake --install $(BUILD_DIR)

# The reliability builds (docs/reliability.md): clang with AddressSanitizer and UndefinedBehaviorSanitizer, and
# libFuzzer's coverage; one build serves both. The CLI and the Python package only when the Python-driven tests run.
sanitize-build: deps
	cmake -S . -B $(SANITIZE_DIR) -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++-14 \
	  -DADAFOCUS_SANITIZE=address,undefined -DADAFOCUS_FUZZ=ON $(CMAKE_FLAGS)
	cmake --build $(SANITIZE_DIR) -j $(JOBS) --target adafocus_tests fuzz_replay \
	  fuzz_list fuzz_config fuzz_pth fuzz_thresholds fuzz_video fuzz_http \
	  $(if $(findstring python,$(SANITIZE_TESTS)),adafocus adafocus_python)

# Sanitized: the unit tests, the fuzz targets' saved inputs, and the Python package's and the lost-data tests
# (SANITIZE_TESTS: ctest labels; SANITIZE_EXCLUDE: a ctest name pattern left out).
test-sanitize: sanitize-build
	cd $(SANITIZE_DIR) && UBSAN_OPTIONS=print_stacktrace=1 \
	  ctest --output-on-failure -j $(JOBS) -L "$(SANITIZE_TESTS)" -E "$(SANITIZE_EXCLUDE)"

# ThreadSanitizer on the tests of our own threads: the loader and its frame cache, the server's HTTP, controller and
# metrics (docs/reliability.md says why not more).
test-tsan: deps
	cmake -S . -B $(TSAN_DIR) -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++-14 \
	  -DADAFOCUS_SANITIZE=thread -DADAFOCUS_PYTHON=OFF $(CMAKE_FLAGS)
	cmake --build $(TSAN_DIR) -j $(JOBS) --target adafocus_tests
	cd $(TSAN_DIR) && ctest --output-on-failure -j $(JOBS) -R "LoaderTest|BudgetController|Http\.|Metrics\."

# Every fuzz target for FUZZ_SECONDS from its seeds (FUZZ_TARGETS="pth http" for some).
fuzz: sanitize-build
	./scripts/fuzz.sh $(SANITIZE_DIR) $(FUZZ_SECONDS)

demo: build
	$(BUILD_DIR)/adafocus demo

bench: deps
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=Release -DADAFOCUS_BENCH=ON $(CMAKE_FLAGS)
	cmake --build $(BUILD_DIR) -j $(JOBS)
	$(BUILD_DIR)/bench/bench_backbones
	$(BUILD_DIR)/bench/bench_data
	$(BUILD_DIR)/adafocus bench --compare-python --out $(BUILD_DIR)/bench

clean:
	rm -rf $(BUILD_DIR)
