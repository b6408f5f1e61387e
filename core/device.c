/*
** Devices by name, and the choice of CUDA backend: the simulation when
** EMBER_CUDA_SIM asks for it, else the toolkit's (if built in).
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "error.h"

static const ember_cuda_backend_t *chosen_backend;
static int backend_chosen;
static int backend_simulated;
static int sim_setting_bad;

/* EMBER_CUDA_SIM: unset, empty or 0 is off; 1..16 devices; else refused. */
static void choose_backend(void) {
  if (backend_chosen) return;
  backend_chosen = 1;
  const char *sim = getenv("EMBER_CUDA_SIM");
  if (sim != NULL && *sim != '\0' && strcmp(sim, "0") != 0) {
    char *end;
    long n = strtol(sim, &end, 10);
    if (*end != '\0' || n < 1 || n > EMBER_MAX_CUDA_DEVICES) {
      sim_setting_bad = 1;
      return;
    }
    chosen_backend = ember__cuda_sim_backend((int)n);
    backend_simulated = 1;
    return;
  }
  chosen_backend = ember__cuda_backend();
}

static int fail_bad_setting(void) {
  return ember__tensor_fail(EMBER_EINVAL,
                            "EMBER_CUDA_SIM must be a number of simulated "
                            "devices from 0 to %d, not '%s'",
                            EMBER_MAX_CUDA_DEVICES,
                            getenv("EMBER_CUDA_SIM"));
}

int ember_device_same(const ember_device_t *a, const ember_device_t *b) {
  return a == b || (strcmp(a->type, b->type) == 0 && a->index == b->index);
}

int ember_cuda_device_count(int *count) {
  *count = 0;
  choose_backend();
  if (sim_setting_bad) return fail_bad_setting();
  if (chosen_backend == NULL) return EMBER_ENOCUDA;
  *count = chosen_backend->count();
  return 0;
}

int ember_cuda_is_simulated(void) {
  choose_backend();
  return backend_simulated;
}

const ember_device_t *ember_cuda_device(int index) {
  int count;
  int rc = ember_cuda_device_count(&count);
  if (rc == EMBER_ENOCUDA) {
    ember__tensor_fail(EMBER_ENOCUDA, "device 'cuda:%d' is not available: "
                       "this build has no CUDA backend", index);
    return NULL;
  }
  if (rc < 0) return NULL;
  if (index < 0 || index >= count) {
    if (count == 0) {
      ember__tensor_fail(EMBER_ENOCUDA, "device 'cuda:%d' is not available: "
                         "no CUDA device or driver was found", index);
    } else {
      ember__tensor_fail(EMBER_ENOCUDA, "device 'cuda:%d' is not available: "
                         "this worker has %d CUDA device%s (cuda:0 to "
                         "cuda:%d)", index, count, count == 1 ? "" : "s",
                         count - 1);
    }
    return NULL;
  }
  return chosen_backend->device(index);
}

int ember_device_from_name(const char *name, const ember_device_t **device) {
  *device = NULL;
  if (strcmp(name, "cpu") == 0) {
    *device = &ember_cpu_device;
    return 0;
  }
  int index = 0;
  if (strncmp(name, "cuda", 4) == 0 && name[4] != '\0') {
    char *end;
    long n = name[4] == ':' && name[5] >= '0' && name[5] <= '9'
                 ? strtol(name + 5, &end, 10) : -1;
    if (n < 0 || *end != '\0' || n > INT32_MAX) goto bad;
    index = (int)n;
  } else if (strcmp(name, "cuda") != 0) {
    goto bad;
  }
  *device = ember_cuda_device(index);
  return *device != NULL ? 0 : EMBER_ENOCUDA;
bad:
  return ember__tensor_fail(EMBER_EINVAL, "unknown device '%s' (expected "
                            "'cpu', 'cuda' or 'cuda:N')", name);
}

int ember_cuda_device_name(int index, char *buf, size_t size) {
  if (ember_cuda_device(index) == NULL) return EMBER_ENOCUDA;
  return chosen_backend->name(index, buf, size);
}

int ember_cuda_memory_stats(int index, ember_memory_stats_t *stats) {
  memset(stats, 0, sizeof *stats);
  if (ember_cuda_device(index) == NULL) return EMBER_ENOCUDA;
  return chosen_backend->memory_stats(index, stats);
}

int ember_cuda_empty_cache(void) {
  choose_backend();
  return chosen_backend != NULL ? chosen_backend->empty_cache() : 0;
}
