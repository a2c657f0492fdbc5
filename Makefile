# Thin wrapper around CMake; the real build is CMakeLists.txt.
BUILD ?= build
PREFIX ?= /usr/local

.PHONY: all test asan demo install clean format bench

all:
	cmake -S . -B $(BUILD) -DCMAKE_INSTALL_PREFIX=$(PREFIX)
	cmake --build $(BUILD) -j$$(nproc)

test:
	bash scripts/test.sh

asan:
	SANITIZE=1 bash scripts/test.sh

demo:
	bash scripts/demo.sh

install: all
	cmake --install $(BUILD)

bench: all
	bash tests/bench/run.sh

format:
	clang-format -i proxy/*.c include/detour/*.h tests/*/*.c tests/*/*.h

clean:
	rm -rf $(BUILD) build-asan
