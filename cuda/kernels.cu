/*
** The CUDA kernels of the device table (all but GEMM): each mirrors the
** CPU's kernel of tensor_cpu.c, operation for operation, so that a device
** computes what the host computes.
**
** Operands are strided (any strides, 0 for broadcast dims) and walked as the
** CPU walks them: an iterator over one shape with per-operand byte strides,
** its dimensions coalesced first (size-1 dims dropped, neighbours laid out
** back to back merged), so a contiguous tensor is a single dimension and the
** div/mod that turns a linear index into offsets runs once per element over
** as few dimensions as possible. All indexing is 64-bit; every kernel is a
** grid-stride loop on the device's stream.
**
** Matching the CPU bit for bit:
**  - conversions from double follow ember__store_double (bool: v != 0; the
**    integer ones truncate, with x86's result for NaN and out-of-range
**    values, which is what the host's cvttsd2si gives);
**  - nvcc contracts a * b + c into a fused multiply-add, the host compiler
**    (x86-64, ISO C) does not: every multiply that feeds an add goes through
**    __fmul_rn/__dmul_rn, which are never contracted;
**  - sums run in double as on the CPU and, below the block threshold, in the
**    CPU's order.
*/
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

#include "counter_rng.h"
#include "cuda_internal.h"

namespace ember_cuda {

view_t view_of(const ember_tensor_t *t) {
  view_t v;
  memset(&v, 0, sizeof v);
  v.dtype = t->dtype;
  v.ndim = t->ndim;
  v.data = (char *)t->storage->data +
           t->offset * (int64_t)dtype_size(t->dtype);
  for (int i = 0; i < t->ndim; i++) {
    v.shape[i] = t->shape[i];
    v.strides[i] = t->strides[i];
  }
  return v;
}

int64_t view_numel(const view_t &v) {
  int64_t n = 1;
  for (int i = 0; i < v.ndim; i++) n *= v.shape[i];
  return n;
}

namespace {

constexpr int kThreads = 256;      /* a power of two: the tree reductions */
constexpr int64_t kMaxBlocks = 65535;
/* Reductions over at least this many elements may get a block per output. */
constexpr int64_t kBlockThreshold = 1024;

int blocks_for(int64_t n) {
  int64_t blocks = (n + kThreads - 1) / kThreads;
  return (int)(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

/* Whether reducing `rows` outputs over n elements `stride` bytes apart
** (elements of `elsize` bytes) takes a block per output rather than a
** thread. A block reads a row together, which pays when the row is long
** and contiguous, or when there are too few rows to occupy the GPU. A
** thread per output is better otherwise: neighbouring outputs are
** neighbours in memory, so the threads of a warp read together, and the
** sum runs in the CPU's order. */
bool block_per_row(const ember_device_t *device, int64_t rows, int64_t n,
                   int64_t stride, size_t elsize) {
  if (n < kBlockThreshold) return false;
  return stride == (int64_t)elsize || rows < 2 * (int64_t)sm_count(device);
}

#define GRID_LOOP(i, n)                                                        \
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);    \
       i += (int64_t)blockDim.x * gridDim.x)

/* ---- The iterator ----------------------------------------------------------- */

template <int N> struct iter_t {
  int ndim;
  int64_t shape[EMBER_MAX_DIMS];
  int64_t strides[N][EMBER_MAX_DIMS]; /* bytes */
  char *data[N];
};

template <int N>
void iter_init(iter_t<N> &it, const int64_t *shape, int ndim) {
  memset(&it, 0, sizeof it);
  it.ndim = ndim;
  for (int i = 0; i < ndim; i++) it.shape[i] = shape[i];
}

/* Operand k: its first element and its strides (elements, one per dim of
** the iterator's shape; NULL: a broadcast scalar, or an absent operand). */
template <int N>
void iter_set(iter_t<N> &it, int k, char *data, const int64_t *strides,
              size_t elsize) {
  it.data[k] = data;
  for (int i = 0; i < it.ndim; i++) {
    it.strides[k][i] = strides != NULL ? strides[i] * (int64_t)elsize : 0;
  }
}

template <int N> void iter_set_view(iter_t<N> &it, int k, const view_t &v) {
  iter_set(it, k, v.data, v.strides, dtype_size(v.dtype));
}

/* Coalesces the dims (as the CPU's iter_coalesce) and returns the number
** of elements (0: nothing to do). */
template <int N> int64_t iter_finish(iter_t<N> &it) {
  int64_t numel = 1;
  for (int i = 0; i < it.ndim; i++) numel *= it.shape[i];
  if (numel == 0) return 0;
  int out = 0;
  for (int i = 0; i < it.ndim; i++) {
    if (it.shape[i] == 1) continue;
    bool mergeable = out > 0;
    for (int k = 0; k < N && mergeable; k++) {
      mergeable = it.strides[k][out - 1] == it.strides[k][i] * it.shape[i];
    }
    if (mergeable) {
      it.shape[out - 1] *= it.shape[i];
      for (int k = 0; k < N; k++) it.strides[k][out - 1] = it.strides[k][i];
      continue;
    }
    it.shape[out] = it.shape[i];
    for (int k = 0; k < N; k++) it.strides[k][out] = it.strides[k][i];
    out++;
  }
  if (out == 0) { /* a single element */
    it.shape[0] = 1;
    for (int k = 0; k < N; k++) it.strides[k][0] = 0;
    out = 1;
  }
  it.ndim = out;
  return numel;
}

/* Byte offsets of every operand at row-major position i. */
template <int N>
__device__ __forceinline__ void iter_offsets(const iter_t<N> &it, int64_t i,
                                             int64_t (&off)[N]) {
#pragma unroll
  for (int k = 0; k < N; k++) off[k] = 0;
  for (int d = it.ndim - 1; d > 0; d--) {
    int64_t size = it.shape[d];
    int64_t c = i % size;
    i /= size;
#pragma unroll
    for (int k = 0; k < N; k++) off[k] += c * it.strides[k][d];
  }
#pragma unroll
  for (int k = 0; k < N; k++) off[k] += i * it.strides[k][0];
}

/* ---- Dtypes ------------------------------------------------------------------ */

/* C's (int64_t)v and (int32_t)v as x86-64 computes them: out of range and
** NaN give the "integer indefinite" value, the most negative one. */
__device__ __forceinline__ int64_t to_i64(double v) {
  return v >= -9223372036854775808.0 && v < 9223372036854775808.0
             ? (int64_t)v : INT64_MIN;
}

__device__ __forceinline__ int32_t to_i32(double v) {
  return v > -2147483649.0 && v < 2147483648.0 ? (int32_t)v : INT32_MIN;
}

/* Per dtype: its C type and ember__store_double's conversion. */
template <ember_dtype_t D> struct dt;
template <> struct dt<EMBER_BOOL> {
  typedef uint8_t T;
  static __device__ T from(double v) { return v != 0; }
};
template <> struct dt<EMBER_UINT8> {
  typedef uint8_t T;
  static __device__ T from(double v) { return (uint8_t)to_i64(v); }
};
template <> struct dt<EMBER_INT32> {
  typedef int32_t T;
  static __device__ T from(double v) { return to_i32(v); }
};
template <> struct dt<EMBER_INT64> {
  typedef int64_t T;
  static __device__ T from(double v) { return to_i64(v); }
};
template <> struct dt<EMBER_FLOAT32> {
  typedef float T;
  static __device__ T from(double v) { return (float)v; }
};
template <> struct dt<EMBER_FLOAT64> {
  typedef double T;
  static __device__ T from(double v) { return v; }
};

/* ember__load_double / ember__store_double with the dtype known at run
** time (the rarer mixes, as on the CPU). */
__device__ double load_any(ember_dtype_t dtype, const char *p) {
  switch (dtype) {
  case EMBER_BOOL:
  case EMBER_UINT8: return *(const uint8_t *)p;
  case EMBER_INT32: return *(const int32_t *)p;
  case EMBER_INT64: return (double)*(const int64_t *)p;
  case EMBER_FLOAT32: return *(const float *)p;
  case EMBER_FLOAT64: return *(const double *)p;
  default: return 0;
  }
}

__device__ void store_any(ember_dtype_t dtype, char *p, double v) {
  switch (dtype) {
  case EMBER_BOOL: *(uint8_t *)p = dt<EMBER_BOOL>::from(v); break;
  case EMBER_UINT8: *(uint8_t *)p = dt<EMBER_UINT8>::from(v); break;
  case EMBER_INT32: *(int32_t *)p = dt<EMBER_INT32>::from(v); break;
  case EMBER_INT64: *(int64_t *)p = dt<EMBER_INT64>::from(v); break;
  case EMBER_FLOAT32: *(float *)p = dt<EMBER_FLOAT32>::from(v); break;
  case EMBER_FLOAT64: *(double *)p = v; break;
  default: break;
  }
}

/* An index operand (int64 by contract; others as ember_tensor_get_int). */
__device__ __forceinline__ int64_t load_index(ember_dtype_t dtype,
                                              const char *p) {
  return dtype == EMBER_INT64 ? *(const int64_t *)p
                              : to_i64(load_any(dtype, p));
}

/* C's (T)v for the element types of the binary kernels, x86-64 style:
** (uint8_t)v truncates the 32-bit conversion. */
template <class T> __device__ __forceinline__ T cast_from_double(double v) {
  if constexpr (std::is_same<T, uint8_t>::value) return (uint8_t)to_i32(v);
  else if constexpr (std::is_same<T, int32_t>::value) return to_i32(v);
  else if constexpr (std::is_same<T, int64_t>::value) return to_i64(v);
  else return (T)v;
}

/* ---- Copy and fill -------------------------------------------------------------- */

/* Same dtype: the bytes, by element size (U is uint8/32/64_t). */
template <class U> __global__ void raw_copy_kernel(iter_t<2> it, int64_t n) {
  GRID_LOOP(i, n) {
    int64_t off[2];
    iter_offsets(it, i, off);
    *(U *)(it.data[0] + off[0]) = *(const U *)(it.data[1] + off[1]);
  }
}

/* Another dtype: through double, as ember__load/store_double. */
template <ember_dtype_t TO, ember_dtype_t FROM>
__global__ void convert_kernel(iter_t<2> it, int64_t n) {
  typedef typename dt<TO>::T To;
  typedef typename dt<FROM>::T From;
  GRID_LOOP(i, n) {
    int64_t off[2];
    iter_offsets(it, i, off);
    double v = (double)*(const From *)(it.data[1] + off[1]);
    *(To *)(it.data[0] + off[0]) = dt<TO>::from(v);
  }
}

template <ember_dtype_t TO>
void launch_convert_to(const iter_t<2> &it, int64_t n, ember_dtype_t from,
                       cudaStream_t s) {
  int blocks = blocks_for(n);
  switch (from) {
  case EMBER_BOOL: convert_kernel<TO, EMBER_BOOL><<<blocks, kThreads, 0, s>>>(it, n); break;
  case EMBER_UINT8: convert_kernel<TO, EMBER_UINT8><<<blocks, kThreads, 0, s>>>(it, n); break;
  case EMBER_INT32: convert_kernel<TO, EMBER_INT32><<<blocks, kThreads, 0, s>>>(it, n); break;
  case EMBER_INT64: convert_kernel<TO, EMBER_INT64><<<blocks, kThreads, 0, s>>>(it, n); break;
  case EMBER_FLOAT32: convert_kernel<TO, EMBER_FLOAT32><<<blocks, kThreads, 0, s>>>(it, n); break;
  default: convert_kernel<TO, EMBER_FLOAT64><<<blocks, kThreads, 0, s>>>(it, n); break;
  }
}

void launch_convert(const iter_t<2> &it, int64_t n, ember_dtype_t to,
                    ember_dtype_t from, cudaStream_t s) {
  switch (to) {
  case EMBER_BOOL: launch_convert_to<EMBER_BOOL>(it, n, from, s); break;
  case EMBER_UINT8: launch_convert_to<EMBER_UINT8>(it, n, from, s); break;
  case EMBER_INT32: launch_convert_to<EMBER_INT32>(it, n, from, s); break;
  case EMBER_INT64: launch_convert_to<EMBER_INT64>(it, n, from, s); break;
  case EMBER_FLOAT32: launch_convert_to<EMBER_FLOAT32>(it, n, from, s); break;
  default: launch_convert_to<EMBER_FLOAT64>(it, n, from, s); break;
  }
}

/* Launches kernel<U> with U the unsigned type of `size` bytes. */
#define LAUNCH_BY_SIZE(size, kernel, blocks, stream, ...)                      \
  do {                                                                         \
    if ((size) == 1) kernel<uint8_t><<<blocks, kThreads, 0, stream>>>(__VA_ARGS__); \
    else if ((size) == 4) kernel<uint32_t><<<blocks, kThreads, 0, stream>>>(__VA_ARGS__); \
    else kernel<uint64_t><<<blocks, kThreads, 0, stream>>>(__VA_ARGS__);   \
  } while (0)

template <class U> __global__ void fill_kernel(iter_t<1> it, int64_t n,
                                               uint64_t bits) {
  GRID_LOOP(i, n) {
    int64_t off[1];
    iter_offsets(it, i, off);
    *(U *)(it.data[0] + off[0]) = (U)bits;
  }
}

/* ---- Unary --------------------------------------------------------------------- */

struct unary_args_t {
  ember_unary_op_t op;
  double a0, a1;
};

__device__ double sigmoid(double x) {
  return x >= 0 ? 1.0 / (1.0 + exp(-x)) : exp(x) / (1.0 + exp(x));
}

/* The CPU's unary_scalar. */
__device__ double unary_double(const unary_args_t &u, double x) {
  switch (u.op) {
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
  case EMBER_OP_CLAMP: return x < u.a0 ? u.a0 : (x > u.a1 ? u.a1 : x);
  case EMBER_OP_AXPB: return __dadd_rn(__dmul_rn(u.a0, x), u.a1);
  case EMBER_OP_NOT: return x == 0;
  default: return x;
  }
}

/* The CPU's unary_row_f32: single precision where the CPU uses it, the
** double path for the rest. exp/log/tanh: glibc's expf/logf are correctly
** rounded in all but rare cases, CUDA's expf/logf/tanhf are up to 2 ulp
** off; rounding CUDA's double result to float lands on the correctly
** rounded value (nearly) always, so it is the closer match. */
__device__ float unary_float(const unary_args_t &u, float x) {
  const float a0 = (float)u.a0, a1 = (float)u.a1;
  switch (u.op) {
  case EMBER_OP_NEG: return -x;
  case EMBER_OP_EXP: return (float)exp((double)x);
  case EMBER_OP_LOG: return (float)log((double)x);
  case EMBER_OP_SQRT: return sqrtf(x);
  case EMBER_OP_TANH: return (float)tanh((double)x);
  case EMBER_OP_RELU: return x > 0 ? x : (x != x ? x : 0.0f);
  case EMBER_OP_ABS: return fabsf(x);
  case EMBER_OP_AXPB: return __fadd_rn(__fmul_rn(a0, x), a1);
  case EMBER_OP_CLAMP: return x < a0 ? a0 : (x > a1 ? a1 : x);
  default: return (float)unary_double(u, x);
  }
}

__device__ __forceinline__ double unary_value(const unary_args_t &u,
                                              double x) {
  return unary_double(u, x);
}
__device__ __forceinline__ float unary_value(const unary_args_t &u, float x) {
  return unary_float(u, x);
}

/* out and x of one float dtype T. */
template <class T>
__global__ void unary_kernel(iter_t<2> it, int64_t n, unary_args_t u) {
  GRID_LOOP(i, n) {
    int64_t off[2];
    iter_offsets(it, i, off);
    T x = *(const T *)(it.data[1] + off[1]);
    *(T *)(it.data[0] + off[0]) = unary_value(u, x);
  }
}

/* Any other pair of dtypes (integers, NOT writing bool): through double. */
__global__ void unary_any_kernel(iter_t<2> it, int64_t n, unary_args_t u,
                                 ember_dtype_t out_dtype,
                                 ember_dtype_t in_dtype) {
  GRID_LOOP(i, n) {
    int64_t off[2];
    iter_offsets(it, i, off);
    double x = load_any(in_dtype, it.data[1] + off[1]);
    store_any(out_dtype, it.data[0] + off[0], unary_double(u, x));
  }
}

/* ---- Binary ---------------------------------------------------------------------- */

/* Integer +, -, * wrap (as the host's do in practice); done in the unsigned
** type because signed overflow is undefined in CUDA C++ too. */
template <class T> __device__ __forceinline__ T wrap(int op, T x, T y) {
  typedef typename std::make_unsigned<T>::type U;
  U ux = (U)x, uy = (U)y;
  U r = op == EMBER_OP_ADD ? (U)(ux + uy)
        : op == EMBER_OP_SUB ? (U)(ux - uy) : (U)(ux * uy);
  return (T)r;
}

template <class T> __device__ __forceinline__ T divide(T x, T y) {
  if constexpr (std::is_floating_point<T>::value) {
    return x / y;
  } else {
    if (y == 0) return 0; /* the CPU's choice for integer division by 0 */
    if constexpr (std::is_signed<T>::value) {
      /* MIN / -1 overflows (the host traps); wrap instead. */
      if (y == (T)-1) return wrap<T>(EMBER_OP_SUB, (T)0, x);
    }
    return (T)(x / y);
  }
}

/* pow as the host's: glibc's pow is exact whenever the result is
** representable; CUDA's promises 2 ulp. An integer to a non-negative
** integer power is exact by squaring while everything stays below 2^53
** (every intermediate is at most the result), which is what truncating
** integer dtypes and exact float cases need; the rest is CUDA's pow. */
__device__ double host_pow(double x, double y) {
  const double limit = 9007199254740992.0; /* 2^53 */
  if (y >= 0 && y <= 1e9 && y == floor(y) && x == floor(x) && fabs(x) <= limit) {
    double result = 1, base = x;
    bool exact = true;
    for (int64_t e = (int64_t)y; e > 0 && exact; e >>= 1) {
      if (e & 1) result *= base;
      if (e > 1) base *= base;
      exact = fabs(result) <= limit && (e <= 1 || fabs(base) <= limit);
    }
    if (exact) return result;
  }
  return pow(x, y);
}

template <class T> __device__ T arith(int op, T x, T y) {
  switch (op) {
  case EMBER_OP_ADD:
  case EMBER_OP_SUB:
  case EMBER_OP_MUL:
    if constexpr (std::is_floating_point<T>::value) {
      return op == EMBER_OP_ADD ? x + y : op == EMBER_OP_SUB ? x - y : x * y;
    } else {
      return wrap<T>(op, x, y);
    }
  case EMBER_OP_DIV: return divide<T>(x, y);
  case EMBER_OP_POW: return cast_from_double<T>(host_pow((double)x, (double)y));
  case EMBER_OP_MAXIMUM: return (x > y || x != x) ? x : y;
  case EMBER_OP_MINIMUM: return (x < y || x != x) ? x : y;
  default: return 0;
  }
}

template <class T> __device__ uint8_t compare(int op, T x, T y) {
  switch (op) {
  case EMBER_OP_EQ: return x == y;
  case EMBER_OP_NE: return x != y;
  case EMBER_OP_LT: return x < y;
  case EMBER_OP_LE: return x <= y;
  case EMBER_OP_GT: return x > y;
  case EMBER_OP_GE: return x >= y;
  default: return 0;
  }
}

/* Operands: 0 out, 1 a, 2 b; a and b of type T, out T or bool. */
template <class T>
__global__ void binary_kernel(iter_t<3> it, int64_t n, int op) {
  GRID_LOOP(i, n) {
    int64_t off[3];
    iter_offsets(it, i, off);
    T x = *(const T *)(it.data[1] + off[1]);
    T y = *(const T *)(it.data[2] + off[2]);
    if (op >= EMBER_OP_EQ) *(uint8_t *)(it.data[0] + off[0]) = compare<T>(op, x, y);
    else *(T *)(it.data[0] + off[0]) = arith<T>(op, x, y);
  }
}

/* ---- Reductions ----------------------------------------------------------------
** A partial result: f for float dtypes (sums and products in double, as the
** CPU), u for integer ones (sums and products wrapping in uint64, max/min
** as int64 bits), idx the position of the max/min (-1: none yet). */

struct acc_t {
  double f;
  uint64_t u;
  int64_t idx;
};

__device__ __forceinline__ acc_t acc_identity(int op) {
  acc_t a;
  a.f = op == EMBER_REDUCE_PROD ? 1.0 : 0.0;
  a.u = op == EMBER_REDUCE_PROD ? 1 : 0;
  a.idx = -1;
  return a;
}

template <class T> __device__ __forceinline__ acc_t acc_of(T v, int64_t i) {
  acc_t a;
  if constexpr (std::is_floating_point<T>::value) {
    a.f = (double)v;
    a.u = 0;
  } else {
    a.f = 0;
    a.u = (uint64_t)(int64_t)v;
  }
  a.idx = i;
  return a;
}

/* Whether b beats a for max (is_max) or min. NaN beats everything and the
** earlier position breaks ties: a total order, so merging in any order
** gives what the CPU's left-to-right scan gives (its first NaN, else its
** first extreme). */
template <bool F>
__device__ __forceinline__ bool beats(const acc_t &b, const acc_t &a,
                                      bool is_max) {
  if (b.idx < 0) return false;
  if (a.idx < 0) return true;
  if constexpr (F) {
    bool bn = b.f != b.f, an = a.f != a.f;
    if (bn || an) return bn && (!an || b.idx < a.idx);
    if (b.f == a.f) return b.idx < a.idx;
    return is_max ? b.f > a.f : b.f < a.f;
  } else {
    int64_t bv = (int64_t)b.u, av = (int64_t)a.u;
    if (bv == av) return b.idx < a.idx;
    return is_max ? bv > av : bv < av;
  }
}

template <bool F>
__device__ __forceinline__ void acc_merge(acc_t &a, const acc_t &b, int op) {
  switch (op) {
  case EMBER_REDUCE_SUM:
    if (F) a.f += b.f;
    else a.u += b.u;
    break;
  case EMBER_REDUCE_PROD:
    if (F) a.f *= b.f;
    else a.u *= b.u;
    break;
  default:
    if (beats<F>(b, a, op == EMBER_REDUCE_MAX)) a = b;
    break;
  }
}

/* The CPU's stores: floats through ember__store_double, integers as int64
** (or converted to out's dtype for max/min of narrower ones). */
template <bool F>
__device__ void acc_store(const acc_t &a, char *out, ember_dtype_t out_dtype,
                          char *index) {
  if (F) {
    store_any(out_dtype, out, a.f);
  } else if (out_dtype == EMBER_INT64) {
    *(int64_t *)out = (int64_t)a.u;
  } else {
    store_any(out_dtype, out, (double)(int64_t)a.u);
  }
  if (index != NULL) *(int64_t *)index = a.idx < 0 ? 0 : a.idx;
}

struct reduce_args_t {
  int64_t rows;   /* outputs */
  int64_t n;      /* length of the reduced dim */
  int64_t stride; /* x's stride along it, bytes */
  int op;
  ember_dtype_t out_dtype;
  int has_index;
  int64_t chunks;    /* blocks per output (block kernel) */
  int64_t chunk_len; /* elements per chunk */
};

/* Operands of the iterator over the outputs: 0 out, 1 x, 2 index. */
template <class T>
__global__ void reduce_thread_kernel(iter_t<3> it, reduce_args_t r) {
  constexpr bool F = std::is_floating_point<T>::value;
  GRID_LOOP(row, r.rows) {
    int64_t off[3];
    iter_offsets(it, row, off);
    const char *x = it.data[1] + off[1];
    acc_t a = acc_identity(r.op);
    for (int64_t i = 0; i < r.n; i++) {
      acc_merge<F>(a, acc_of<T>(*(const T *)(x + i * r.stride), i), r.op);
    }
    acc_store<F>(a, it.data[0] + off[0], r.out_dtype,
                 r.has_index ? it.data[2] + off[2] : NULL);
  }
}

/* Tree reduction of one acc_t per thread; the result is in shm[0]. */
template <bool F>
__device__ void block_merge(acc_t *shm, acc_t mine, int op) {
  shm[threadIdx.x] = mine;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) acc_merge<F>(shm[threadIdx.x], shm[threadIdx.x + s], op);
    __syncthreads();
  }
}

/* A block per (output, chunk of the reduced dim): the final value when
** there is one chunk, else a partial for reduce_finish_kernel. */
template <class T>
__global__ void reduce_block_kernel(iter_t<3> it, reduce_args_t r,
                                    acc_t *partials) {
  constexpr bool F = std::is_floating_point<T>::value;
  __shared__ acc_t shm[kThreads];
  for (int64_t job = blockIdx.x; job < r.rows * r.chunks; job += gridDim.x) {
    int64_t row = job / r.chunks, chunk = job % r.chunks;
    int64_t off[3];
    iter_offsets(it, row, off);
    const char *x = it.data[1] + off[1];
    int64_t begin = chunk * r.chunk_len;
    int64_t end = begin + r.chunk_len < r.n ? begin + r.chunk_len : r.n;
    acc_t a = acc_identity(r.op);
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      acc_merge<F>(a, acc_of<T>(*(const T *)(x + i * r.stride), i), r.op);
    }
    block_merge<F>(shm, a, r.op);
    if (threadIdx.x == 0) {
      if (r.chunks == 1) {
        acc_store<F>(shm[0], it.data[0] + off[0], r.out_dtype,
                     r.has_index ? it.data[2] + off[2] : NULL);
      } else {
        partials[job] = shm[0];
      }
    }
    __syncthreads(); /* shm is reused by the next job */
  }
}

template <bool F>
__global__ void reduce_finish_kernel(iter_t<3> it, reduce_args_t r,
                                     const acc_t *partials) {
  GRID_LOOP(row, r.rows) {
    int64_t off[3];
    iter_offsets(it, row, off);
    acc_t a = partials[row * r.chunks];
    for (int64_t c = 1; c < r.chunks; c++) {
      acc_merge<F>(a, partials[row * r.chunks + c], r.op);
    }
    acc_store<F>(a, it.data[0] + off[0], r.out_dtype,
                 r.has_index ? it.data[2] + off[2] : NULL);
  }
}

/* ---- Softmax ----------------------------------------------------------------------
** The iterator walks the rows (every dim but `dim`); operands 0 out, 1 x
** (forward) or 0 grad_x, 1 grad_y, 2 y (backward); stride[k] is operand
** k's byte stride along dim. Everything in double, as the CPU. */

struct softmax_args_t {
  int64_t rows, n;
  int64_t stride[3];
  int log;
};

template <class T>
__device__ __forceinline__ double ld(const char *p, int64_t i, int64_t s) {
  return (double)*(const T *)(p + i * s);
}

template <class T>
__device__ __forceinline__ void st(char *p, int64_t i, int64_t s, double v) {
  *(T *)(p + i * s) = (T)v;
}

/* The CPU's running max: a NaN, once in, stays (no number exceeds it).
** Also a symmetric merge of two partial maxima. */
__device__ __forceinline__ double max_nan(double m, double v) {
  return (v > m || v != v) ? v : m;
}

struct sum_op {
  __device__ double operator()(double a, double b) const { return a + b; }
};
struct max_op {
  __device__ double operator()(double a, double b) const {
    return max_nan(a, b);
  }
};

/* Every thread of the block gets the reduction of their values. */
template <class Op>
__device__ double block_reduce(double mine, double *shm, Op op) {
  shm[threadIdx.x] = mine;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shm[threadIdx.x] = op(shm[threadIdx.x], shm[threadIdx.x + s]);
    __syncthreads();
  }
  double result = shm[0];
  __syncthreads(); /* before shm is written again */
  return result;
}

template <class T>
__device__ void softmax_write(char *out, const char *x,
                              const softmax_args_t &a, int64_t first,
                              int64_t step, double max, double sum) {
  double log_sum = log(sum);
  for (int64_t i = first; i < a.n; i += step) {
    double shifted = ld<T>(x, i, a.stride[1]) - max;
    st<T>(out, i, a.stride[0], a.log ? shifted - log_sum : exp(shifted) / sum);
  }
}

template <class T>
__global__ void softmax_thread_kernel(iter_t<2> it, softmax_args_t a) {
  GRID_LOOP(row, a.rows) {
    int64_t off[2];
    iter_offsets(it, row, off);
    const char *x = it.data[1] + off[1];
    double max = -INFINITY, sum = 0;
    for (int64_t i = 0; i < a.n; i++) max = max_nan(max, ld<T>(x, i, a.stride[1]));
    for (int64_t i = 0; i < a.n; i++) sum += exp(ld<T>(x, i, a.stride[1]) - max);
    softmax_write<T>(it.data[0] + off[0], x, a, 0, 1, max, sum);
  }
}

template <class T>
__global__ void softmax_block_kernel(iter_t<2> it, softmax_args_t a) {
  __shared__ double shm[kThreads];
  for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
    int64_t off[2];
    iter_offsets(it, row, off);
    const char *x = it.data[1] + off[1];
    double max = -INFINITY, sum = 0;
    for (int64_t i = threadIdx.x; i < a.n; i += blockDim.x) {
      max = max_nan(max, ld<T>(x, i, a.stride[1]));
    }
    max = block_reduce(max, shm, max_op());
    for (int64_t i = threadIdx.x; i < a.n; i += blockDim.x) {
      sum += exp(ld<T>(x, i, a.stride[1]) - max);
    }
    sum = block_reduce(sum, shm, sum_op());
    softmax_write<T>(it.data[0] + off[0], x, a, threadIdx.x, blockDim.x, max,
                     sum);
  }
}

/* dot = sum(grad_y) (log) or sum(grad_y * y); grad_x from it. */
template <class T>
__device__ __forceinline__ double softmax_dot_term(const char *gy,
                                                   const char *y,
                                                   const softmax_args_t &a,
                                                   int64_t i) {
  double g = ld<T>(gy, i, a.stride[1]);
  return a.log ? g : __dmul_rn(g, ld<T>(y, i, a.stride[2]));
}

template <class T>
__device__ void softmax_grad_write(char *gx, const char *gy, const char *y,
                                   const softmax_args_t &a, int64_t first,
                                   int64_t step, double dot) {
  for (int64_t i = first; i < a.n; i += step) {
    double yv = ld<T>(y, i, a.stride[2]), g = ld<T>(gy, i, a.stride[1]);
    double v = a.log ? g - __dmul_rn(exp(yv), dot) : __dmul_rn(yv, g - dot);
    st<T>(gx, i, a.stride[0], v);
  }
}

template <class T>
__global__ void softmax_backward_thread_kernel(iter_t<3> it,
                                               softmax_args_t a) {
  GRID_LOOP(row, a.rows) {
    int64_t off[3];
    iter_offsets(it, row, off);
    const char *gy = it.data[1] + off[1], *y = it.data[2] + off[2];
    double dot = 0;
    for (int64_t i = 0; i < a.n; i++) dot += softmax_dot_term<T>(gy, y, a, i);
    softmax_grad_write<T>(it.data[0] + off[0], gy, y, a, 0, 1, dot);
  }
}

template <class T>
__global__ void softmax_backward_block_kernel(iter_t<3> it,
                                              softmax_args_t a) {
  __shared__ double shm[kThreads];
  for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
    int64_t off[3];
    iter_offsets(it, row, off);
    const char *gy = it.data[1] + off[1], *y = it.data[2] + off[2];
    double dot = 0;
    for (int64_t i = threadIdx.x; i < a.n; i += blockDim.x) {
      dot += softmax_dot_term<T>(gy, y, a, i);
    }
    dot = block_reduce(dot, shm, sum_op());
    softmax_grad_write<T>(it.data[0] + off[0], gy, y, a, threadIdx.x,
                          blockDim.x, dot);
  }
}

/* ---- Gather, scatter, where ----------------------------------------------------------
** Gather and scatter walk index's shape; the operand along `dim` is given
** a stride of 0 there and moved by index * dim_stride instead. The front
** end checks the indices for devices that are not the host; an index out
** of range is skipped here all the same, rather than touching memory that
** is not the tensor's. */

struct index_args_t {
  int64_t dim_stride; /* bytes */
  int64_t dim_size;
  ember_dtype_t index_dtype;
};

/* Operands: 0 out, 1 index, 2 x (0 along dim). */
template <class U>
__global__ void gather_kernel(iter_t<3> it, int64_t n, index_args_t g) {
  GRID_LOOP(i, n) {
    int64_t off[3];
    iter_offsets(it, i, off);
    int64_t at = load_index(g.index_dtype, it.data[1] + off[1]);
    if (at < 0 || at >= g.dim_size) continue;
    *(U *)(it.data[0] + off[0]) =
        *(const U *)(it.data[2] + off[2] + at * g.dim_stride);
  }
}

/* dst += v with the CPU's arithmetic (dst + v in double, stored as dst's
** dtype), atomically: hardware adds where they round the same, else a
** compare-and-swap loop on the word that holds dst. */
__device__ void atomic_accumulate(char *p, ember_dtype_t dtype, double v,
                                  ember_dtype_t src_dtype) {
  switch (dtype) {
  case EMBER_FLOAT64:
    atomicAdd((double *)p, v);
    return;
  case EMBER_FLOAT32:
    if (src_dtype == EMBER_FLOAT32) {
      /* float + float rounded once equals the double sum rounded to float */
      atomicAdd((float *)p, (float)v);
      return;
    }
    {
      unsigned int *w = (unsigned int *)p;
      unsigned int old = *w, seen;
      do {
        seen = old;
        float next = (float)((double)__uint_as_float(seen) + v);
        old = atomicCAS(w, seen, __float_as_uint(next));
      } while (old != seen);
    }
    return;
  case EMBER_INT64: {
    unsigned long long *w = (unsigned long long *)p;
    unsigned long long old = *w, seen;
    do {
      seen = old;
      int64_t next = to_i64((double)(int64_t)seen + v);
      old = atomicCAS(w, seen, (unsigned long long)next);
    } while (old != seen);
    return;
  }
  case EMBER_INT32: {
    unsigned int *w = (unsigned int *)p;
    unsigned int old = *w, seen;
    do {
      seen = old;
      int32_t next = to_i32((double)(int32_t)seen + v);
      old = atomicCAS(w, seen, (unsigned int)next);
    } while (old != seen);
    return;
  }
  default: { /* one byte: swap the aligned word around it */
    unsigned int *w = (unsigned int *)((uintptr_t)p & ~(uintptr_t)3);
    unsigned int shift = (unsigned int)((uintptr_t)p & 3) * 8;
    unsigned int old = *w, seen;
    do {
      seen = old;
      double sum = (double)((seen >> shift) & 0xffu) + v;
      unsigned int byte = dtype == EMBER_BOOL ? dt<EMBER_BOOL>::from(sum)
                                              : dt<EMBER_UINT8>::from(sum);
      unsigned int next = (seen & ~(0xffu << shift)) | (byte << shift);
      old = atomicCAS(w, seen, next);
    } while (old != seen);
    return;
  }
  }
}

struct scatter_args_t {
  index_args_t index;
  ember_dtype_t dst_dtype, src_dtype;
  int accumulate;
};

/* Operands: 0 dst (0 along dim), 1 index, 2 src. */
__global__ void scatter_kernel(iter_t<3> it, int64_t n, scatter_args_t s) {
  GRID_LOOP(i, n) {
    int64_t off[3];
    iter_offsets(it, i, off);
    int64_t at = load_index(s.index.index_dtype, it.data[1] + off[1]);
    if (at < 0 || at >= s.index.dim_size) continue;
    char *d = it.data[0] + off[0] + at * s.index.dim_stride;
    double v = load_any(s.src_dtype, it.data[2] + off[2]);
    if (s.accumulate) atomic_accumulate(d, s.dst_dtype, v, s.src_dtype);
    else store_any(s.dst_dtype, d, v);
  }
}

/* Operands: 0 out, 1 cond, 2 a, 3 b. */
template <class U>
__global__ void where_kernel(iter_t<4> it, int64_t n,
                             ember_dtype_t cond_dtype) {
  GRID_LOOP(i, n) {
    int64_t off[4];
    iter_offsets(it, i, off);
    const char *c = it.data[1] + off[1];
    bool take_a = cond_dtype == EMBER_BOOL || cond_dtype == EMBER_UINT8
                      ? *(const uint8_t *)c != 0
                      : load_any(cond_dtype, c) != 0;
    *(U *)(it.data[0] + off[0]) =
        *(const U *)(take_a ? it.data[2] + off[2] : it.data[3] + off[3]);
  }
}

/* ---- Random ------------------------------------------------------------------------- */

struct random_args_t {
  ember_dtype_t dtype;
  int normal;
  double a, b;
  uint64_t seed;
};

/* Element i in row-major order (the coalesced iterator keeps that order)
** gets value i of the stream, as ember__host_random. */
__global__ void random_kernel(iter_t<1> it, int64_t n, random_args_t r) {
  GRID_LOOP(i, n) {
    int64_t off[1];
    iter_offsets(it, i, off);
    double v = r.normal
        ? __dadd_rn(r.a, __dmul_rn(r.b, ember_counter_normal(r.seed, (uint64_t)i)))
        : __dadd_rn(r.a, __dmul_rn(r.b - r.a,
                                   ember_counter_uniform(r.seed, (uint64_t)i)));
    store_any(r.dtype, it.data[0] + off[0], v);
  }
}

struct multinomial_args_t {
  const char *probs;
  int64_t probs_stride[2]; /* bytes */
  char *out;
  int64_t out_stride[2];
  int64_t rows, k, n;
  uint64_t seed;
};

/* One thread per draw, each scanning its row in order as the host's
** draw_index does (the sums must round as the host's do). */
template <class T>
__global__ void multinomial_kernel(multinomial_args_t m) {
  GRID_LOOP(t, m.rows * m.n) {
    int64_t r = t / m.n, s = t % m.n;
    const char *row = m.probs + r * m.probs_stride[0];
    double total = 0;
    for (int64_t j = 0; j < m.k; j++) {
      total += (double)*(const T *)(row + j * m.probs_stride[1]);
    }
    double target = ember_counter_uniform(m.seed, (uint64_t)(r * m.n + s)) * total;
    double acc = 0;
    int64_t last = -1, pick = -1;
    for (int64_t j = 0; j < m.k && pick < 0; j++) {
      double p = (double)*(const T *)(row + j * m.probs_stride[1]);
      if (p <= 0) continue;
      last = j;
      acc += p;
      if (target < acc) pick = j;
    }
    *(int64_t *)(m.out + r * m.out_stride[0] + s * m.out_stride[1]) =
        pick >= 0 ? pick : last; /* rounding left target at the very end */
  }
}

/* ---- GEMM fallback ------------------------------------------------------------------ */

struct naive_gemm_args_t {
  char *out;
  const char *a, *b;
  int64_t os[3], as[3], bs[3]; /* bytes */
  int64_t batch, m, n, k;
  ember_dtype_t out_dtype, a_dtype, b_dtype;
  double alpha, beta;
};

/* The CPU's gemm_naive: one output element per thread, in double. */
__global__ void gemm_naive_kernel(naive_gemm_args_t g) {
  GRID_LOOP(t, g.batch * g.m * g.n) {
    int64_t bi = t / (g.m * g.n), rest = t % (g.m * g.n);
    int64_t i = rest / g.n, j = rest % g.n;
    const char *a = g.a + bi * g.as[0] + i * g.as[1];
    const char *b = g.b + bi * g.bs[0] + j * g.bs[2];
    double acc = 0;
    for (int64_t l = 0; l < g.k; l++) {
      acc += __dmul_rn(load_any(g.a_dtype, a + l * g.as[2]),
                       load_any(g.b_dtype, b + l * g.bs[1]));
    }
    char *o = g.out + bi * g.os[0] + i * g.os[1] + j * g.os[2];
    double prev = g.beta != 0 ? load_any(g.out_dtype, o) : 0;
    store_any(g.out_dtype, o,
              __dadd_rn(__dmul_rn(g.alpha, acc), __dmul_rn(g.beta, prev)));
  }
}

/* ---- Host helpers ---------------------------------------------------------------------- */

const ember_device_t *device_of(const ember_tensor_t *t) {
  return t->storage->device;
}

/* Strides of t without `dim` (elements), into out; returns the count. */
int strides_without(const ember_tensor_t *t, int dim, int64_t *out) {
  int nd = 0;
  for (int i = 0; i < t->ndim; i++) {
    if (i != dim) out[nd++] = t->strides[i];
  }
  return nd;
}

/* Strides of t with `dim`'s set to 0 (elements). */
void strides_zero_at(const ember_tensor_t *t, int dim, int64_t *out) {
  for (int i = 0; i < t->ndim; i++) out[i] = i == dim ? 0 : t->strides[i];
}

int fail_dtype(const char *what, ember_dtype_t dtype) {
  return ember__tensor_fail(EMBER_EINVAL, "cuda: %s does not support %s",
                            what, ember_dtype_name(dtype));
}

} // namespace

/* ---- Entry points -------------------------------------------------------------------- */

int copy_view(const view_t &dst, const view_t &src, cudaStream_t stream) {
  iter_t<2> it;
  iter_init(it, dst.shape, dst.ndim);
  iter_set_view(it, 0, dst);
  iter_set_view(it, 1, src);
  int64_t n = iter_finish(it);
  if (n == 0) return 0;
  size_t size = dtype_size(dst.dtype);
  if (dst.dtype != src.dtype) {
    launch_convert(it, n, dst.dtype, src.dtype, stream);
    return check_launch("copy (dtype conversion)");
  }
  if (it.ndim == 1 && it.strides[0][0] == (int64_t)size &&
      it.strides[1][0] == (int64_t)size) {
    cudaError_t err = cudaMemcpyAsync(dst.data, src.data, (size_t)n * size,
                                      cudaMemcpyDeviceToDevice, stream);
    return err == cudaSuccess ? 0 : fail("cudaMemcpyAsync", err);
  }
  LAUNCH_BY_SIZE(size, raw_copy_kernel, blocks_for(n), stream, it, n);
  return check_launch("copy");
}

int copy(ember_tensor_t *dst, const ember_tensor_t *src) {
  cudaStream_t stream;
  int rc = enter(device_of(dst), &stream);
  return rc < 0 ? rc : copy_view(view_of(dst), view_of(src), stream);
}

int fill(ember_tensor_t *dst, double value) {
  cudaStream_t stream;
  int rc = enter(device_of(dst), &stream);
  if (rc < 0) return rc;
  iter_t<1> it;
  iter_init(it, dst->shape, dst->ndim);
  iter_set_view(it, 0, view_of(dst));
  int64_t n = iter_finish(it);
  if (n == 0) return 0;
  /* The host's conversion of the value, so the bits are the CPU's. */
  unsigned char bytes[8] = {0};
  ember__store_double(dst->dtype, bytes, value);
  size_t size = dtype_size(dst->dtype);
  uint8_t u8;
  uint32_t u32;
  uint64_t bits;
  if (size == 1) {
    memcpy(&u8, bytes, 1);
    bits = u8;
  } else if (size == 4) {
    memcpy(&u32, bytes, 4);
    bits = u32;
  } else {
    memcpy(&bits, bytes, 8);
  }
  LAUNCH_BY_SIZE(size, fill_kernel, blocks_for(n), stream, it, n, bits);
  return check_launch("fill");
}

int unary(ember_unary_op_t op, ember_tensor_t *out, const ember_tensor_t *x,
          double arg0, double arg1) {
  cudaStream_t stream;
  int rc = enter(device_of(out), &stream);
  if (rc < 0) return rc;
  iter_t<2> it;
  iter_init(it, out->shape, out->ndim);
  iter_set_view(it, 0, view_of(out));
  iter_set_view(it, 1, view_of(x));
  int64_t n = iter_finish(it);
  if (n == 0) return 0;
  unary_args_t u = {op, arg0, arg1};
  int blocks = blocks_for(n);
  if (out->dtype == x->dtype && x->dtype == EMBER_FLOAT32) {
    unary_kernel<float><<<blocks, kThreads, 0, stream>>>(it, n, u);
  } else if (out->dtype == x->dtype && x->dtype == EMBER_FLOAT64) {
    unary_kernel<double><<<blocks, kThreads, 0, stream>>>(it, n, u);
  } else {
    unary_any_kernel<<<blocks, kThreads, 0, stream>>>(it, n, u, out->dtype,
                                                       x->dtype);
  }
  return check_launch("unary");
}

int binary(ember_binary_op_t op, ember_tensor_t *out, const ember_tensor_t *a,
           const ember_tensor_t *b) {
  cudaStream_t stream;
  int rc = enter(device_of(out), &stream);
  if (rc < 0) return rc;
  iter_t<3> it;
  iter_init(it, out->shape, out->ndim);
  iter_set_view(it, 0, view_of(out));
  iter_set_view(it, 1, view_of(a));
  iter_set_view(it, 2, view_of(b));
  int64_t n = iter_finish(it);
  if (n == 0) return 0;
  int blocks = blocks_for(n);
  switch (a->dtype) { /* the CPU's binary_row_for */
  case EMBER_BOOL:
  case EMBER_UINT8:
    binary_kernel<uint8_t><<<blocks, kThreads, 0, stream>>>(it, n, op);
    break;
  case EMBER_INT32:
    binary_kernel<int32_t><<<blocks, kThreads, 0, stream>>>(it, n, op);
    break;
  case EMBER_INT64:
    binary_kernel<int64_t><<<blocks, kThreads, 0, stream>>>(it, n, op);
    break;
  case EMBER_FLOAT32:
    binary_kernel<float><<<blocks, kThreads, 0, stream>>>(it, n, op);
    break;
  default:
    binary_kernel<double><<<blocks, kThreads, 0, stream>>>(it, n, op);
    break;
  }
  return check_launch("binary");
}

namespace {

template <class T>
int launch_reduce(const ember_device_t *device, const iter_t<3> &it,
                  reduce_args_t r, cudaStream_t stream) {
  constexpr bool F = std::is_floating_point<T>::value;
  if (!block_per_row(device, r.rows, r.n, r.stride, sizeof(T))) {
    reduce_thread_kernel<T><<<blocks_for(r.rows), kThreads, 0, stream>>>(it, r);
    return check_launch("reduce");
  }
  /* Few outputs over a long dim (a sum of everything): split each output
  ** over several blocks, so that the whole GPU reads. */
  int64_t chunks = 1;
  int64_t sms = sm_count(device);
  if (r.n >= 64 * kThreads && r.rows < 2 * sms) {
    int64_t by_size = r.n / (16 * kThreads);
    int64_t by_grid = 4 * sms / r.rows;
    chunks = by_size < by_grid ? by_size : by_grid;
    if (chunks < 1) chunks = 1;
  }
  r.chunk_len = (r.n + chunks - 1) / chunks;
  r.chunks = (r.n + r.chunk_len - 1) / r.chunk_len;
  acc_t *partials = NULL;
  if (r.chunks > 1) {
    partials = (acc_t *)scratch_alloc(device, (size_t)(r.rows * r.chunks) *
                                                  sizeof(acc_t));
    if (partials == NULL) return EMBER_ENOMEM;
  }
  int64_t jobs = r.rows * r.chunks;
  int blocks = (int)(jobs < kMaxBlocks ? jobs : kMaxBlocks);
  reduce_block_kernel<T><<<blocks, kThreads, 0, stream>>>(it, r, partials);
  int rc = check_launch("reduce");
  if (rc == 0 && partials != NULL) {
    reduce_finish_kernel<F><<<blocks_for(r.rows), kThreads, 0, stream>>>(
        it, r, partials);
    rc = check_launch("reduce (partials)");
  }
  scratch_free(device, partials);
  return rc;
}

} // namespace

int reduce(ember_reduce_op_t op, ember_tensor_t *out, ember_tensor_t *index,
           const ember_tensor_t *x, int dim) {
  const ember_device_t *device = device_of(out);
  cudaStream_t stream;
  int rc = enter(device, &stream);
  if (rc < 0) return rc;
  int64_t shape[EMBER_MAX_DIMS], strides[EMBER_MAX_DIMS];
  int nd = 0;
  for (int i = 0; i < x->ndim; i++) {
    if (i != dim) shape[nd++] = x->shape[i];
  }
  strides_without(x, dim, strides);
  view_t xv = view_of(x), ov = view_of(out);
  iter_t<3> it;
  iter_init(it, shape, nd);
  iter_set_view(it, 0, ov);
  iter_set(it, 1, xv.data, strides, dtype_size(x->dtype));
  if (index != NULL) iter_set_view(it, 2, view_of(index));
  else iter_set(it, 2, NULL, NULL, 0);
  reduce_args_t r;
  r.rows = iter_finish(it);
  if (r.rows == 0) return 0;
  r.n = x->shape[dim];
  r.stride = x->strides[dim] * (int64_t)dtype_size(x->dtype);
  r.op = op;
  r.out_dtype = out->dtype;
  r.has_index = index != NULL;
  r.chunks = 1;
  r.chunk_len = r.n;
  switch (x->dtype) {
  case EMBER_BOOL:
  case EMBER_UINT8: return launch_reduce<uint8_t>(device, it, r, stream);
  case EMBER_INT32: return launch_reduce<int32_t>(device, it, r, stream);
  case EMBER_INT64: return launch_reduce<int64_t>(device, it, r, stream);
  case EMBER_FLOAT32: return launch_reduce<float>(device, it, r, stream);
  default: return launch_reduce<double>(device, it, r, stream);
  }
}

namespace {

/* The row iterator of softmax: every dim of ops[0]'s shape but `dim`. */
template <int N>
int64_t softmax_rows(iter_t<N> &it, softmax_args_t &a,
                     const ember_tensor_t *const *ops, int dim) {
  const ember_tensor_t *x = ops[0];
  int64_t shape[EMBER_MAX_DIMS], strides[EMBER_MAX_DIMS];
  int nd = 0;
  for (int i = 0; i < x->ndim; i++) {
    if (i != dim) shape[nd++] = x->shape[i];
  }
  iter_init(it, shape, nd);
  for (int k = 0; k < N; k++) {
    strides_without(ops[k], dim, strides);
    size_t size = dtype_size(ops[k]->dtype);
    iter_set(it, k, view_of(ops[k]).data, strides, size);
    a.stride[k] = ops[k]->strides[dim] * (int64_t)size;
  }
  a.n = x->shape[dim];
  a.rows = iter_finish(it);
  return a.rows;
}

int rows_blocks(int64_t rows) {
  return (int)(rows < kMaxBlocks ? rows : kMaxBlocks);
}

} // namespace

int softmax(ember_tensor_t *out, const ember_tensor_t *x, int dim, int log) {
  if (!dtype_is_float(x->dtype) || out->dtype != x->dtype) {
    return fail_dtype("softmax", x->dtype);
  }
  cudaStream_t stream;
  int rc = enter(device_of(out), &stream);
  if (rc < 0) return rc;
  const ember_tensor_t *ops[2] = {out, x};
  iter_t<2> it;
  softmax_args_t a;
  memset(&a, 0, sizeof a);
  a.log = log;
  if (softmax_rows(it, a, ops, dim) == 0) return 0;
  bool f32 = x->dtype == EMBER_FLOAT32;
  if (!block_per_row(device_of(out), a.rows, a.n, a.stride[1],
                     dtype_size(x->dtype))) {
    int blocks = blocks_for(a.rows);
    if (f32) softmax_thread_kernel<float><<<blocks, kThreads, 0, stream>>>(it, a);
    else softmax_thread_kernel<double><<<blocks, kThreads, 0, stream>>>(it, a);
  } else {
    int blocks = rows_blocks(a.rows);
    if (f32) softmax_block_kernel<float><<<blocks, kThreads, 0, stream>>>(it, a);
    else softmax_block_kernel<double><<<blocks, kThreads, 0, stream>>>(it, a);
  }
  return check_launch("softmax");
}

int softmax_backward(ember_tensor_t *grad_x, const ember_tensor_t *grad_y,
                     const ember_tensor_t *y, int dim, int log) {
  if (!dtype_is_float(y->dtype) || grad_x->dtype != y->dtype ||
      grad_y->dtype != y->dtype) {
    return fail_dtype("softmax backward", y->dtype);
  }
  cudaStream_t stream;
  int rc = enter(device_of(grad_x), &stream);
  if (rc < 0) return rc;
  const ember_tensor_t *ops[3] = {grad_x, grad_y, y};
  iter_t<3> it;
  softmax_args_t a;
  memset(&a, 0, sizeof a);
  a.log = log;
  if (softmax_rows(it, a, ops, dim) == 0) return 0;
  bool f32 = y->dtype == EMBER_FLOAT32;
  if (!block_per_row(device_of(grad_x), a.rows, a.n, a.stride[2],
                     dtype_size(y->dtype))) {
    int blocks = blocks_for(a.rows);
    if (f32) softmax_backward_thread_kernel<float><<<blocks, kThreads, 0, stream>>>(it, a);
    else softmax_backward_thread_kernel<double><<<blocks, kThreads, 0, stream>>>(it, a);
  } else {
    int blocks = rows_blocks(a.rows);
    if (f32) softmax_backward_block_kernel<float><<<blocks, kThreads, 0, stream>>>(it, a);
    else softmax_backward_block_kernel<double><<<blocks, kThreads, 0, stream>>>(it, a);
  }
  return check_launch("softmax backward");
}

int gather(ember_tensor_t *out, const ember_tensor_t *x, int dim,
           const ember_tensor_t *index) {
  cudaStream_t stream;
  int rc = enter(device_of(out), &stream);
  if (rc < 0) return rc;
  int64_t x_strides[EMBER_MAX_DIMS];
  strides_zero_at(x, dim, x_strides);
  size_t size = dtype_size(x->dtype);
  iter_t<3> it;
  iter_init(it, index->shape, index->ndim);
  iter_set_view(it, 0, view_of(out));
  iter_set_view(it, 1, view_of(index));
  iter_set(it, 2, view_of(x).data, x_strides, size);
  int64_t n = iter_finish(it);
  if (n == 0) return 0;
  index_args_t g = {x->strides[dim] * (int64_t)size, x->shape[dim],
                    index->dtype};
  LAUNCH_BY_SIZE(size, gather_kernel, blocks_for(n), stream, it, n, g);
  return check_launch("gather");
}

int scatter(ember_tensor_t *dst, int dim, const ember_tensor_t *index,
            const ember_tensor_t *src, int accumulate) {
  cudaStream_t stream;
  int rc = enter(device_of(dst), &stream);
  if (rc < 0) return rc;
  int64_t dst_strides[EMBER_MAX_DIMS];
  strides_zero_at(dst, dim, dst_strides);
  size_t size = dtype_size(dst->dtype);
  iter_t<3> it;
  iter_init(it, index->shape, index->ndim);
  iter_set(it, 0, view_of(dst).data, dst_strides, size);
  iter_set_view(it, 1, view_of(index));
  iter_set_view(it, 2, view_of(src));
  int64_t n = iter_finish(it);
  if (n == 0) return 0;
  scatter_args_t s;
  s.index.dim_stride = dst->strides[dim] * (int64_t)size;
  s.index.dim_size = dst->shape[dim];
  s.index.index_dtype = index->dtype;
  s.dst_dtype = dst->dtype;
  s.src_dtype = src->dtype;
  s.accumulate = accumulate;
  scatter_kernel<<<blocks_for(n), kThreads, 0, stream>>>(it, n, s);
  return check_launch("scatter");
}

int where(ember_tensor_t *out, const ember_tensor_t *cond,
          const ember_tensor_t *a, const ember_tensor_t *b) {
  cudaStream_t stream;
  int rc = enter(device_of(out), &stream);
  if (rc < 0) return rc;
  iter_t<4> it;
  iter_init(it, out->shape, out->ndim);
  iter_set_view(it, 0, view_of(out));
  iter_set_view(it, 1, view_of(cond));
  iter_set_view(it, 2, view_of(a));
  iter_set_view(it, 3, view_of(b));
  int64_t n = iter_finish(it);
  if (n == 0) return 0;
  LAUNCH_BY_SIZE(dtype_size(out->dtype), where_kernel, blocks_for(n), stream,
                 it, n, cond->dtype);
  return check_launch("where");
}

int random_fill(ember_tensor_t *t, int normal, double a, double b,
                uint64_t seed) {
  cudaStream_t stream;
  int rc = enter(device_of(t), &stream);
  if (rc < 0) return rc;
  iter_t<1> it;
  iter_init(it, t->shape, t->ndim);
  iter_set_view(it, 0, view_of(t));
  int64_t n = iter_finish(it);
  if (n == 0) return 0;
  random_args_t r = {t->dtype, normal, a, b, seed};
  random_kernel<<<blocks_for(n), kThreads, 0, stream>>>(it, n, r);
  return check_launch("random");
}

int multinomial(ember_tensor_t *out, const ember_tensor_t *probs,
                uint64_t seed) {
  if (probs->ndim != 2 || out->ndim != 2 || out->dtype != EMBER_INT64 ||
      out->shape[0] != probs->shape[0]) {
    return ember__tensor_fail(EMBER_EINVAL, "cuda: multinomial expects "
                              "probabilities (rows, k) and int64 draws "
                              "(rows, n)");
  }
  if (!dtype_is_float(probs->dtype)) return fail_dtype("multinomial", probs->dtype);
  cudaStream_t stream;
  int rc = enter(device_of(out), &stream);
  if (rc < 0) return rc;
  multinomial_args_t m;
  size_t psize = dtype_size(probs->dtype);
  m.probs = view_of(probs).data;
  m.probs_stride[0] = probs->strides[0] * (int64_t)psize;
  m.probs_stride[1] = probs->strides[1] * (int64_t)psize;
  m.out = view_of(out).data;
  m.out_stride[0] = out->strides[0] * (int64_t)sizeof(int64_t);
  m.out_stride[1] = out->strides[1] * (int64_t)sizeof(int64_t);
  m.rows = out->shape[0];
  m.n = out->shape[1];
  m.k = probs->shape[1];
  m.seed = seed;
  if (m.rows * m.n == 0) return 0;
  int blocks = blocks_for(m.rows * m.n);
  if (probs->dtype == EMBER_FLOAT32) {
    multinomial_kernel<float><<<blocks, kThreads, 0, stream>>>(m);
  } else {
    multinomial_kernel<double><<<blocks, kThreads, 0, stream>>>(m);
  }
  return check_launch("multinomial");
}

int gemm_naive(const view_t &out, const view_t &a, const view_t &b,
               double alpha, double beta, cudaStream_t stream) {
  naive_gemm_args_t g;
  g.out = out.data;
  g.a = a.data;
  g.b = b.data;
  for (int i = 0; i < 3; i++) {
    g.os[i] = out.strides[i] * (int64_t)dtype_size(out.dtype);
    g.as[i] = a.strides[i] * (int64_t)dtype_size(a.dtype);
    g.bs[i] = b.strides[i] * (int64_t)dtype_size(b.dtype);
  }
  g.batch = out.shape[0];
  g.m = out.shape[1];
  g.n = out.shape[2];
  g.k = a.shape[2];
  g.out_dtype = out.dtype;
  g.a_dtype = a.dtype;
  g.b_dtype = b.dtype;
  g.alpha = alpha;
  g.beta = beta;
  int64_t total = g.batch * g.m * g.n;
  if (total == 0) return 0;
  gemm_naive_kernel<<<blocks_for(total), kThreads, 0, stream>>>(g);
  return check_launch("gemm");
}

} // namespace ember_cuda
