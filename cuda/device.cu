/*
** The CUDA backend: one ember_device_t per GPU ("cuda:0", ...), each with
** one non-blocking stream that every kernel and copy of that device is
** queued on, a cuBLAS handle bound to it and a caching allocator over
** cudaMalloc. Streams and handles are made on first use, so a process that
** only asks how many devices there are creates nothing.
**
** One stream per device keeps the caching allocator safe without events
** (see caching_allocator.h) and makes the only waits the explicit ones:
** to_host, from_host and synchronize.
*/
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "cuda_internal.h"

namespace ember_cuda {
namespace {

struct device_state_t {
  ember_device_t device;
  char name[16];
  int created;      /* device and memory set up (under init_lock) */
  int stream_ready; /* read without the lock: __atomic acquire/release */
  cudaStream_t stream;
  int blas_ready;
  cublasHandle_t blas;
  int sms;
  ember_caching_allocator_t *memory;
};

/* Guards the lazy creation of everything below; never held over a kernel. */
pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
device_state_t states[EMBER_MAX_CUDA_DEVICES];
int device_count = -1; /* -1: not asked yet */

device_state_t *state_of(const ember_device_t *device) {
  return &states[device->index];
}

int set_device(int index) {
  cudaError_t err = cudaSetDevice(index);
  return err == cudaSuccess ? 0 : fail("cudaSetDevice", err);
}

/* The device's stream; the device must be current. */
int ensure_stream(device_state_t *st) {
  if (__atomic_load_n(&st->stream_ready, __ATOMIC_ACQUIRE)) return 0;
  int rc = 0;
  pthread_mutex_lock(&init_lock);
  if (!st->stream_ready) {
    cudaStream_t stream;
    cudaError_t err = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
    if (err == cudaSuccess) {
      st->stream = stream;
      __atomic_store_n(&st->stream_ready, 1, __ATOMIC_RELEASE);
    } else {
      rc = fail("cudaStreamCreateWithFlags", err);
    }
  }
  pthread_mutex_unlock(&init_lock);
  return rc;
}

int blas_fail(const char *what, cublasStatus_t status) {
  int code = status == CUBLAS_STATUS_ALLOC_FAILED ? (int)EMBER_ENOMEM
                                                  : (int)EMBER_EFAILED;
  return ember__tensor_fail(code, "cuda: %s: %s", what,
                            cublasGetStatusString(status));
}

/* The device's cuBLAS handle, bound to its stream (which must exist). */
int ensure_blas(device_state_t *st) {
  if (__atomic_load_n(&st->blas_ready, __ATOMIC_ACQUIRE)) return 0;
  int rc = 0;
  pthread_mutex_lock(&init_lock);
  if (!st->blas_ready) {
    cublasHandle_t handle;
    cublasStatus_t status = cublasCreate(&handle);
    if (status != CUBLAS_STATUS_SUCCESS) {
      rc = blas_fail("cublasCreate", status);
    } else if ((status = cublasSetStream(handle, st->stream)) !=
               CUBLAS_STATUS_SUCCESS) {
      cublasDestroy(handle);
      rc = blas_fail("cublasSetStream", status);
    } else {
      st->blas = handle;
      __atomic_store_n(&st->blas_ready, 1, __ATOMIC_RELEASE);
    }
  }
  pthread_mutex_unlock(&init_lock);
  return rc;
}

/* ---- Raw memory for the caching allocator -------------------------------- */

void *raw_alloc(size_t nbytes, void *ctx) {
  device_state_t *st = (device_state_t *)ctx;
  void *p = NULL;
  if (cudaSetDevice(st->device.index) != cudaSuccess ||
      cudaMalloc(&p, nbytes) != cudaSuccess) {
    cudaGetLastError(); /* out of memory is not sticky: clear it */
    return NULL;
  }
  return p;
}

/* cudaFree waits for the device, so no kernel still uses the block. */
void raw_free(void *p, size_t nbytes, void *ctx) {
  device_state_t *st = (device_state_t *)ctx;
  (void)nbytes;
  if (cudaSetDevice(st->device.index) != cudaSuccess ||
      cudaFree(p) != cudaSuccess) {
    cudaGetLastError(); /* nothing to report it to */
  }
}

/* ---- The device table's memory functions ----------------------------------- */

void *device_alloc(const ember_device_t *device, size_t nbytes) {
  cudaStream_t stream;
  if (enter(device, &stream) < 0) return NULL;
  device_state_t *st = state_of(device);
  void *p = ember_caching_alloc(st->memory, nbytes);
  if (p == NULL) {
    ember__tensor_fail(EMBER_ENOMEM, "cuda: out of memory allocating %zu "
                       "bytes on %s", nbytes, device->name);
    return NULL;
  }
  if (nbytes > 0) {
    cudaError_t err = cudaMemsetAsync(p, 0, nbytes, stream);
    if (err != cudaSuccess) {
      fail("cudaMemsetAsync", err);
      ember_caching_free(st->memory, p);
      return NULL;
    }
  }
  return p;
}

void device_free(const ember_device_t *device, void *data) {
  ember_caching_free(state_of(device)->memory, data);
}

int device_to_host(const ember_device_t *device, void *host, const void *data,
                   size_t nbytes) {
  if (nbytes == 0) return 0;
  cudaStream_t stream;
  int rc = enter(device, &stream);
  if (rc < 0) return rc;
  cudaError_t err = cudaMemcpyAsync(host, data, nbytes, cudaMemcpyDeviceToHost,
                                    stream);
  if (err != cudaSuccess) return fail("cudaMemcpyAsync (to host)", err);
  err = cudaStreamSynchronize(stream);
  return err == cudaSuccess ? 0 : fail("cudaStreamSynchronize", err);
}

/* Waits for the copy: the caller may free or reuse `host` at once, and a
** pinned buffer would still be read by the DMA after an async return. */
int device_from_host(const ember_device_t *device, void *data,
                     const void *host, size_t nbytes) {
  if (nbytes == 0) return 0;
  cudaStream_t stream;
  int rc = enter(device, &stream);
  if (rc < 0) return rc;
  cudaError_t err = cudaMemcpyAsync(data, host, nbytes, cudaMemcpyHostToDevice,
                                    stream);
  if (err != cudaSuccess) return fail("cudaMemcpyAsync (from host)", err);
  err = cudaStreamSynchronize(stream);
  return err == cudaSuccess ? 0 : fail("cudaStreamSynchronize", err);
}

int device_synchronize(const ember_device_t *device) {
  cudaStream_t stream;
  int rc = enter(device, &stream);
  if (rc < 0) return rc;
  cudaError_t err = cudaStreamSynchronize(stream);
  return err == cudaSuccess ? 0 : fail("cudaStreamSynchronize", err);
}

/* Portable: the staging buffer serves every device. */
void *device_host_alloc(const ember_device_t *device, size_t nbytes) {
  if (set_device(device->index) < 0) return NULL;
  void *p = NULL;
  cudaError_t err = cudaHostAlloc(&p, nbytes > 0 ? nbytes : 1,
                                  cudaHostAllocPortable);
  if (err != cudaSuccess) {
    fail("cudaHostAlloc", err);
    return NULL;
  }
  return p;
}

void device_host_free(const ember_device_t *device, void *p) {
  (void)device;
  if (p != NULL && cudaFreeHost(p) != cudaSuccess) cudaGetLastError();
}

/* ---- The backend ---------------------------------------------------------------- */

int backend_count(void) {
  pthread_mutex_lock(&init_lock);
  if (device_count < 0) {
    int n = 0;
    /* No driver or no device is not an error: there are just none. */
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();
      n = 0;
    }
    device_count = n < EMBER_MAX_CUDA_DEVICES ? n : EMBER_MAX_CUDA_DEVICES;
  }
  int n = device_count;
  pthread_mutex_unlock(&init_lock);
  return n;
}

int check_index(int index) {
  int count = backend_count();
  if (index < 0 || index >= count) {
    return ember__tensor_fail(EMBER_ENOCUDA, "cuda: there is no device "
                              "cuda:%d (%d found)", index, count);
  }
  return 0;
}

void fill_table(ember_device_t *d) {
  d->type = "cuda";
  d->is_host = 0;
  d->alloc = device_alloc;
  d->free = device_free;
  d->to_host = device_to_host;
  d->from_host = device_from_host;
  d->synchronize = device_synchronize;
  d->host_alloc = device_host_alloc;
  d->host_free = device_host_free;
  d->copy = copy;
  d->fill = fill;
  d->unary = unary;
  d->binary = binary;
  d->reduce = reduce;
  d->gemm = gemm;
  d->softmax = softmax;
  d->softmax_backward = softmax_backward;
  d->gather = gather;
  d->scatter = scatter;
  d->where = where;
  d->random = random_fill;
  d->multinomial = multinomial;
  d->gemm_batched = gemm_batched;
}

const ember_device_t *backend_device(int index) {
  if (check_index(index) < 0) return NULL;
  device_state_t *st = &states[index];
  const ember_device_t *result = &st->device;
  pthread_mutex_lock(&init_lock);
  if (!st->created) {
    st->memory = ember_caching_allocator_new(raw_alloc, raw_free, st);
    if (st->memory == NULL) {
      ember__tensor_fail(EMBER_ENOMEM, "cuda: out of memory creating the "
                         "allocator of cuda:%d", index);
      result = NULL;
    } else {
      snprintf(st->name, sizeof st->name, "cuda:%d", index);
      fill_table(&st->device);
      st->device.name = st->name;
      st->device.index = index;
      if (cudaDeviceGetAttribute(&st->sms, cudaDevAttrMultiProcessorCount,
                                 index) != cudaSuccess) {
        cudaGetLastError();
        st->sms = 1;
      }
      st->created = 1;
    }
  }
  pthread_mutex_unlock(&init_lock);
  return result;
}

int backend_name(int index, char *buf, size_t size) {
  int rc = check_index(index);
  if (rc < 0) return rc;
  cudaDeviceProp prop;
  cudaError_t err = cudaGetDeviceProperties(&prop, index);
  if (err != cudaSuccess) return fail("cudaGetDeviceProperties", err);
  snprintf(buf, size, "%s", prop.name);
  return 0;
}

/* The allocator of device `index`, NULL if it was never used. */
ember_caching_allocator_t *memory_of(int index) {
  pthread_mutex_lock(&init_lock);
  ember_caching_allocator_t *memory =
      states[index].created ? states[index].memory : NULL;
  pthread_mutex_unlock(&init_lock);
  return memory;
}

int backend_memory_stats(int index, ember_memory_stats_t *stats) {
  int rc = check_index(index);
  if (rc < 0) return rc;
  memset(stats, 0, sizeof *stats);
  ember_caching_allocator_t *memory = memory_of(index);
  if (memory != NULL) ember_caching_stats(memory, stats);
  return 0;
}

int backend_empty_cache(void) {
  int count = backend_count();
  for (int i = 0; i < count; i++) {
    ember_caching_allocator_t *memory = memory_of(i);
    if (memory != NULL) ember_caching_empty(memory);
  }
  return 0;
}

const ember_cuda_backend_t backend = {
    backend_count, backend_device, backend_name, backend_memory_stats,
    backend_empty_cache,
};

} // namespace

/* ---- Shared with kernels.cu and blas.cu --------------------------------------- */

int fail(const char *what, cudaError_t err) {
  cudaGetLastError(); /* a non-sticky error must not fail the next check */
  int code = err == cudaErrorMemoryAllocation ? (int)EMBER_ENOMEM
                                              : (int)EMBER_EFAILED;
  return ember__tensor_fail(code, "cuda: %s: %s", what,
                            cudaGetErrorString(err));
}

int check_launch(const char *what) {
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? 0 : fail(what, err);
}

int enter(const ember_device_t *device, cudaStream_t *stream) {
  int rc = set_device(device->index);
  if (rc == 0) rc = ensure_stream(state_of(device));
  if (rc == 0) *stream = state_of(device)->stream;
  return rc;
}

int enter_blas(const ember_device_t *device, cudaStream_t *stream,
               cublasHandle_t *handle) {
  int rc = enter(device, stream);
  if (rc == 0) rc = ensure_blas(state_of(device));
  if (rc == 0) *handle = state_of(device)->blas;
  return rc;
}

int cublas_fail(const char *what, cublasStatus_t status) {
  return blas_fail(what, status);
}

void *scratch_alloc(const ember_device_t *device, size_t nbytes) {
  void *p = ember_caching_alloc(state_of(device)->memory, nbytes);
  if (p == NULL) {
    ember__tensor_fail(EMBER_ENOMEM, "cuda: out of memory allocating %zu "
                       "bytes of scratch on %s", nbytes, device->name);
  }
  return p;
}

void scratch_free(const ember_device_t *device, void *p) {
  ember_caching_free(state_of(device)->memory, p);
}

int sm_count(const ember_device_t *device) {
  int sms = state_of(device)->sms;
  return sms > 0 ? sms : 1;
}

} // namespace ember_cuda

extern "C" const ember_cuda_backend_t *ember__cuda_backend(void) {
  return &ember_cuda::backend;
}
