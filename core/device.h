/*
** Which compute devices this process can use, by name ("cpu", "cuda",
** "cuda:1"). CUDA devices come from the CUDA backend (cuda/, built when the
** toolkit is found) or, for testing the device plumbing on a machine without
** a GPU, from the simulated backend (device_sim.c) that EMBER_CUDA_SIM=N
** turns on: N "cuda" devices whose memory is host memory the CPU may touch
** only inside their kernels, so that any host access the front end forgot
** to route through a device faults at once.
*/
#ifndef EMBER_DEVICE_H
#define EMBER_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "tensor.h"

#define EMBER_MAX_CUDA_DEVICES 16

typedef struct {
  uint64_t allocated_bytes; /* held by live tensors */
  uint64_t cached_bytes;    /* freed by tensors, kept for reuse */
  uint64_t peak_bytes;      /* highest allocated_bytes */
  uint64_t raw_allocs;      /* cudaMalloc calls (or their simulation) */
  uint64_t reuses;          /* allocations served from the cache */
} ember_memory_stats_t;

/*
** Sets *count to the number of usable CUDA devices. Returns 0, with *count
** 0 when CUDA is built in but no device or driver is present; EMBER_ENOCUDA
** (and *count 0) in a build without CUDA and without the simulation.
*/
int ember_cuda_device_count(int *count);
/* Whether the CUDA devices are the simulation (EMBER_CUDA_SIM). */
int ember_cuda_is_simulated(void);
/* CUDA device `index` (0-based), or NULL with a message for
** ember_tensor_error() when there is no such device. */
const ember_device_t *ember_cuda_device(int index);
/* "cpu", "cuda" (device 0) or "cuda:N" into *device; EMBER_EINVAL (bad
** name) or EMBER_ENOCUDA (no such device here) with a message. */
int ember_device_from_name(const char *name, const ember_device_t **device);
/* The card's name ("NVIDIA H100 80GB HBM3") into buf. */
int ember_cuda_device_name(int index, char *buf, size_t size);
int ember_cuda_memory_stats(int index, ember_memory_stats_t *stats);
/* Gives the cached, unused blocks of every device back to the driver. */
int ember_cuda_empty_cache(void);

/*
** What a CUDA backend provides: cuda/device.cu with the toolkit, the
** empty backend of device_none.c without it, the simulation in
** device_sim.c. device.c picks one.
*/
typedef struct {
  int (*count)(void);
  const ember_device_t *(*device)(int index);
  int (*name)(int index, char *buf, size_t size);
  int (*memory_stats)(int index, ember_memory_stats_t *stats);
  int (*empty_cache)(void);
} ember_cuda_backend_t;

/* NULL when the build has no CUDA backend. */
const ember_cuda_backend_t *ember__cuda_backend(void);
/* The simulation, for EMBER_CUDA_SIM=n devices. */
const ember_cuda_backend_t *ember__cuda_sim_backend(int n);

#ifdef __cplusplus
}
#endif

#endif
