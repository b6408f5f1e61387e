/*
** Tensors: refcounted storage and strided views over it, the dtypes, and the
** front end of every tensor op. The front end checks shapes and dtypes,
** broadcasts, allocates the result and records autograd; the arithmetic is
** done by the storage's device through a table of kernels (ember_device_t),
** so a CUDA device plugs in without the front end or Lua knowing.
**
** Ownership: every function that returns a tensor returns a new reference the
** caller must ember_tensor_release(); tensor arguments are borrowed. On
** failure a function returns NULL (or a negative EMBER_E* code) and leaves a
** message for ember_tensor_error(). Tensors belong to the loop thread: their
** reference counts are not atomic, their storages' are.
**
** Dimensions and indices are 0-based here; the Lua layer is 1-based.
*/
#ifndef EMBER_TENSOR_H
#define EMBER_TENSOR_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define EMBER_MAX_DIMS 8

/* X(enum name, C type, Lua name, element size, is floating point) */
#define EMBER_DTYPE_MAP(X)                                                     \
  X(BOOL, uint8_t, "bool", 1, 0)                                               \
  X(UINT8, uint8_t, "uint8", 1, 0)                                             \
  X(INT32, int32_t, "int32", 4, 0)                                             \
  X(INT64, int64_t, "int64", 8, 0)                                             \
  X(FLOAT32, float, "float32", 4, 1)                                           \
  X(FLOAT64, double, "float64", 8, 1)

/* Ordered by promotion rank: the result of mixing two dtypes is the larger. */
typedef enum {
#define EMBER_DTYPE_ENUM(name, ctype, lname, size, isfloat) EMBER_##name,
  EMBER_DTYPE_MAP(EMBER_DTYPE_ENUM)
#undef EMBER_DTYPE_ENUM
  EMBER_DTYPE_COUNT
} ember_dtype_t;

const char *ember_dtype_name(ember_dtype_t dtype);
size_t ember_dtype_size(ember_dtype_t dtype);
int ember_dtype_is_float(ember_dtype_t dtype);
/* Sets *dtype from a name such as "float32"; EMBER_EINVAL if unknown. */
int ember_dtype_from_name(const char *name, ember_dtype_t *dtype);
/* The dtype that holds both (PyTorch's promotion between tensors). */
ember_dtype_t ember_dtype_promote(ember_dtype_t a, ember_dtype_t b);

typedef struct ember_device_s ember_device_t;
typedef struct ember_node_s ember_node_t;

typedef struct ember_storage_s {
  atomic_int refs;
  /* Bumped by every in-place op, so autograd can tell that a tensor it
  ** saved was changed after the fact. */
  unsigned version;
  void *data;
  size_t nbytes;
  const ember_device_t *device;
  /* Huge-page block of round_up(nbytes, 2 MiB) bytes that may be reused. */
  unsigned char reusable_block;
  /* CPU memory that is page-locked by this device's host_alloc (staging
  ** for copies), given back through its host_free; else NULL. */
  const ember_device_t *pinned_by;
} ember_storage_t;

typedef struct ember_tensor_s {
  int refs;
  ember_storage_t *storage;
  ember_dtype_t dtype;
  int ndim;
  int64_t offset; /* in elements */
  int64_t shape[EMBER_MAX_DIMS];
  int64_t strides[EMBER_MAX_DIMS]; /* in elements; 0 for a broadcast dim */
  /* Autograd: a leaf requires_grad and accumulates into grad; a result of
  ** recorded ops has grad_fn, the node that computes its inputs' gradients. */
  int requires_grad;
  struct ember_tensor_s *grad;
  ember_node_t *grad_fn;
} ember_tensor_t;

/* ---- Devices ----------------------------------------------------------- */

typedef enum {
  EMBER_OP_ADD, EMBER_OP_SUB, EMBER_OP_MUL, EMBER_OP_DIV, EMBER_OP_POW,
  EMBER_OP_MAXIMUM, EMBER_OP_MINIMUM,
  /* Comparisons write bool. */
  EMBER_OP_EQ, EMBER_OP_NE, EMBER_OP_LT, EMBER_OP_LE, EMBER_OP_GT, EMBER_OP_GE,
  EMBER_BINARY_OP_COUNT
} ember_binary_op_t;

typedef enum {
  EMBER_OP_NEG, EMBER_OP_EXP, EMBER_OP_LOG, EMBER_OP_SQRT, EMBER_OP_TANH,
  EMBER_OP_SIGMOID, EMBER_OP_RELU, EMBER_OP_ABS, EMBER_OP_SIGN, EMBER_OP_SIN,
  EMBER_OP_COS, EMBER_OP_LOG1P, EMBER_OP_RECIPROCAL,
  EMBER_OP_CLAMP, /* args: lo, hi */
  EMBER_OP_AXPB,  /* a * x + b, args: a, b */
  EMBER_OP_NOT,   /* logical not: writes bool */
  EMBER_UNARY_OP_COUNT
} ember_unary_op_t;

typedef enum {
  EMBER_REDUCE_SUM, EMBER_REDUCE_PROD, EMBER_REDUCE_MAX, EMBER_REDUCE_MIN,
  EMBER_REDUCE_COUNT
} ember_reduce_op_t;

/*
** What a device implements. Operands passed to a kernel live on that device,
** have the shapes the comment says and arbitrary strides. Kernels return 0 or
** a negative code; they leave messages with ember__tensor_fail().
*/
struct ember_device_s {
  const char *name; /* "cpu", "cuda:0" */
  const char *type; /* "cpu" or "cuda" */
  int index;        /* -1 for the CPU */
  int is_host;      /* the CPU may read and write its memory directly */
  /* Memory functions take the device itself: one table serves every
  ** device of a kind (cuda:0, cuda:1), told apart by `index`. */
  /* Zero-filled; NULL when out of memory. */
  void *(*alloc)(const ember_device_t *device, size_t nbytes);
  void (*free)(const ember_device_t *device, void *data);
  /* Contiguous byte copies between this device's memory and the host's.
  ** to_host returns once the bytes have arrived (it waits for the work
  ** queued before it); from_host may return before the copy is done but
  ** never reads `host` after returning. */
  int (*to_host)(const ember_device_t *device, void *host, const void *data,
                 size_t nbytes);
  int (*from_host)(const ember_device_t *device, void *data,
                   const void *host, size_t nbytes);
  /* Waits until every kernel and copy queued on the device has finished. */
  int (*synchronize)(const ember_device_t *device);
  /* Page-locked host memory for staging copies; NULL: malloc/free. */
  void *(*host_alloc)(const ember_device_t *device, size_t nbytes);
  void (*host_free)(const ember_device_t *device, void *p);
  /* dst and src have one shape; converts between dtypes. */
  int (*copy)(ember_tensor_t *dst, const ember_tensor_t *src);
  int (*fill)(ember_tensor_t *dst, double value);
  /* out, x: one shape; out's dtype is x's (bool for NOT). */
  int (*unary)(ember_unary_op_t op, ember_tensor_t *out,
               const ember_tensor_t *x, double arg0, double arg1);
  /* out, a, b: one shape (broadcast views); a and b share a dtype, which
  ** out has too, except that comparisons write bool. */
  int (*binary)(ember_binary_op_t op, ember_tensor_t *out,
                const ember_tensor_t *a, const ember_tensor_t *b);
  /* Reduces x over `dim` into out (x's shape with that dim removed);
  ** for MAX/MIN also writes the 0-based position into `index` (int64) if
  ** not NULL. */
  int (*reduce)(ember_reduce_op_t op, ember_tensor_t *out,
                ember_tensor_t *index, const ember_tensor_t *x, int dim);
  /* out = alpha * a @ b + beta * out; 2-D, one floating dtype. */
  int (*gemm)(ember_tensor_t *out, const ember_tensor_t *a,
              const ember_tensor_t *b, double alpha, double beta);
  /* Softmax (or log-softmax) of x over `dim` into out, one shape. */
  int (*softmax)(ember_tensor_t *out, const ember_tensor_t *x, int dim,
                 int log);
  /* The gradient of softmax/log-softmax: from its output y and dL/dy. */
  int (*softmax_backward)(ember_tensor_t *grad_x, const ember_tensor_t *grad_y,
                          const ember_tensor_t *y, int dim, int log);
  /* out[i][j] = x[i][index[i][j]] along dim (index int64, 0-based, shape of
  ** out); checked against x's size. */
  int (*gather)(ember_tensor_t *out, const ember_tensor_t *x, int dim,
                const ember_tensor_t *index);
  /* dst[..index[i][j]..] = src[i][j] along dim, or += when accumulate. */
  int (*scatter)(ember_tensor_t *dst, int dim, const ember_tensor_t *index,
                 const ember_tensor_t *src, int accumulate);
  /* out = cond ? a : b; one shape, a and b share out's dtype. */
  int (*where)(ember_tensor_t *out, const ember_tensor_t *cond,
               const ember_tensor_t *a, const ember_tensor_t *b);

  /* Optional kernels: NULL where the front end's generic path serves. */

  /* Fills t (any layout, float dtype) with uniform values in [a, b)
  ** (normal = 0) or normal ones of mean a and std b (normal = 1): element
  ** i in row-major order is ember_counter_uniform/normal(seed, i) of
  ** counter_rng.h. NULL: the host generator fills it. */
  int (*random)(ember_tensor_t *t, int normal, double a, double b,
                uint64_t seed);
  /* out (rows, n) contiguous int64: n draws with replacement from each row
  ** of probs (rows, k), a float tensor whose rows the front end has checked
  ** (finite, non-negative, positive sums). Draw s of row r uses
  ** ember_counter_uniform(seed, r * n + s). NULL: drawn on the host. */
  int (*multinomial)(ember_tensor_t *out, const ember_tensor_t *probs,
                     uint64_t seed);
  /* out[i] = alpha * a[i] @ b[i] + beta * out[i] for 3-D a (B, m, k),
  ** b (B, k, n), out (B, m, n), any strides, one float dtype. NULL: the
  ** front end calls gemm once per matrix. */
  int (*gemm_batched)(ember_tensor_t *out, const ember_tensor_t *a,
                      const ember_tensor_t *b, double alpha, double beta);
};

/* Whether a and b are the same device (type and index). */
int ember_device_same(const ember_device_t *a, const ember_device_t *b);
/* EMBER_EINVAL, with a message naming both devices and `what`, unless a and
** b (either may be NULL) are on one device. */
int ember__check_devices(const char *what, const ember_tensor_t *a,
                         const ember_tensor_t *b);

/* The host versions of the optional random kernels, for host-addressable
** memory (and the simulated device): the same streams a GPU draws. */
int ember__host_random(ember_tensor_t *t, int normal, double a, double b,
                       uint64_t seed);
int ember__host_multinomial(ember_tensor_t *out, const ember_tensor_t *probs,
                            uint64_t seed);

extern const ember_device_t ember_cpu_device;

/* OpenBLAS threads for this process. One by default: workers are processes,
** and several BLAS threads per worker fight over the cores. */
int ember_cpu_set_threads(int n);
int ember_cpu_threads(void);
/* Applies EMBER_NUM_THREADS (default 1); EMBER_EINVAL if it is malformed. */
int ember_cpu_init_threads(void);

/* Broadcasts in[0..n) to one shape: new views (no autograd) in views[]. */
int ember__broadcast(const ember_tensor_t *const *in, int n,
                     ember_tensor_t **views);

/* ---- Errors ------------------------------------------------------------ */

/* The message of the last failure on this thread. */
const char *ember_tensor_error(void);
/* Leaves a message for ember_tensor_error(); returns `code`. */
int ember__tensor_fail(int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* "[2, 3]" into buf, for messages. */
const char *ember_shape_string(const int64_t *shape, int ndim, char *buf,
                               size_t size);

/* One element as a double, and back (internal to the CPU code). */
double ember__load_double(ember_dtype_t dtype, const void *p);
void ember__store_double(ember_dtype_t dtype, void *p, double v);

/*
** Whether dst may be changed in place now: not while grad mode is on and dst
** is watched by autograd (a leaf that requires grad, or part of a recorded
** graph, whose gradients would silently go wrong). Bumps the storage's
** version when it may. `what` names the op in the message.
*/
int ember__begin_in_place(ember_tensor_t *dst, const char *what);

/* ---- Life cycle and metadata -------------------------------------------- */

/* A new contiguous tensor, zero-filled. */
ember_tensor_t *ember_tensor_new(const int64_t *shape, int ndim,
                                 ember_dtype_t dtype,
                                 const ember_device_t *device);
/* A new contiguous CPU tensor whose contents are undefined: for memory that
** is overwritten at once (a payload read from a socket). */
ember_tensor_t *ember_tensor_empty(const int64_t *shape, int ndim,
                                   ember_dtype_t dtype);
/* A new view on t's storage with the given geometry (no autograd). */
ember_tensor_t *ember_tensor_view_of(const ember_tensor_t *t,
                                     const int64_t *shape,
                                     const int64_t *strides, int ndim,
                                     int64_t offset);
void ember_tensor_retain(ember_tensor_t *t);
void ember_tensor_release(ember_tensor_t *t);
int64_t ember_tensor_numel(const ember_tensor_t *t);
int ember_tensor_is_contiguous(const ember_tensor_t *t);
/* Address of the first element (CPU tensors only). */
void *ember_tensor_data(const ember_tensor_t *t);
/* Same shapes? */
int ember_tensor_same_shape(const ember_tensor_t *a, const ember_tensor_t *b);
/* Normalises a possibly negative dim against ndim (ndim + 1 with `extra`);
** EMBER_EINVAL with a message if out of range. */
int ember_tensor_wrap_dim(int *dim, int ndim, int extra);

/* ---- Creation ------------------------------------------------------------ */

ember_tensor_t *ember_tensor_full(const int64_t *shape, int ndim,
                                  ember_dtype_t dtype, double value);
ember_tensor_t *ember_tensor_arange(double start, double end, double step,
                                    ember_dtype_t dtype);
ember_tensor_t *ember_tensor_eye(int64_t n, ember_dtype_t dtype);
/* Contiguous copy in another dtype (or a new reference to t when nothing
** changes and `copy` is 0). Differentiable for float dtypes. */
ember_tensor_t *ember_tensor_to(const ember_tensor_t *t, ember_dtype_t dtype,
                                int copy);
/* The same onto `device` (NULL: t's own): a contiguous copy there, whose
** backward brings the gradient back to t's device. */
ember_tensor_t *ember_tensor_to_device(const ember_tensor_t *t,
                                       const ember_device_t *device,
                                       ember_dtype_t dtype, int copy);
ember_tensor_t *ember_tensor_contiguous(const ember_tensor_t *t);
/* A contiguous CPU copy of t (not recorded), in page-locked memory of t's
** device where it has some: what a device tensor is sent from. */
ember_tensor_t *ember_tensor_staged_on_host(const ember_tensor_t *t);
/* A contiguous copy that autograd does not record (a fresh leaf). */
ember_tensor_t *ember_tensor_copy_detached(const ember_tensor_t *t);
/* Element access by flat row-major position (through strides). */
double ember_tensor_get(const ember_tensor_t *t, int64_t flat);
int ember_tensor_set(ember_tensor_t *t, int64_t flat, double value);
/* A 64-bit integer read exact for int64 tensors. */
int64_t ember_tensor_get_int(const ember_tensor_t *t, int64_t flat);

/* ---- Random numbers: one generator per process (thread) --------------- */

void ember_random_seed(uint64_t seed);
uint64_t ember_random_initial_seed(void);
double ember_random_uniform(void); /* [0, 1) */
double ember_random_normal(void);
/* Fills t (any layout, float dtypes) in place. */
int ember_tensor_uniform_(ember_tensor_t *t, double lo, double hi);
int ember_tensor_normal_(ember_tensor_t *t, double mean, double std);
/* Draws n indices (0-based, int64) per row of probs (1-D or 2-D, non-negative
** weights, not necessarily normalised). */
ember_tensor_t *ember_tensor_multinomial(const ember_tensor_t *probs,
                                         int64_t n, int replacement);

/* ---- Views (differentiable; share storage) ------------------------------ */

/* Shape may hold one -1. A view when the strides allow it, else a copy
** (reshape); view fails instead of copying. */
ember_tensor_t *ember_tensor_reshape(const ember_tensor_t *t,
                                     const int64_t *shape, int ndim,
                                     int view_only);
ember_tensor_t *ember_tensor_transpose(const ember_tensor_t *t, int d0,
                                       int d1);
/* The transpose of a matrix (PyTorch's t(), named TBackward0 in graphs). */
ember_tensor_t *ember_tensor_matrix_t(const ember_tensor_t *t);
ember_tensor_t *ember_tensor_permute(const ember_tensor_t *t,
                                     const int *dims, int ndim);
ember_tensor_t *ember_tensor_narrow(const ember_tensor_t *t, int dim,
                                    int64_t start, int64_t length);
ember_tensor_t *ember_tensor_select(const ember_tensor_t *t, int dim,
                                    int64_t index);
ember_tensor_t *ember_tensor_unsqueeze(const ember_tensor_t *t, int dim);
/* dim < 0 after wrapping is not allowed; all = 1 squeezes every size-1 dim. */
ember_tensor_t *ember_tensor_squeeze(const ember_tensor_t *t, int dim,
                                     int all);
/* Sizes of -1 keep the existing size; new leading dims may be added. */
ember_tensor_t *ember_tensor_expand(const ember_tensor_t *t,
                                    const int64_t *shape, int ndim);

/* ---- Math (differentiable for float dtypes) ------------------------------- */

ember_tensor_t *ember_tensor_binary(ember_binary_op_t op,
                                    const ember_tensor_t *a,
                                    const ember_tensor_t *b);
/* a op scalar (or scalar op a with `reversed`): the scalar takes a's dtype,
** except that a float scalar turns an integer tensor into float32. */
ember_tensor_t *ember_tensor_binary_scalar(ember_binary_op_t op,
                                           const ember_tensor_t *a,
                                           double scalar, int is_int,
                                           int reversed);
ember_tensor_t *ember_tensor_unary(ember_unary_op_t op,
                                   const ember_tensor_t *x, double arg0,
                                   double arg1);
/* Over one dim (keepdim keeps it as size 1) or, with dim = EMBER_ALL_DIMS,
** over everything into a 0-dim tensor. MAX/MIN over a dim also return the
** 0-based positions in *index when index is not NULL. */
#define EMBER_ALL_DIMS (-1000)
ember_tensor_t *ember_tensor_reduce(ember_reduce_op_t op,
                                    const ember_tensor_t *x, int dim,
                                    int keepdim, ember_tensor_t **index);
ember_tensor_t *ember_tensor_mean(const ember_tensor_t *x, int dim,
                                  int keepdim);
/* Positions (int64, 0-based) of the max/min; over everything when dim is
** EMBER_ALL_DIMS (position in the flattened tensor). */
ember_tensor_t *ember_tensor_argmax(const ember_tensor_t *x, int dim,
                                    int keepdim, int min);
/* 1-D/2-D/batched like torch.matmul. */
ember_tensor_t *ember_tensor_matmul(const ember_tensor_t *a,
                                    const ember_tensor_t *b);
/* beta * bias + alpha * (a @ b), bias broadcast to the result (2-D). */
ember_tensor_t *ember_tensor_addmm(const ember_tensor_t *bias,
                                   const ember_tensor_t *a,
                                   const ember_tensor_t *b, double beta,
                                   double alpha);
ember_tensor_t *ember_tensor_softmax(const ember_tensor_t *x, int dim,
                                     int log);
ember_tensor_t *ember_tensor_cat(ember_tensor_t *const *list, int n, int dim);
ember_tensor_t *ember_tensor_stack(ember_tensor_t *const *list, int n,
                                   int dim);
/* index: int64, 0-based, same ndim as x. */
ember_tensor_t *ember_tensor_gather(const ember_tensor_t *x, int dim,
                                    const ember_tensor_t *index);
/* A copy of x with src scattered in (accumulate: added). Not differentiable
** in src's positions beyond what PyTorch gives: grad flows to x and src. */
ember_tensor_t *ember_tensor_scatter(const ember_tensor_t *x, int dim,
                                     const ember_tensor_t *index,
                                     const ember_tensor_t *src,
                                     int accumulate);
/* index: 1-D int64, 0-based. */
ember_tensor_t *ember_tensor_index_select(const ember_tensor_t *x, int dim,
                                          const ember_tensor_t *index);
ember_tensor_t *ember_tensor_where(const ember_tensor_t *cond,
                                   const ember_tensor_t *a,
                                   const ember_tensor_t *b);

/* ---- In place (not recorded; refused on a leaf that requires grad while
** grad mode is on) ---------------------------------------------------------- */

/* dst[...] = src broadcast to dst's shape, converting dtype. */
int ember_tensor_copy_(ember_tensor_t *dst, const ember_tensor_t *src);
int ember_tensor_fill_(ember_tensor_t *dst, double value);
/* dst = dst op (alpha * src), src broadcast to dst. */
int ember_tensor_binary_(ember_binary_op_t op, ember_tensor_t *dst,
                         const ember_tensor_t *src, double alpha);
int ember_tensor_unary_(ember_unary_op_t op, ember_tensor_t *dst,
                        double arg0, double arg1);
/* dst += value * a * b (mul) or value * a / b (div). */
int ember_tensor_addc_(ember_tensor_t *dst, const ember_tensor_t *a,
                       const ember_tensor_t *b, double value, int div);

/* Whether a and b have one shape and equal elements (rtol/atol: allclose). */
int ember_tensor_allclose(const ember_tensor_t *a, const ember_tensor_t *b,
                          double rtol, double atol, int *result);

#endif
