/*
** A counter-based random stream: value i of stream `seed` is a hash of
** (seed, i), so every element of a tensor can be drawn independently, in
** any order, on any device. The CUDA kernels and the host share these
** functions, so a device draws exactly what the host would for one seed.
** The hash is splitmix64's finaliser, which passes BigCrush on counters.
*/
#ifndef EMBER_COUNTER_RNG_H
#define EMBER_COUNTER_RNG_H

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define EMBER_HOST_DEVICE __host__ __device__
#else
#define EMBER_HOST_DEVICE
#endif

static inline EMBER_HOST_DEVICE uint64_t ember_counter_u64(uint64_t seed,
                                                           uint64_t i) {
  uint64_t z = seed + (i + 1) * UINT64_C(0x9e3779b97f4a7c15);
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

/* Uniform in [0, 1), 53 bits. */
static inline EMBER_HOST_DEVICE double ember_counter_uniform(uint64_t seed,
                                                             uint64_t i) {
  return (double)(ember_counter_u64(seed, i) >> 11) * 0x1.0p-53;
}

/* Standard normal by Box-Muller from counters 2i and 2i + 1. */
static inline EMBER_HOST_DEVICE double ember_counter_normal(uint64_t seed,
                                                            uint64_t i) {
  double u1 = ember_counter_uniform(seed, 2 * i);
  double u2 = ember_counter_uniform(seed, 2 * i + 1);
  double r = sqrt(-2.0 * log(1.0 - u1));
  return r * cos(6.283185307179586476925286766559 * u2);
}

#endif
