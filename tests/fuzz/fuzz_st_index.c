/* libFuzzer entry point for fuzz_st_index (tests/fuzz/targets.c). */
#include "targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fuzz_st_index(data, size); }
