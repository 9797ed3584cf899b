/* libFuzzer entry point for fuzz_chat (tests/fuzz/targets.c). */
#include "targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fuzz_chat(data, size); }
