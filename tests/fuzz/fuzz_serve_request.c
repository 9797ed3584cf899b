/* libFuzzer entry point for fuzz_serve_request (tests/fuzz/targets.c). */
#include "targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fuzz_serve_request(data, size); }
