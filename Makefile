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

# Installing needs no test dependencies: configure without the test suite.
install:
	cmake -S . -B $(BUILD)-install -DCMAKE_INSTALL_PREFIX=$(PREFIX) -DDETOUR_TESTS=OFF -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD)-install -j$$(nproc) --target detour
	cmake --install $(BUILD)-install --strip

bench: all
	bash tests/bench/run.sh

format:
	clang-format -i proxy/*.c include/detour/*.h tests/*/*.c tests/*/*.h

clean:
	rm -rf $(BUILD) $(BUILD)-install build-asan
