/*
** The CPU device: kernels over strided tensors, GEMM through OpenBLAS.
**
** Every kernel walks its operands with one iterator that first merges
** dimensions laid out back to back, so a contiguous tensor of any shape is a
** single row; typed row loops (float32 and float64 everywhere, every dtype
** for arithmetic) have a unit-stride case the compiler vectorises, and the
** rarer mixes go through doubles.
*/
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "tensor.h"

/* ---- The iterator --------------------------------------------------------- */

#define ITER_MAX_OPS 4

typedef struct {
  int ndim;
  int nops;
  int64_t shape[EMBER_MAX_DIMS];
  int64_t strides[ITER_MAX_OPS][EMBER_MAX_DIMS]; /* bytes */
  char *data[ITER_MAX_OPS];
} iter_t;

/* p[k] points at row element 0 of operand k, s[k] is its stride in bytes. */
typedef void (*row_fn)(const void *ctx, int64_t n, char **p, const int64_t *s);

static void iter_init(iter_t *it, const int64_t *shape, int ndim) {
  it->ndim = ndim;
  it->nops = 0;
  memcpy(it->shape, shape, sizeof(int64_t) * (size_t)ndim);
}

/* Adds t, walked with `strides` (elements; NULL: t's own). */
static void iter_add(iter_t *it, const ember_tensor_t *t,
                     const int64_t *strides) {
  int k = it->nops++;
  int64_t size = (int64_t)ember_dtype_size(t->dtype);
  if (strides == NULL) strides = t->strides;
  for (int i = 0; i < it->ndim; i++) it->strides[k][i] = strides[i] * size;
  it->data[k] = (char *)ember_tensor_data(t);
}

/* Drops size-1 dimensions and merges neighbours that are back to back in
** every operand, so the innermost row is as long as possible. */
static void iter_coalesce(iter_t *it) {
  int out = 0;
  for (int i = 0; i < it->ndim; i++) {
    if (it->shape[i] == 1) continue;
    if (out > 0) {
      int mergeable = 1;
      for (int k = 0; k < it->nops; k++) {
        if (it->strides[k][out - 1] != it->strides[k][i] * it->shape[i]) {
          mergeable = 0;
        }
      }
      if (mergeable) {
        it->shape[out - 1] *= it->shape[i];
        for (int k = 0; k < it->nops; k++) {
          it->strides[k][out - 1] = it->strides[k][i];
        }
        continue;
      }
    }
    it->shape[out] = it->shape[i];
    for (int k = 0; k < it->nops; k++) it->strides[k][out] = it->strides[k][i];
    out++;
  }
  if (out == 0) { /* a single element */
    it->shape[0] = 1;
    for (int k = 0; k < it->nops; k++) it->strides[k][0] = 0;
    out = 1;
  }
  it->ndim = out;
}

static void iter_run(iter_t *it, row_fn fn, const void *ctx) {
  iter_coalesce(it);
  for (int i = 0; i < it->ndim; i++) {
    if (it->shape[i] == 0) return;
  }
  int last = it->ndim - 1;
  int64_t index[EMBER_MAX_DIMS] = {0};
  char *p[ITER_MAX_OPS];
  int64_t s[ITER_MAX_OPS];
  for (int k = 0; k < it->nops; k++) s[k] = it->strides[k][last];
  for (;;) {
    for (int k = 0; k < it->nops; k++) {
      p[k] = it->data[k];
      for (int i = 0; i < last; i++) p[k] += index[i] * it->strides[k][i];
    }
    fn(ctx, it->shape[last], p, s);
    int d = last - 1;
    while (d >= 0 && ++index[d] == it->shape[d]) index[d--] = 0;
    if (d < 0) return;
  }
}

/* ---- Memory, copy, fill --------------------------------------------------- */

static void *cpu_alloc(const ember_device_t *device, size_t nbytes) {
  /* 64-byte alignment for AVX-512 loads; calloc semantics (zero-filled). */
  size_t rounded = (nbytes + 63) & ~(size_t)63;
  void *p = aligned_alloc(64, rounded);
  if (p != NULL) memset(p, 0, rounded);
  return p;
}

static void cpu_free(const ember_device_t *device, void *data) { free(data); }

/* The CPU's memory is the host's: staging copies are plain copies. */
static int cpu_to_host(const ember_device_t *device, void *host,
                       const void *data, size_t nbytes) {
  memcpy(host, data, nbytes);
  return 0;
}

static int cpu_from_host(const ember_device_t *device, void *data,
                         const void *host, size_t nbytes) {
  memcpy(data, host, nbytes);
  return 0;
}

static int cpu_synchronize(const ember_device_t *device) { return 0; }

typedef struct {
  ember_dtype_t to, from;
} copy_ctx_t;

static void copy_row(const void *vctx, int64_t n, char **p, const int64_t *s) {
  const copy_ctx_t *ctx = vctx;
  size_t size = ember_dtype_size(ctx->to);
  if (ctx->to == ctx->from) {
    if (s[0] == (int64_t)size && s[1] == (int64_t)size) {
      memcpy(p[0], p[1], (size_t)n * size);
      return;
    }
    for (int64_t i = 0; i < n; i++) memcpy(p[0] + i * s[0], p[1] + i * s[1], size);
    return;
  }
  if (ctx->to == EMBER_FLOAT32 && ctx->from == EMBER_FLOAT64) {
    for (int64_t i = 0; i < n; i++) {
      *(float *)(p[0] + i * s[0]) = (float)*(const double *)(p[1] + i * s[1]);
    }
    return;
  }
  if (ctx->to == EMBER_INT64 && ctx->from == EMBER_INT32) {
    for (int64_t i = 0; i < n; i++) {
      *(int64_t *)(p[0] + i * s[0]) = *(const int32_t *)(p[1] + i * s[1]);
    }
    return;
  }
  for (int64_t i = 0; i < n; i++) {
    ember__store_double(ctx->to, p[0] + i * s[0],
                        ember__load_double(ctx->from, p[1] + i * s[1]));
  }
}

static int cpu_copy(ember_tensor_t *dst, const ember_tensor_t *src) {
  iter_t it;
  copy_ctx_t ctx = {dst->dtype, src->dtype};
  iter_init(&it, dst->shape, dst->ndim);
  iter_add(&it, dst, NULL);
  iter_add(&it, src, NULL);
  iter_run(&it, copy_row, &ctx);
  return 0;
}

typedef struct {
  size_t size;
  unsigned char bytes[8];
} fill_ctx_t;

static void fill_row(const void *vctx, int64_t n, char **p, const int64_t *s) {
  const fill_ctx_t *ctx = vctx;
  for (int64_t i = 0; i < n; i++) memcpy(p[0] + i * s[0], ctx->bytes, ctx->size);
}

static int cpu_fill(ember_tensor_t *dst, double value) {
  iter_t it;
  fill_ctx_t ctx;
  ctx.size = ember_dtype_size(dst->dtype);
  ember__store_double(dst->dtype, ctx.bytes, value);
  iter_init(&it, dst->shape, dst->ndim);
  iter_add(&it, dst, NULL);
  iter_run(&it, fill_row, &ctx);
  return 0;
}

/* ---- Element-wise ------------------------------------------------------------
** LOOP3 runs `expr` over x (operand 1) and y (operand 2) into operand 0,
** with the unit-stride and scalar-y cases spelled out for the vectoriser. */

#define LOOP3(T, OT, expr)                                                     \
  do {                                                                         \
    if (s[0] == sizeof(OT) && s[1] == sizeof(T) && s[2] == sizeof(T)) {        \
      OT *o = (OT *)p[0];                                                      \
      const T *xs = (const T *)p[1], *ys = (const T *)p[2];                    \
      for (int64_t i = 0; i < n; i++) {                                        \
        T x = xs[i], y = ys[i];                                                \
        o[i] = (OT)(expr);                                                     \
      }                                                                        \
    } else if (s[0] == sizeof(OT) && s[1] == sizeof(T) && s[2] == 0) {         \
      OT *o = (OT *)p[0];                                                      \
      const T *xs = (const T *)p[1];                                           \
      const T y = *(const T *)p[2];                                            \
      for (int64_t i = 0; i < n; i++) {                                        \
        T x = xs[i];                                                           \
        o[i] = (OT)(expr);                                                     \
      }                                                                        \
    } else {                                                                   \
      for (int64_t i = 0; i < n; i++) {                                        \
        T x = *(const T *)(p[1] + i * s[1]), y = *(const T *)(p[2] + i * s[2]); \
        *(OT *)(p[0] + i * s[0]) = (OT)(expr);                                 \
      }                                                                        \
    }                                                                          \
  } while (0)

#define DEFINE_BINARY_ROW(suffix, T, IS_FLOAT)                                 \
  static void binary_row_##suffix(const void *ctx, int64_t n, char **p,        \
                                  const int64_t *s) {                          \
    switch (*(const ember_binary_op_t *)ctx) {                                 \
    case EMBER_OP_ADD: LOOP3(T, T, x + y); break;                              \
    case EMBER_OP_SUB: LOOP3(T, T, x - y); break;                              \
    case EMBER_OP_MUL: LOOP3(T, T, x * y); break;                              \
    case EMBER_OP_DIV:                                                         \
      LOOP3(T, T, (IS_FLOAT || y != 0) ? x / y : 0);                           \
      break;                                                                   \
    case EMBER_OP_POW: LOOP3(T, T, pow((double)x, (double)y)); break;          \
    case EMBER_OP_MAXIMUM: LOOP3(T, T, (x > y || x != x) ? x : y); break;      \
    case EMBER_OP_MINIMUM: LOOP3(T, T, (x < y || x != x) ? x : y); break;      \
    case EMBER_OP_EQ: LOOP3(T, uint8_t, x == y); break;                        \
    case EMBER_OP_NE: LOOP3(T, uint8_t, x != y); break;                        \
    case EMBER_OP_LT: LOOP3(T, uint8_t, x < y); break;                         \
    case EMBER_OP_LE: LOOP3(T, uint8_t, x <= y); break;                        \
    case EMBER_OP_GT: LOOP3(T, uint8_t, x > y); break;                         \
    case EMBER_OP_GE: LOOP3(T, uint8_t, x >= y); break;                        \
    default: break;                                                            \
    }                                                                          \
  }

DEFINE_BINARY_ROW(u8, uint8_t, 0)
DEFINE_BINARY_ROW(i32, int32_t, 0)
DEFINE_BINARY_ROW(i64, int64_t, 0)
DEFINE_BINARY_ROW(f32, float, 1)
DEFINE_BINARY_ROW(f64, double, 1)

static row_fn binary_row_for(ember_dtype_t dtype) {
  switch (dtype) {
  case EMBER_BOOL:
  case EMBER_UINT8: return binary_row_u8;
  case EMBER_INT32: return binary_row_i32;
  case EMBER_INT64: return binary_row_i64;
  case EMBER_FLOAT32: return binary_row_f32;
  default: return binary_row_f64;
  }
}

static int cpu_binary(ember_binary_op_t op, ember_tensor_t *out,
                      const ember_tensor_t *a, const ember_tensor_t *b) {
  iter_t it;
  iter_init(&it, out->shape, out->ndim);
  iter_add(&it, out, NULL);
  iter_add(&it, a, NULL);
  iter_add(&it, b, NULL);
  iter_run(&it, binary_row_for(a->dtype), &op);
  return 0;
}

typedef struct {
  ember_unary_op_t op;
  double a0, a1;
  ember_dtype_t out_dtype, in_dtype;
} unary_ctx_t;

static double sigmoid(double x) {
  return x >= 0 ? 1.0 / (1.0 + exp(-x)) : exp(x) / (1.0 + exp(x));
}

static double unary_scalar(const unary_ctx_t *c, double x) {
  switch (c->op) {
  case EMBER_OP_NEG: return -x;
  case EMBER_OP_EXP: return exp(x);
  case EMBER_OP_LOG: return log(x);
  case EMBER_OP_SQRT: return sqrt(x);
  case EMBER_OP_TANH: return tanh(x);
  case EMBER_OP_SIGMOID: return sigmoid(x);
  case EMBER_OP_RELU: return x > 0 ? x : (x != x ? x : 0);
  case EMBER_OP_ABS: return fabs(x);
  case EMBER_OP_SIGN: return x > 0 ? 1 : (x < 0 ? -1 : (x != x ? x : 0));
  case EMBER_OP_SIN: return sin(x);
  case EMBER_OP_COS: return cos(x);
  case EMBER_OP_LOG1P: return log1p(x);
  case EMBER_OP_RECIPROCAL: return 1.0 / x;
  case EMBER_OP_CLAMP: return x < c->a0 ? c->a0 : (x > c->a1 ? c->a1 : x);
  case EMBER_OP_AXPB: return c->a0 * x + c->a1;
  case EMBER_OP_NOT: return x == 0;
  default: return x;
  }
}

/* float32 rows get single-precision math, as PyTorch computes them. */
#define LOOP2(T, expr)                                                         \
  do {                                                                         \
    if (s[0] == sizeof(T) && s[1] == sizeof(T)) {                              \
      T *o = (T *)p[0];                                                        \
      const T *xs = (const T *)p[1];                                           \
      for (int64_t i = 0; i < n; i++) {                                        \
        T x = xs[i];                                                           \
        o[i] = (expr);                                                         \
      }                                                                        \
    } else {                                                                   \
      for (int64_t i = 0; i < n; i++) {                                        \
        T x = *(const T *)(p[1] + i * s[1]);                                   \
        *(T *)(p[0] + i * s[0]) = (expr);                                      \
      }                                                                        \
    }                                                                          \
  } while (0)

static void unary_row_f32(const void *vctx, int64_t n, char **p,
                          const int64_t *s) {
  const unary_ctx_t *c = vctx;
  const float a0 = (float)c->a0, a1 = (float)c->a1;
  switch (c->op) {
  case EMBER_OP_NEG: LOOP2(float, -x); break;
  case EMBER_OP_EXP: LOOP2(float, expf(x)); break;
  case EMBER_OP_LOG: LOOP2(float, logf(x)); break;
  case EMBER_OP_SQRT: LOOP2(float, sqrtf(x)); break;
  case EMBER_OP_TANH: LOOP2(float, tanhf(x)); break;
  case EMBER_OP_RELU: LOOP2(float, x > 0 ? x : (x != x ? x : 0.0f)); break;
  case EMBER_OP_ABS: LOOP2(float, fabsf(x)); break;
  case EMBER_OP_AXPB: LOOP2(float, a0 * x + a1); break;
  case EMBER_OP_CLAMP: LOOP2(float, x < a0 ? a0 : (x > a1 ? a1 : x)); break;
  default: LOOP2(float, (float)unary_scalar(c, x)); break;
  }
}

static void unary_row_f64(const void *vctx, int64_t n, char **p,
                          const int64_t *s) {
  const unary_ctx_t *c = vctx;
  LOOP2(double, unary_scalar(c, x));
}

static void unary_row_any(const void *vctx, int64_t n, char **p,
                          const int64_t *s) {
  const unary_ctx_t *c = vctx;
  for (int64_t i = 0; i < n; i++) {
    double x = ember__load_double(c->in_dtype, p[1] + i * s[1]);
    ember__store_double(c->out_dtype, p[0] + i * s[0], unary_scalar(c, x));
  }
}

static int cpu_unary(ember_unary_op_t op, ember_tensor_t *out,
                     const ember_tensor_t *x, double arg0, double arg1) {
  iter_t it;
  unary_ctx_t ctx = {op, arg0, arg1, out->dtype, x->dtype};
  row_fn fn = unary_row_any;
  if (out->dtype == x->dtype && x->dtype == EMBER_FLOAT32) fn = unary_row_f32;
  if (out->dtype == x->dtype && x->dtype == EMBER_FLOAT64) fn = unary_row_f64;
  iter_init(&it, out->shape, out->ndim);
  iter_add(&it, out, NULL);
  iter_add(&it, x, NULL);
  iter_run(&it, fn, &ctx);
  return 0;
}

/* ---- Reductions --------------------------------------------------------------
** The iterator walks the output; each output element loops over the reduced
** dimension of x (length `n`, stride `stride` bytes). */

typedef struct {
  ember_reduce_op_t op;
  ember_dtype_t out_dtype, x_dtype;
  int64_t n, stride;
  int with_index;
} reduce_ctx_t;

static int64_t load_int64(ember_dtype_t dtype, const char *p) {
  switch (dtype) {
  case EMBER_INT64: return *(const int64_t *)p;
  case EMBER_INT32: return *(const int32_t *)p;
  default: return *(const uint8_t *)p;
  }
}

/* Integer rows in int64 arithmetic, exact beyond 2^53 (wrapping as C's
** unsigned arithmetic does, like PyTorch's). */
static void reduce_row_int(const reduce_ctx_t *c, int64_t rows, char **p,
                           const int64_t *s) {
  for (int64_t r = 0; r < rows; r++) {
    const char *x = p[1] + r * s[1];
    uint64_t acc = c->op == EMBER_REDUCE_PROD ? 1 : 0;
    int64_t best_value = 0, best = 0;
    for (int64_t i = 0; i < c->n; i++) {
      int64_t v = load_int64(c->x_dtype, x + i * c->stride);
      if (c->op == EMBER_REDUCE_SUM) acc += (uint64_t)v;
      else if (c->op == EMBER_REDUCE_PROD) acc *= (uint64_t)v;
      else if (i == 0 || (c->op == EMBER_REDUCE_MAX ? v > best_value
                                                     : v < best_value)) {
        best_value = v;
        best = i;
      }
    }
    int64_t result = c->op >= EMBER_REDUCE_MAX ? best_value : (int64_t)acc;
    if (c->out_dtype == EMBER_INT64) *(int64_t *)(p[0] + r * s[0]) = result;
    else ember__store_double(c->out_dtype, p[0] + r * s[0], (double)result);
    if (c->with_index) *(int64_t *)(p[2] + r * s[2]) = best;
  }
}

static void reduce_row(const void *vctx, int64_t rows, char **p,
                       const int64_t *s) {
  const reduce_ctx_t *c = vctx;
  if (!ember_dtype_is_float(c->x_dtype)) {
    reduce_row_int(c, rows, p, s);
    return;
  }
  for (int64_t r = 0; r < rows; r++) {
    const char *x = p[1] + r * s[1];
    double acc = c->op == EMBER_REDUCE_PROD ? 1 : 0;
    int64_t best = 0;
    if (c->x_dtype == EMBER_FLOAT32 && c->op == EMBER_REDUCE_SUM) {
      /* The hot case (losses, gradients of broadcasts) without conversions
      ** through the generic loader. */
      for (int64_t i = 0; i < c->n; i++) acc += *(const float *)(x + i * c->stride);
    } else {
      for (int64_t i = 0; i < c->n; i++) {
        double v = ember__load_double(c->x_dtype, x + i * c->stride);
        switch (c->op) {
        case EMBER_REDUCE_SUM: acc += v; break;
        case EMBER_REDUCE_PROD: acc *= v; break;
        case EMBER_REDUCE_MAX:
        case EMBER_REDUCE_MIN:
          if (i == 0 || v != v ||
              (acc == acc && (c->op == EMBER_REDUCE_MAX ? v > acc : v < acc))) {
            if (i == 0 || acc == acc) {
              acc = v;
              best = i;
            }
          }
          break;
        default: break;
        }
      }
    }
    ember__store_double(c->out_dtype, p[0] + r * s[0], acc);
    if (c->with_index) *(int64_t *)(p[2] + r * s[2]) = best;
  }
}

static int cpu_reduce(ember_reduce_op_t op, ember_tensor_t *out,
                      ember_tensor_t *index, const ember_tensor_t *x,
                      int dim) {
  int64_t shape[EMBER_MAX_DIMS], strides[EMBER_MAX_DIMS];
  int nd = 0;
  for (int i = 0; i < x->ndim; i++) {
    if (i == dim) continue;
    shape[nd] = x->shape[i];
    strides[nd++] = x->strides[i];
  }
  reduce_ctx_t ctx = {op, out->dtype, x->dtype, x->shape[dim],
                      x->strides[dim] * (int64_t)ember_dtype_size(x->dtype),
                      index != NULL};
  iter_t it;
  iter_init(&it, shape, nd);
  iter_add(&it, out, NULL);
  iter_add(&it, x, strides);
  if (index != NULL) iter_add(&it, index, NULL);
  iter_run(&it, reduce_row, &ctx);
  return 0;
}

/* ---- GEMM ------------------------------------------------------------------ */

/* Whether m (rows x cols) can go to BLAS as is: row-major (lda = row stride)
** or column-major (transposed). */
static int blas_layout(const ember_tensor_t *m, int *transposed, int *ld) {
  int64_t rows = m->shape[0], cols = m->shape[1];
  if (m->strides[1] == 1 && (rows <= 1 || m->strides[0] >= cols) &&
      m->strides[0] >= 1) {
    *transposed = 0;
    *ld = (int)(rows <= 1 ? (cols > 0 ? cols : 1) : m->strides[0]);
    return 1;
  }
  if (m->strides[0] == 1 && (cols <= 1 || m->strides[1] >= rows) &&
      m->strides[1] >= 1) {
    *transposed = 1;
    *ld = (int)(cols <= 1 ? (rows > 0 ? rows : 1) : m->strides[1]);
    return 1;
  }
  return 0;
}

static void gemm_naive(ember_tensor_t *out, const ember_tensor_t *a,
                       const ember_tensor_t *b, double alpha, double beta) {
  int64_t m = a->shape[0], k = a->shape[1], n = b->shape[1];
  for (int64_t i = 0; i < m; i++) {
    for (int64_t j = 0; j < n; j++) {
      double acc = 0;
      for (int64_t l = 0; l < k; l++) {
        acc += ember_tensor_get(a, i * k + l) * ember_tensor_get(b, l * n + j);
      }
      double prev = beta != 0 ? ember_tensor_get(out, i * n + j) : 0;
      ember_tensor_set(out, i * n + j, alpha * acc + beta * prev);
    }
  }
}

/* A contiguous copy of m, for BLAS (NULL when out of memory). */
static ember_tensor_t *packed(const ember_tensor_t *m) {
  ember_tensor_t *c = ember_tensor_new(m->shape, 2, m->dtype, &ember_cpu_device);
  if (c != NULL) cpu_copy(c, m);
  return c;
}

static int fits_int(const ember_tensor_t *m) {
  return m->shape[0] <= INT32_MAX && m->shape[1] <= INT32_MAX &&
         m->strides[0] <= INT32_MAX && m->strides[1] <= INT32_MAX;
}

/* Operands that BLAS cannot take as they are (a broadcast gradient with
** stride 0, a slice with odd strides) are packed first: a copy is far
** cheaper than a loop over elements. */
static int cpu_gemm(ember_tensor_t *out, const ember_tensor_t *a,
                    const ember_tensor_t *b, double alpha, double beta) {
  int ta, tb, lda, ldb, tc, ldc;
  int64_t m = a->shape[0], k = a->shape[1], n = b->shape[1];
  if (m == 0 || n == 0) return 0;
  if (!ember_dtype_is_float(out->dtype) || k == 0 || !fits_int(a) ||
      !fits_int(b) || !fits_int(out)) {
    gemm_naive(out, a, b, alpha, beta);
    return 0;
  }
  ember_tensor_t *ap = NULL, *bp = NULL, *op = NULL;
  if (!blas_layout(a, &ta, &lda)) a = ap = packed(a);
  if (a != NULL && !blas_layout(b, &tb, &ldb)) b = bp = packed(b);
  ember_tensor_t *o = out;
  if (a != NULL && b != NULL && (!blas_layout(out, &tc, &ldc) || tc)) {
    o = op = packed(out); /* keeps out's values for beta */
  }
  int rc = 0;
  if (a == NULL || b == NULL || o == NULL) {
    rc = ember__tensor_fail(EMBER_ENOMEM, "out of memory packing a matrix");
  } else {
    blas_layout(a, &ta, &lda);
    blas_layout(b, &tb, &ldb);
    blas_layout(o, &tc, &ldc);
    if (o->dtype == EMBER_FLOAT32) {
      cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
                  tb ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k,
                  (float)alpha, ember_tensor_data(a), lda, ember_tensor_data(b),
                  ldb, (float)beta, ember_tensor_data(o), ldc);
    } else {
      cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
                  tb ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k,
                  alpha, ember_tensor_data(a), lda, ember_tensor_data(b), ldb,
                  beta, ember_tensor_data(o), ldc);
    }
    if (op != NULL) cpu_copy(out, op);
  }
  ember_tensor_release(ap);
  ember_tensor_release(bp);
  ember_tensor_release(op);
  return rc;
}

/* ---- Softmax ----------------------------------------------------------------- */

typedef struct {
  ember_dtype_t dtype;
  int64_t n;
  int64_t stride[3]; /* bytes along dim, per operand */
  int log;
  int backward;
} softmax_ctx_t;

#define LD(k, i) ember__load_double(c->dtype, p[k] + r * s[k] + (i) * c->stride[k])
#define ST(k, i, v)                                                            \
  ember__store_double(c->dtype, p[k] + r * s[k] + (i) * c->stride[k], (v))

/* Forward: operand 0 = out, 1 = x. Backward: 0 = grad_x, 1 = grad_y, 2 = y. */
static void softmax_row(const void *vctx, int64_t rows, char **p,
                        const int64_t *s) {
  const softmax_ctx_t *c = vctx;
  for (int64_t r = 0; r < rows; r++) {
    if (c->backward) {
      double dot = 0;
      for (int64_t i = 0; i < c->n; i++) {
        dot += c->log ? LD(1, i) : LD(1, i) * LD(2, i);
      }
      for (int64_t i = 0; i < c->n; i++) {
        double y = LD(2, i), gy = LD(1, i);
        ST(0, i, c->log ? gy - exp(y) * dot : y * (gy - dot));
      }
      continue;
    }
    double max = -INFINITY, sum = 0;
    for (int64_t i = 0; i < c->n; i++) {
      double v = LD(1, i);
      if (v > max || v != v) max = v;
    }
    for (int64_t i = 0; i < c->n; i++) sum += exp(LD(1, i) - max);
    double log_sum = log(sum);
    for (int64_t i = 0; i < c->n; i++) {
      double shifted = LD(1, i) - max;
      ST(0, i, c->log ? shifted - log_sum : exp(shifted) / sum);
    }
  }
}

#undef LD
#undef ST

static int softmax_run(const ember_tensor_t *const *ops, int nops, int dim,
                       int log, int backward) {
  const ember_tensor_t *x = ops[0];
  int64_t shape[EMBER_MAX_DIMS], strides[ITER_MAX_OPS][EMBER_MAX_DIMS];
  softmax_ctx_t c = {x->dtype, x->shape[dim], {0}, log, backward};
  int nd = 0;
  for (int i = 0; i < x->ndim; i++) {
    if (i == dim) continue;
    shape[nd] = x->shape[i];
    for (int k = 0; k < nops; k++) strides[k][nd] = ops[k]->strides[i];
    nd++;
  }
  for (int k = 0; k < nops; k++) {
    c.stride[k] = ops[k]->strides[dim] * (int64_t)ember_dtype_size(x->dtype);
  }
  iter_t it;
  iter_init(&it, shape, nd);
  for (int k = 0; k < nops; k++) iter_add(&it, ops[k], strides[k]);
  iter_run(&it, softmax_row, &c);
  return 0;
}

static int cpu_softmax(ember_tensor_t *out, const ember_tensor_t *x, int dim,
                       int log) {
  const ember_tensor_t *ops[2] = {out, x};
  return softmax_run(ops, 2, dim, log, 0);
}

static int cpu_softmax_backward(ember_tensor_t *grad_x,
                                const ember_tensor_t *grad_y,
                                const ember_tensor_t *y, int dim, int log) {
  const ember_tensor_t *ops[3] = {grad_x, grad_y, y};
  return softmax_run(ops, 3, dim, log, 1);
}

/* ---- Gather, scatter, where ------------------------------------------------- */

/* Offset (elements) of the element of t at the coordinates of position
** `flat` in `shape`, with coordinate `dim` replaced by `at`. */
static int64_t offset_with(const ember_tensor_t *t, const int64_t *shape,
                           int ndim, int64_t flat, int dim, int64_t at) {
  int64_t offset = t->offset;
  for (int i = ndim - 1; i >= 0; i--) {
    int64_t coord = flat % shape[i];
    flat /= shape[i];
    offset += (i == dim ? at : coord) * t->strides[i];
  }
  return offset;
}

static int check_index(int64_t at, int64_t size, int dim) {
  if (at < 0 || at >= size) {
    return ember__tensor_fail(EMBER_EINVAL,
                              "index %lld is out of bounds for dimension %d "
                              "of size %lld",
                              (long long)at + 1, dim + 1, (long long)size);
  }
  return 0;
}

static int cpu_gather(ember_tensor_t *out, const ember_tensor_t *x, int dim,
                      const ember_tensor_t *index) {
  int64_t n = ember_tensor_numel(index);
  size_t xs = ember_dtype_size(x->dtype);
  for (int64_t f = 0; f < n; f++) {
    int64_t at = ember_tensor_get_int(index, f);
    if (check_index(at, x->shape[dim], dim) < 0) return EMBER_EINVAL;
    int64_t src = offset_with(x, index->shape, index->ndim, f, dim, at);
    int64_t dst = offset_with(out, index->shape, index->ndim, f, -1, 0);
    memcpy((char *)out->storage->data + dst * (int64_t)xs,
           (char *)x->storage->data + src * (int64_t)xs, xs);
  }
  return 0;
}

static int cpu_scatter(ember_tensor_t *dst, int dim,
                       const ember_tensor_t *index, const ember_tensor_t *src,
                       int accumulate) {
  int64_t n = ember_tensor_numel(index);
  size_t ds = ember_dtype_size(dst->dtype), ss = ember_dtype_size(src->dtype);
  for (int64_t f = 0; f < n; f++) {
    int64_t at = ember_tensor_get_int(index, f);
    if (check_index(at, dst->shape[dim], dim) < 0) return EMBER_EINVAL;
    char *d = (char *)dst->storage->data +
              offset_with(dst, index->shape, index->ndim, f, dim, at) *
                  (int64_t)ds;
    const char *s = (const char *)src->storage->data +
                    offset_with(src, index->shape, index->ndim, f, -1, 0) *
                        (int64_t)ss;
    double v = ember__load_double(src->dtype, s);
    if (accumulate) v += ember__load_double(dst->dtype, d);
    ember__store_double(dst->dtype, d, v);
  }
  return 0;
}

typedef struct {
  ember_dtype_t dtype, cond_dtype;
} where_ctx_t;

static void where_row(const void *vctx, int64_t n, char **p, const int64_t *s) {
  const where_ctx_t *c = vctx;
  size_t size = ember_dtype_size(c->dtype);
  for (int64_t i = 0; i < n; i++) {
    int take_a = ember__load_double(c->cond_dtype, p[1] + i * s[1]) != 0;
    memcpy(p[0] + i * s[0], take_a ? p[2] + i * s[2] : p[3] + i * s[3], size);
  }
}

static int cpu_where(ember_tensor_t *out, const ember_tensor_t *cond,
                     const ember_tensor_t *a, const ember_tensor_t *b) {
  iter_t it;
  where_ctx_t ctx = {out->dtype, cond->dtype};
  iter_init(&it, out->shape, out->ndim);
  iter_add(&it, out, NULL);
  iter_add(&it, cond, NULL);
  iter_add(&it, a, NULL);
  iter_add(&it, b, NULL);
  iter_run(&it, where_row, &ctx);
  return 0;
}

/* ---- BLAS threads ------------------------------------------------------------ */

int ember_cpu_set_threads(int n) {
  if (n < 1) {
    return ember__tensor_fail(EMBER_EINVAL, "the number of threads must be at "
                                            "least 1, not %d", n);
  }
  openblas_set_num_threads(n);
  return 0;
}

int ember_cpu_threads(void) { return openblas_get_num_threads(); }

int ember_cpu_init_threads(void) {
  const char *env = getenv("EMBER_NUM_THREADS");
  int n = 1;
  if (env != NULL && *env != '\0') {
    char *end;
    long v = strtol(env, &end, 10);
    if (*end != '\0' || v < 1 || v > 1024) {
      return ember__tensor_fail(EMBER_EINVAL, "EMBER_NUM_THREADS must be a "
                                              "positive integer, not '%s'", env);
    }
    n = (int)v;
  }
  return ember_cpu_set_threads(n);
}

const ember_device_t ember_cpu_device = {
    .name = "cpu",
    .type = "cpu",
    .index = -1,
    .is_host = 1,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .to_host = cpu_to_host,
    .from_host = cpu_from_host,
    .synchronize = cpu_synchronize,
    .copy = cpu_copy,
    .fill = cpu_fill,
    .unary = cpu_unary,
    .binary = cpu_binary,
    .reduce = cpu_reduce,
    .gemm = cpu_gemm,
    .softmax = cpu_softmax,
    .softmax_backward = cpu_softmax_backward,
    .gather = cpu_gather,
    .scatter = cpu_scatter,
    .where = cpu_where,
};
