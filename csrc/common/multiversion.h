// MOGEN_MULTIVERSION: compile a hot CPU loop once per x86-64 ISA level and pick
// the best clone at load time, so a generic build still runs AVX2 / AVX-512
// code where the CPU has it (GCC target_clones; a no-op elsewhere).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define MOGEN_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MOGEN_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define MOGEN_MULTIVERSION
#endif
