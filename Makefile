# moe - CPU inference engine for DeepSeek-V3-architecture MoE models.
#
#   make            build/moe (the command line) and build/libmoe.a
#   make test       install missing packages; unit tests optimized, then under ASan + UBSan (build-asan/)
#   make run        install missing Debian packages, build, generate text from the shipped toy model
#   make bench-kernels   build and run the kernel micro-benchmark (tools/bench/kernels_bench.c)
#   make fuzz       build the libFuzzer targets (clang, build-fuzz/) and run each for
#                   FUZZ_SECONDS (default 60) on its corpus in tests/fuzz/corpus/
#   make MPI=1      build-mpi/moe with the Open MPI backend of expert parallelism (docs/ep.md)
#   make clean
#
# Kernels named *_avx512.c / *_avx2.c are compiled with those ISA flags only;
# everything else is portable x86-64 and picks kernels at run time (kernels/cpu.c).

CC      ?= gcc
# Expert parallelism over MPI (docs/ep.md) is asked for, never guessed: the library never
# contains MPI. engine/ep/ep_comm_mpi.c is compiled with mpicc into $(BUILD)/ep-mpi/ep_comm_mpi.o;
# MPI=1 links it into moe (in build-mpi/ unless BUILD is given). Whenever mpicc exists the
# tests also build $(BUILD)/tests/ep_{comm,logits}_check_mpi, which tests/cli_ep.sh runs under mpirun.
MPI     ?= 0
ifeq ($(MPI),1)
  BUILD ?= build-mpi
endif
BUILD   ?= build
MPICC   ?= mpicc
HAVE_MPICC := $(shell command -v $(MPICC) 2>/dev/null)
ifeq ($(MPI),1)
  ifeq ($(HAVE_MPICC),)
    $(error MPI=1 needs $(MPICC): apt-get install libopenmpi-dev openmpi-bin)
  endif
endif
SAN     ?= 0
OPT     ?= -O2
PKGS    := jansson libpcre2-8 libmicrohttpd
DEPCFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null) -I/usr/include/x86_64-linux-gnu/openblas-pthread
# OpenBLAS is not linked: kernels/blas.c loads it at run time, after choosing its kernels
DEPLIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null || echo -ljansson -lpcre2-8 -lmicrohttpd) -lnuma -lpthread -lm -ldl

# the library's folders (README's layout table); each is on the include path
LIB_DIRS := engine engine/io engine/text engine/analysis engine/serve engine/ep kernels
SRC_DIRS := $(LIB_DIRS) tools/moe

CFLAGS  := -std=c11 -D_GNU_SOURCE -g $(OPT) -Wall -Wextra -Wno-unused-parameter -Wshadow \
           $(addprefix -I,$(SRC_DIRS)) $(DEPCFLAGS) -MMD -MP
LDFLAGS :=
ifeq ($(SAN),fuzz)
  CFLAGS  += -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=fuzzer,address,undefined
endif
ifeq ($(SAN),1)
  CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
endif

AVX512_FLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mavx512vnni -mfma -mavx2 -mf16c
AVX2_FLAGS   := -mavx2 -mfma -mf16c

MPI_SRC  := engine/ep/ep_comm_mpi.c
LIB_SRC  := $(filter-out $(MPI_SRC),$(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.c)))
TOOL_SRC := $(wildcard tools/moe/*.c)
TEST_SRC := $(wildcard tests/test_*.c)
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)

LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o) $(BUILD)/gen/serve_page.o
TOOL_OBJ := $(TOOL_SRC:%.c=$(BUILD)/%.o)
TESTS    := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
FUZZERS  := $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/fuzz/%)
MPI_OBJ  := $(BUILD)/ep-mpi/ep_comm_mpi.o
MPI_LIBS  = $(shell $(MPICC) --showme:link 2>/dev/null)
MOE_MPI_OBJ  := $(if $(filter 1,$(MPI)),$(MPI_OBJ))
MOE_MPI_LIBS  = $(if $(filter 1,$(MPI)),$(MPI_LIBS))
EP_CHECKS := $(BUILD)/tests/ep_comm_check $(BUILD)/tests/ep_logits_check \
             $(if $(HAVE_MPICC),$(BUILD)/tests/ep_comm_check_mpi $(BUILD)/tests/ep_logits_check_mpi $(BUILD)/tests/moe_mpi)

.PHONY: all deps test test-opt test-asan run clean bench-kernels fuzz fuzzers
all: $(BUILD)/moe

$(BUILD)/%_avx512.o: %_avx512.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(AVX512_FLAGS) -c $< -o $@
$(BUILD)/%_avx2.o: %_avx2.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(AVX2_FLAGS) -c $< -o $@
$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# the page of `moe serve`, engine/serve/page.html, as one C string (no external assets;
# ? is escaped too: -std=c11 would read ?? sequences as trigraphs)
$(BUILD)/gen/serve_page.c: engine/serve/page.html
	@mkdir -p $(dir $@)
	{ echo '/* generated from engine/serve/page.html by the Makefile */'; \
	  echo 'const char serve_page_html[] ='; \
	  sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/?/\\?/g' -e 's/^/"/' -e 's/$$/\\n"/' $<; echo ';'; } >$@
$(BUILD)/gen/serve_page.o: $(BUILD)/gen/serve_page.c
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libmoe.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/moe: $(TOOL_OBJ) $(MOE_MPI_OBJ) $(BUILD)/libmoe.a
	$(CC) $(LDFLAGS) -o $@ $^ $(DEPLIBS) $(MOE_MPI_LIBS)

# the MPI backend: mpicc (wrapping $(CC)) with the same flags, outside libmoe.a
$(MPI_OBJ): $(MPI_SRC)
	@mkdir -p $(dir $@)
	OMPI_CC=$(CC) $(MPICC) $(CFLAGS) -c $< -o $@

# the exchange-layer check program (tests/cli_ep.sh): single-process, and over MPI
$(BUILD)/tests/ep_comm_check: $(BUILD)/tests/ep_comm_check.o $(BUILD)/libmoe.a
	$(CC) $(LDFLAGS) -o $@ $^ $(DEPLIBS)
$(BUILD)/tests/ep_comm_check_mpi: $(BUILD)/tests/ep_comm_check.o $(MPI_OBJ) $(BUILD)/libmoe.a
	$(CC) $(LDFLAGS) -o $@ $^ $(DEPLIBS) $(MPI_LIBS)
# the engine under EP: logits bit-identical to one process (tests/ep_logits_check.c)
$(BUILD)/tests/ep_logits_check: $(BUILD)/tests/ep_logits_check.o $(BUILD)/libmoe.a
	$(CC) $(LDFLAGS) -o $@ $^ $(DEPLIBS)
$(BUILD)/tests/ep_logits_check_mpi: $(BUILD)/tests/ep_logits_check.o $(MPI_OBJ) $(BUILD)/libmoe.a
	$(CC) $(LDFLAGS) -o $@ $^ $(DEPLIBS) $(MPI_LIBS)
# moe itself with the MPI backend, for `mpirun ... moe generate --ep` in tests/cli_ep.sh
$(BUILD)/tests/moe_mpi: $(TOOL_OBJ) $(MPI_OBJ) $(BUILD)/libmoe.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(DEPLIBS) $(MPI_LIBS)

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(BUILD)/libmoe.a
	$(CC) $(LDFLAGS) -o $@ $^ -lcmocka $(DEPLIBS)

# tests/test_fuzz_regress replays tests/fuzz/{regress,corpus}/ through the fuzz target bodies.
$(BUILD)/tests/test_fuzz_regress: $(BUILD)/tests/test_fuzz_regress.o $(BUILD)/tests/fuzz/targets.o $(BUILD)/libmoe.a
	$(CC) $(LDFLAGS) -o $@ $^ -lcmocka $(DEPLIBS)
$(BUILD)/tests/test_fuzz_regress.o: CFLAGS += -Itests/fuzz

$(BUILD)/fuzz/%: $(BUILD)/tests/fuzz/%.o $(BUILD)/tests/fuzz/targets.o $(BUILD)/libmoe.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(DEPLIBS)
fuzzers: $(FUZZERS)

# libFuzzer + ASan + UBSan (clang). FUZZ_SECONDS per target, one target at a time;
# FUZZ_TARGETS="config encode" picks some. New corpus entries go to build-fuzz/corpus/.
FUZZ_SECONDS ?= 60
fuzz:
	$(MAKE) BUILD=build-fuzz CC=clang SAN=fuzz OPT=-O1 fuzzers
	FUZZ_SECONDS=$(FUZZ_SECONDS) sh tests/fuzz/run.sh $(FUZZ_TARGETS)

tests: $(TESTS) $(BUILD)/moe $(EP_CHECKS)

# The suite: every tests/test_* binary (cmocka) plus the command-line checks,
# first optimized, then under AddressSanitizer + UndefinedBehaviorSanitizer.
test-opt:
	$(MAKE) BUILD=build tests
	BUILD=build sh tests/run_all.sh
test-asan:
	$(MAKE) BUILD=build-asan SAN=1 OPT=-O1 tests
	BUILD=build-asan ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 sh tests/run_all.sh
test: deps test-opt test-asan

# (serial make builds prerequisites left to right: the packages come first)
run: deps $(BUILD)/moe
	./$(BUILD)/moe generate -m models/toy -p "Once upon a time" -n 120

$(BUILD)/bench/kernels_bench: tools/bench/kernels_bench.c $(BUILD)/libmoe.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -O3 -o $@ $< $(BUILD)/libmoe.a $(DEPLIBS)

# attn_block at depth (tools/bench/attn_bench.c)
$(BUILD)/bench/attn_bench: tools/bench/attn_bench.c $(BUILD)/libmoe.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -O3 -o $@ $< $(BUILD)/libmoe.a $(DEPLIBS)

# load generator for `moe serve` (tools/bench/serve_load.c; docs/serve.md)
$(BUILD)/bench/serve_load: tools/bench/serve_load.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -O2 -g -Wall -Wextra -o $@ $< -lpthread

# BENCH_ARGS=--quick for a short run
bench-kernels: $(BUILD)/bench/kernels_bench
	./$(BUILD)/bench/kernels_bench $(BENCH_ARGS)

# the Debian packages, installed when missing (tools/deps.sh)
deps:
	@sh tools/deps.sh

clean:
	rm -rf build build-asan build-fuzz build-mpi

-include $(LIB_OBJ:.o=.d) $(TOOL_OBJ:.o=.d) $(TESTS:=.d) $(BUILD)/tests/fuzz/*.d $(MPI_OBJ:.o=.d) $(BUILD)/tests/ep_comm_check.d $(BUILD)/tests/ep_logits_check.d
