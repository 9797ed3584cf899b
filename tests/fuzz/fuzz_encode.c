/* libFuzzer entry point for fuzz_encode (tests/fuzz/targets.c). */
#include "targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fuzz_encode(data, size); }
