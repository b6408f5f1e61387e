/*
** GEMM on cuBLAS: out = alpha * a @ b + beta * out for row-major strided
** matrices, one at a time (cublas?gemm) or in batches with one stride per
** operand (cublas?gemmStridedBatched).
**
** cuBLAS is column-major, and a row-major matrix read as column-major is
** its transpose, so the row-major product C = A B is computed as the
** column-major C^T = B^T A^T: cuBLAS gets (B, A) with m and n swapped. An
** operand whose columns are unit-stride (strides (ld, 1)) is passed as is,
** one whose rows are (strides (1, ld)) with the transpose flag; anything
** else (a broadcast, a strided slice) is first packed into a contiguous
** scratch copy, which is far cheaper than a slow product. The output must
** be row-major with unit column stride; otherwise the product goes to a
** contiguous scratch and is copied back.
**
** What cuBLAS cannot do (integer matrices, k = 0, sizes past int) goes to
** the naive kernel of kernels.cu, which mirrors the CPU's fallback.
*/
#include <limits.h>
#include <string.h>

#include "cuda_internal.h"

namespace ember_cuda {
namespace {

/* An operand as cuBLAS gets it: views are 3-D (batch, rows, cols). */
struct operand_t {
  view_t view;   /* the operand or its packed copy */
  bool trans;    /* stored transposed: strides (1, ld) */
  int ld;        /* leading dimension, elements */
  long long batch_stride;
  void *scratch; /* the packed copy's memory (NULL: none) */
};

/* Whether a rows x cols matrix with strides (s0, s1) is row-major with unit
** column stride; its leading dimension into *ld. Size-1 dims may carry any
** stride (nothing steps along them), and get the smallest ld cuBLAS
** accepts. */
bool row_major(int64_t rows, int64_t cols, int64_t s0, int64_t s1,
               int64_t *ld) {
  int64_t min_ld = cols > 1 ? cols : 1;
  if (cols > 1 && s1 != 1) return false;
  if (rows > 1 && s0 < min_ld) return false;
  *ld = rows > 1 ? s0 : min_ld;
  return *ld <= INT_MAX;
}

/* The matrix layout of v's last two dims, as cuBLAS can take it. */
bool blas_layout(const view_t &v, bool *trans, int *ld) {
  int64_t rows = v.shape[1], cols = v.shape[2];
  int64_t s0 = v.strides[1], s1 = v.strides[2], l;
  if (row_major(rows, cols, s0, s1, &l)) {
    *trans = false;
  } else if (row_major(cols, rows, s1, s0, &l)) {
    *trans = true;
  } else {
    return false;
  }
  *ld = (int)l;
  return true;
}

/* A contiguous (batch, rows, cols) view of v's shape over `data`. */
view_t contiguous_like(const view_t &v, void *data) {
  view_t c = v;
  c.data = (char *)data;
  c.strides[2] = 1;
  c.strides[1] = v.shape[2];
  c.strides[0] = v.shape[1] * v.shape[2];
  return c;
}

/* A contiguous scratch copy of v (its values copied when `fill`). */
int pack(const ember_device_t *device, const view_t &v, bool fill,
         operand_t *op, cudaStream_t stream) {
  size_t nbytes = (size_t)view_numel(v) * dtype_size(v.dtype);
  op->scratch = scratch_alloc(device, nbytes);
  if (op->scratch == NULL) return EMBER_ENOMEM;
  op->view = contiguous_like(v, op->scratch);
  op->batch_stride = (long long)op->view.strides[0];
  blas_layout(op->view, &op->trans, &op->ld); /* row-major, ld = cols */
  return fill ? copy_view(op->view, v, stream) : 0;
}

/* An input: as is when cuBLAS can read it (a batch stride of 0 broadcasts
** one matrix over the batch), else packed. */
int prepare_input(const ember_device_t *device, const view_t &v,
                  operand_t *op, cudaStream_t stream) {
  memset(op, 0, sizeof *op);
  int64_t batch = v.shape[0];
  if (blas_layout(v, &op->trans, &op->ld) &&
      (batch == 1 || v.strides[0] >= 0)) {
    op->view = v;
    op->batch_stride = batch == 1 ? 0 : (long long)v.strides[0];
    return 0;
  }
  return pack(device, v, true, op, stream);
}

/* The output: row-major and, in a batch, matrices that do not overlap;
** else a scratch that gets out's values when beta reads them (cuBLAS does
** not read C when beta is 0, so garbage or NaN there does no harm). */
int prepare_output(const ember_device_t *device, const view_t &v,
                   double beta, operand_t *op, cudaStream_t stream) {
  memset(op, 0, sizeof *op);
  int64_t batch = v.shape[0], m = v.shape[1], n = v.shape[2];
  bool ok = blas_layout(v, &op->trans, &op->ld) && !op->trans;
  if (ok && batch > 1) {
    ok = v.strides[0] >= (m - 1) * (int64_t)op->ld + n;
  }
  if (ok) {
    op->view = v;
    op->batch_stride = batch == 1 ? 0 : (long long)v.strides[0];
    return 0;
  }
  return pack(device, v, beta != 0, op, stream);
}

cublasOperation_t op_of(const operand_t &x) {
  return x.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
}

/* C^T = B^T A^T in cuBLAS's column-major terms (see the top). */
int call_cublas(cublasHandle_t handle, ember_dtype_t dtype, int64_t batch,
                int m, int n, int k, double alpha, const operand_t &a,
                const operand_t &b, double beta, const operand_t &c) {
  cublasStatus_t status;
  if (dtype == EMBER_FLOAT32) {
    const float al = (float)alpha, be = (float)beta;
    const float *pa = (const float *)a.view.data;
    const float *pb = (const float *)b.view.data;
    float *pc = (float *)c.view.data;
    status = batch == 1
        ? cublasSgemm(handle, op_of(b), op_of(a), n, m, k, &al, pb, b.ld, pa,
                      a.ld, &be, pc, c.ld)
        : cublasSgemmStridedBatched(handle, op_of(b), op_of(a), n, m, k, &al,
                                    pb, b.ld, b.batch_stride, pa, a.ld,
                                    a.batch_stride, &be, pc, c.ld,
                                    c.batch_stride, (int)batch);
  } else {
    const double *pa = (const double *)a.view.data;
    const double *pb = (const double *)b.view.data;
    double *pc = (double *)c.view.data;
    status = batch == 1
        ? cublasDgemm(handle, op_of(b), op_of(a), n, m, k, &alpha, pb, b.ld,
                      pa, a.ld, &beta, pc, c.ld)
        : cublasDgemmStridedBatched(handle, op_of(b), op_of(a), n, m, k,
                                    &alpha, pb, b.ld, b.batch_stride, pa,
                                    a.ld, a.batch_stride, &beta, pc, c.ld,
                                    c.batch_stride, (int)batch);
  }
  if (status != CUBLAS_STATUS_SUCCESS) {
    return cublas_fail(batch == 1 ? "gemm" : "batched gemm", status);
  }
  return 0;
}

bool fits_int(int64_t v) { return v <= INT_MAX; }

int check_shapes(const view_t &out, const view_t &a, const view_t &b,
                 const char *what) {
  bool ok = a.shape[0] == out.shape[0] && b.shape[0] == out.shape[0] &&
            a.shape[1] == out.shape[1] && b.shape[2] == out.shape[2] &&
            a.shape[2] == b.shape[1];
  if (!ok) {
    return ember__tensor_fail(EMBER_EINVAL, "cuda: %s: the shapes of out, "
                              "a and b do not match", what);
  }
  if (a.dtype != out.dtype || b.dtype != out.dtype) {
    return ember__tensor_fail(EMBER_EINVAL, "cuda: %s: expected one dtype, "
                              "found %s, %s and %s", what,
                              ember_dtype_name(out.dtype),
                              ember_dtype_name(a.dtype),
                              ember_dtype_name(b.dtype));
  }
  return 0;
}

/* out (B, m, n) = alpha * a (B, m, k) @ b (B, k, n) + beta * out. */
int run_gemm(const ember_device_t *device, const view_t &out, const view_t &a,
             const view_t &b, double alpha, double beta, const char *what) {
  int rc = check_shapes(out, a, b, what);
  if (rc < 0) return rc;
  int64_t batch = out.shape[0], m = out.shape[1], n = out.shape[2];
  int64_t k = a.shape[2];
  if (batch == 0 || m == 0 || n == 0) return 0;
  cudaStream_t stream;
  if (!dtype_is_float(out.dtype) || k == 0 || !fits_int(batch) ||
      !fits_int(m) || !fits_int(n) || !fits_int(k)) {
    rc = enter(device, &stream);
    return rc < 0 ? rc : gemm_naive(out, a, b, alpha, beta, stream);
  }
  cublasHandle_t handle;
  rc = enter_blas(device, &stream, &handle);
  if (rc < 0) return rc;
  operand_t pa, pb, pc;
  memset(&pa, 0, sizeof pa);
  memset(&pb, 0, sizeof pb);
  memset(&pc, 0, sizeof pc);
  rc = prepare_input(device, a, &pa, stream);
  if (rc == 0) rc = prepare_input(device, b, &pb, stream);
  if (rc == 0) rc = prepare_output(device, out, beta, &pc, stream);
  if (rc == 0) {
    rc = call_cublas(handle, out.dtype, batch, (int)m, (int)n, (int)k, alpha,
                     pa, pb, beta, pc);
  }
  if (rc == 0 && pc.scratch != NULL) rc = copy_view(out, pc.view, stream);
  /* Stream order keeps the scratch alive until the kernels above ran. */
  scratch_free(device, pa.scratch);
  scratch_free(device, pb.scratch);
  scratch_free(device, pc.scratch);
  return rc;
}

/* A matrix as a batch of one. */
view_t as_batch(const view_t &v) {
  view_t b = v;
  b.ndim = 3;
  b.shape[0] = 1;
  b.strides[0] = 0;
  for (int i = 1; i < 3; i++) {
    b.shape[i] = v.shape[i - 1];
    b.strides[i] = v.strides[i - 1];
  }
  return b;
}

} // namespace

int gemm(ember_tensor_t *out, const ember_tensor_t *a, const ember_tensor_t *b,
         double alpha, double beta) {
  if (out->ndim != 2 || a->ndim != 2 || b->ndim != 2) {
    return ember__tensor_fail(EMBER_EINVAL, "cuda: gemm takes matrices");
  }
  return run_gemm(out->storage->device, as_batch(view_of(out)),
                  as_batch(view_of(a)), as_batch(view_of(b)), alpha, beta,
                  "gemm");
}

int gemm_batched(ember_tensor_t *out, const ember_tensor_t *a,
                 const ember_tensor_t *b, double alpha, double beta) {
  if (out->ndim != 3 || a->ndim != 3 || b->ndim != 3) {
    return ember__tensor_fail(EMBER_EINVAL, "cuda: batched gemm takes 3-D "
                              "tensors");
  }
  return run_gemm(out->storage->device, view_of(out), view_of(a), view_of(b),
                  alpha, beta, "batched gemm");
}

} // namespace ember_cuda
