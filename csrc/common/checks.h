// Argument checks for the torch-facing side; every message names the argument.
#pragma once

#include <c10/util/Exception.h>

#define MOGEN_CHECK(cond, ...) TORCH_CHECK(cond, "mogen: ", __VA_ARGS__)
#define MOGEN_CHECK_ARG(cond, ...) TORCH_CHECK_VALUE(cond, "mogen: ", __VA_ARGS__)
#define MOGEN_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, "mogen: ", __VA_ARGS__)
