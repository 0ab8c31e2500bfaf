# Thin wrappers over CMake. Each target first installs missing Debian packages.
BUILD ?= build
JOBS ?= $(shell nproc)
ADDR ?= 127.0.0.1:7946
DATA ?= ./data
PREFIX ?= /usr/local

.PHONY: all build run test asan fuzz bench install clean

all: build

build:
	@scripts/deps.sh build
	cmake -S . -B $(BUILD) -DAMESH_TESTS=OFF >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

run: build
	./$(BUILD)/amesh node --bind $(ADDR) --data $(DATA)

test:
	@scripts/deps.sh test
	cmake -S . -B $(BUILD) -DAMESH_TESTS=ON $(AMESH_CMAKE_FLAGS) >/dev/null
	cmake --build $(BUILD) -j $(JOBS)
	cd $(BUILD) && ctest --output-on-failure

# The whole suite under AddressSanitizer and UndefinedBehaviorSanitizer.
asan:
	@scripts/deps.sh test
	cmake -S . -B build-asan -DAMESH_TESTS=ON -DAMESH_SANITIZE=ON -DAMESH_WERROR=ON \
		-DCMAKE_BUILD_TYPE=Debug >/dev/null
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ctest --output-on-failure

# libFuzzer targets (clang), each run for FUZZ_SECONDS.
FUZZ_SECONDS ?= 30
fuzz:
	@scripts/deps.sh test
	CC=clang cmake -S . -B build-fuzz -DAMESH_TESTS=OFF -DAMESH_FUZZ=ON \
		-DAMESH_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
	cmake --build build-fuzz -j $(JOBS)
	tests/fuzz/run build-fuzz $(FUZZ_SECONDS)

# The standard scenarios and a report with plots in bench/results/DATE/.
bench: build
	@scripts/deps.sh bench
	AMESH=$(BUILD)/amesh bench/run

# A release build of amesh (in its own build directory, so $(BUILD) keeps
# its settings), its man page and its systemd unit under
# $(DESTDIR)$(PREFIX): bin/, share/man/man1/, lib/systemd/system/.
INSTALL_BUILD ?= build-release
install:
	@scripts/deps.sh build
	cmake -S . -B $(INSTALL_BUILD) -DAMESH_TESTS=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build $(INSTALL_BUILD) -j $(JOBS)
	DESTDIR="$(DESTDIR)" cmake --install $(INSTALL_BUILD) --prefix "$(PREFIX)"

clean:
	rm -rf $(BUILD) build-asan build-fuzz build-release
