/*
** What the CUDA backend's files share (C++, nvcc only): the per-device
** state of device.cu, the strided operand descriptors the kernels take,
** and the kernel entry points that device.cu puts in the device table.
*/
#ifndef EMBER_CUDA_INTERNAL_H
#define EMBER_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

/* tensor.h is C11: its storage's reference count is an atomic_int from
** <stdatomic.h>, which C++17 does not have (libstdc++'s <stdatomic.h> is
** empty before C++23). std::atomic<int> has the same size, alignment and
** lock-free representation on the targets CUDA supports, so the struct
** layout is the C one. tensor.h has no extern "C" of its own, and device.h
** includes it outside its guard, so it is included here first. */
#include <atomic>
#if __cplusplus <= 202002L
typedef std::atomic<int> atomic_int;
#endif
static_assert(sizeof(atomic_int) == sizeof(int), "atomic_int layout");
extern "C" {
#include "tensor.h"
}
#include "caching_allocator.h"
#include "device.h"
#include "error.h"

namespace ember_cuda {

/* ---- Devices (device.cu) --------------------------------------------------- */

/* Makes `device` current on this thread and returns its stream (created on
** first use); 0 or a negative code with a message. */
int enter(const ember_device_t *device, cudaStream_t *stream);
/* As enter, plus the device's cuBLAS handle bound to that stream. */
int enter_blas(const ember_device_t *device, cudaStream_t *stream,
               cublasHandle_t *handle);
/* Scratch memory from the device's cache (not zeroed); NULL with a message
** when out of memory. Freeing right after queueing the last kernel that
** uses it is safe: the device has one stream. */
void *scratch_alloc(const ember_device_t *device, size_t nbytes);
void scratch_free(const ember_device_t *device, void *p);
/* The device's number of multiprocessors (for sizing grids). */
int sm_count(const ember_device_t *device);

/* Leaves "cuda: <what>: <CUDA's message>" and returns EMBER_ENOMEM or
** EMBER_EFAILED; clears CUDA's last error so it is not reported twice. */
int fail(const char *what, cudaError_t err);
/* Checks the launch just made (configuration errors, earlier faults). */
int check_launch(const char *what);
/* As fail, for cuBLAS: "cuda: <what>: <cuBLAS's message>". */
int cublas_fail(const char *what, cublasStatus_t status);

/* ---- Operands ----------------------------------------------------------------- */

inline size_t dtype_size(ember_dtype_t dtype) {
  switch (dtype) {
#define EMBER_CUDA_DTYPE_SIZE(name, ctype, lname, size, isfloat)               \
  case EMBER_##name:                                                           \
    return size;
    EMBER_DTYPE_MAP(EMBER_CUDA_DTYPE_SIZE)
#undef EMBER_CUDA_DTYPE_SIZE
  default:
    return 0;
  }
}

inline bool dtype_is_float(ember_dtype_t dtype) {
  return dtype == EMBER_FLOAT32 || dtype == EMBER_FLOAT64;
}

/* A strided operand: `data` points at its first element (the tensor's
** offset applied), strides are in elements. */
struct view_t {
  char *data;
  ember_dtype_t dtype;
  int ndim;
  int64_t shape[EMBER_MAX_DIMS];
  int64_t strides[EMBER_MAX_DIMS];
};

view_t view_of(const ember_tensor_t *t);
int64_t view_numel(const view_t &v);

/* dst = src, element by element: same shape, any strides, converting the
** dtype as the CPU's copy does. Queued on `stream`. */
int copy_view(const view_t &dst, const view_t &src, cudaStream_t stream);

/* ---- Kernels for the device table (kernels.cu, blas.cu) --------------------- */

int copy(ember_tensor_t *dst, const ember_tensor_t *src);
int fill(ember_tensor_t *dst, double value);
int unary(ember_unary_op_t op, ember_tensor_t *out, const ember_tensor_t *x,
          double arg0, double arg1);
int binary(ember_binary_op_t op, ember_tensor_t *out, const ember_tensor_t *a,
           const ember_tensor_t *b);
int reduce(ember_reduce_op_t op, ember_tensor_t *out, ember_tensor_t *index,
           const ember_tensor_t *x, int dim);
int softmax(ember_tensor_t *out, const ember_tensor_t *x, int dim, int log);
int softmax_backward(ember_tensor_t *grad_x, const ember_tensor_t *grad_y,
                     const ember_tensor_t *y, int dim, int log);
int gather(ember_tensor_t *out, const ember_tensor_t *x, int dim,
           const ember_tensor_t *index);
int scatter(ember_tensor_t *dst, int dim, const ember_tensor_t *index,
            const ember_tensor_t *src, int accumulate);
int where(ember_tensor_t *out, const ember_tensor_t *cond,
          const ember_tensor_t *a, const ember_tensor_t *b);
int random_fill(ember_tensor_t *t, int normal, double a, double b,
                uint64_t seed);
int multinomial(ember_tensor_t *out, const ember_tensor_t *probs,
                uint64_t seed);
/* out[i] = alpha * a[i] @ b[i] + beta * out[i] over views of 3 dims, one
** dtype, any dtype (the fallback of blas.cu for integer matrices, k = 0 and
** sizes cuBLAS cannot take), mirroring the CPU's naive loop. */
int gemm_naive(const view_t &out, const view_t &a, const view_t &b,
               double alpha, double beta, cudaStream_t stream);
int gemm(ember_tensor_t *out, const ember_tensor_t *a, const ember_tensor_t *b,
         double alpha, double beta);
int gemm_batched(ember_tensor_t *out, const ember_tensor_t *a,
                 const ember_tensor_t *b, double alpha, double beta);

} // namespace ember_cuda

#endif
