# The two commands of the README, plus build. Everything else is CMake + ctest.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: build test demo bench deps clean install

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
