/* libFuzzer entry point for fuzz_eplb_plan (tests/fuzz/targets.c). */
#include "targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fuzz_eplb_plan(data, size); }
