/*
** Tensors and autograd in C, without Lua: creation, broadcasting, views
** against copies, reductions, GEMM, backward, error messages, and that every
** tensor is released (storages counted through a device that wraps the CPU
** one; the rest is left to AddressSanitizer's leak checker).
** Dimensions and indices are 0-based here, as in the C core.
*/
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "autograd.h"
#include "check.h"
#include "error.h"
#include "tensor.h"

#define CHECK_NEAR(a, b)                                                       \
  do {                                                                         \
    double check_x_ = (a), check_y_ = (b);                                     \
    if (!(fabs(check_x_ - check_y_) <= 1e-5 * (1 + fabs(check_y_)))) {         \
      fprintf(stderr, "%s:%d: check failed: %s ~ %s (%.9g vs %.9g)\n",         \
              __FILE__, __LINE__, #a, #b, check_x_, check_y_);                 \
      abort();                                                                 \
    }                                                                          \
  } while (0)

#define CHECK_MSG(needle)                                                      \
  do {                                                                         \
    if (strstr(ember_tensor_error(), (needle)) == NULL) {                      \
      fprintf(stderr, "%s:%d: error message '%s' lacks '%s'\n", __FILE__,      \
              __LINE__, ember_tensor_error(), (needle));                       \
      abort();                                                                 \
    }                                                                          \
  } while (0)

/* ---- A counting device: the CPU kernels, with live storages counted -------- */

static int live_storages;

static void *counting_alloc(const ember_device_t *device, size_t nbytes) {
  void *p = ember_cpu_device.alloc(device, nbytes);
  if (p != NULL) live_storages++;
  return p;
}

static void counting_free(const ember_device_t *device, void *data) {
  live_storages--;
  ember_cpu_device.free(device, data);
}

static ember_device_t counting;

static const ember_device_t *counting_device(void) {
  counting = ember_cpu_device;
  counting.name = "counting";
  counting.alloc = counting_alloc;
  counting.free = counting_free;
  return &counting;
}

/* A contiguous tensor of the given shape holding values[] in row-major order. */
static ember_tensor_t *make(const int64_t *shape, int ndim, ember_dtype_t dtype,
                            const double *values, const ember_device_t *dev) {
  ember_tensor_t *t = ember_tensor_new(shape, ndim, dtype, dev);
  CHECK(t != NULL);
  int64_t n = ember_tensor_numel(t);
  for (int64_t i = 0; i < n; i++) ember_tensor_set(t, i, values[i]);
  return t;
}

static void check_values(const ember_tensor_t *t, const double *expected,
                         int64_t n) {
  CHECK_EQ(ember_tensor_numel(t), n);
  for (int64_t i = 0; i < n; i++) CHECK_NEAR(ember_tensor_get(t, i), expected[i]);
}

static void check_shape(const ember_tensor_t *t, const int64_t *shape,
                        int ndim) {
  CHECK_EQ(t->ndim, ndim);
  for (int i = 0; i < ndim; i++) CHECK_EQ(t->shape[i], shape[i]);
}

/* ---- Tests ---------------------------------------------------------------- */

static void test_creation(void) {
  const ember_device_t *dev = counting_device();
  int64_t shape[2] = {2, 3};
  ember_tensor_t *z = ember_tensor_new(shape, 2, EMBER_FLOAT32, dev);
  CHECK(z != NULL);
  CHECK_EQ(live_storages, 1);
  CHECK_EQ(ember_tensor_numel(z), 6);
  CHECK_EQ(z->strides[0], 3);
  CHECK_EQ(z->strides[1], 1);
  CHECK(ember_tensor_is_contiguous(z));
  for (int i = 0; i < 6; i++) CHECK(ember_tensor_get(z, i) == 0);
  ember_tensor_release(z);
  CHECK_EQ(live_storages, 0);

  ember_tensor_t *f = ember_tensor_full(shape, 2, EMBER_FLOAT64, 2.5);
  CHECK(f->dtype == EMBER_FLOAT64);
  for (int i = 0; i < 6; i++) CHECK(ember_tensor_get(f, i) == 2.5);
  ember_tensor_release(f);

  ember_tensor_t *r = ember_tensor_arange(0, 5, 1, EMBER_INT64);
  const double range[5] = {0, 1, 2, 3, 4};
  check_values(r, range, 5);
  ember_tensor_release(r);

  ember_tensor_t *e = ember_tensor_eye(3, EMBER_FLOAT32);
  const double eye[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
  check_values(e, eye, 9);
  ember_tensor_release(e);

  ember_tensor_t *s = ember_tensor_new(NULL, 0, EMBER_INT64, NULL);
  CHECK_EQ(s->ndim, 0);
  CHECK_EQ(ember_tensor_numel(s), 1);
  ember_tensor_set(s, 0, 7);
  CHECK_EQ(ember_tensor_get_int(s, 0), 7);
  ember_tensor_release(s);

  int64_t bad[2] = {2, -1};
  CHECK(ember_tensor_new(bad, 2, EMBER_FLOAT32, NULL) == NULL);
  CHECK_MSG("negative size");
}

static void test_dtypes(void) {
  ember_dtype_t d;
  CHECK_EQ(ember_dtype_from_name("float64", &d), 0);
  CHECK(d == EMBER_FLOAT64);
  CHECK_EQ(ember_dtype_from_name("long", &d), 0);
  CHECK(d == EMBER_INT64);
  CHECK_EQ(ember_dtype_from_name("half", &d), EMBER_EINVAL);
  CHECK_MSG("half");
  CHECK(ember_dtype_promote(EMBER_INT64, EMBER_FLOAT32) == EMBER_FLOAT32);
  CHECK(ember_dtype_promote(EMBER_UINT8, EMBER_INT32) == EMBER_INT32);
  CHECK(ember_dtype_promote(EMBER_BOOL, EMBER_UINT8) == EMBER_UINT8);
  CHECK_EQ(ember_dtype_size(EMBER_FLOAT64), 8);
  CHECK(strcmp(ember_dtype_name(EMBER_BOOL), "bool") == 0);
}

static void test_broadcast_add(void) {
  const ember_device_t *dev = counting_device();
  int64_t sa[2] = {3, 1}, sb[2] = {1, 4};
  const double va[3] = {0, 10, 20}, vb[4] = {1, 2, 3, 4};
  ember_tensor_t *a = make(sa, 2, EMBER_FLOAT32, va, dev);
  ember_tensor_t *b = make(sb, 2, EMBER_FLOAT32, vb, dev);
  ember_tensor_t *c = ember_tensor_binary(EMBER_OP_ADD, a, b);
  CHECK(c != NULL);
  const int64_t want_shape[2] = {3, 4};
  check_shape(c, want_shape, 2);
  const double want[12] = {1, 2, 3, 4, 11, 12, 13, 14, 21, 22, 23, 24};
  check_values(c, want, 12);
  CHECK(c->storage->device == dev);

  /* {2,3} + {3}: the row added to each row; int64 + float32 is float32. */
  int64_t sm[2] = {2, 3}, sv[1] = {3};
  const double vm[6] = {1, 2, 3, 4, 5, 6}, vv[3] = {10, 20, 30};
  ember_tensor_t *m = make(sm, 2, EMBER_INT64, vm, dev);
  ember_tensor_t *v = make(sv, 1, EMBER_FLOAT32, vv, dev);
  ember_tensor_t *mv = ember_tensor_binary(EMBER_OP_ADD, m, v);
  CHECK(mv != NULL);
  CHECK(mv->dtype == EMBER_FLOAT32);
  const double want_mv[6] = {11, 22, 33, 14, 25, 36};
  check_values(mv, want_mv, 6);

  ember_tensor_release(a);
  ember_tensor_release(b);
  ember_tensor_release(c);
  ember_tensor_release(m);
  ember_tensor_release(v);
  ember_tensor_release(mv);
  CHECK_EQ(live_storages, 0);
}

static void test_bad_broadcast_message(void) {
  int64_t sa[2] = {2, 3}, sb[1] = {2};
  ember_tensor_t *a = ember_tensor_new(sa, 2, EMBER_FLOAT32, NULL);
  ember_tensor_t *b = ember_tensor_new(sb, 1, EMBER_FLOAT32, NULL);
  CHECK(ember_tensor_binary(EMBER_OP_ADD, a, b) == NULL);
  CHECK_MSG("[2, 3]");
  CHECK_MSG("[2]");
  CHECK_MSG("broadcast");
  /* matmul names both shapes too */
  CHECK(ember_tensor_matmul(a, a) == NULL);
  CHECK_MSG("[2, 3] and [2, 3]");
  /* in-place: the source must broadcast to the destination */
  CHECK(ember_tensor_binary_(EMBER_OP_ADD, b, a, 1.0) < 0);
  CHECK_MSG("[2, 3]");
  ember_tensor_release(a);
  ember_tensor_release(b);
}

static void test_reshape_view_or_copy(void) {
  const ember_device_t *dev = counting_device();
  int64_t s23[2] = {2, 3};
  const double v[6] = {1, 2, 3, 4, 5, 6};
  ember_tensor_t *a = make(s23, 2, EMBER_FLOAT32, v, dev);

  /* Contiguous: a view sharing storage. */
  int64_t s32[2] = {3, 2}, s6[1] = {-1};
  ember_tensor_t *view = ember_tensor_reshape(a, s32, 2, 1);
  CHECK(view != NULL);
  CHECK(view->storage == a->storage);
  CHECK_EQ(live_storages, 1);
  ember_tensor_set(view, 5, 60);
  CHECK(ember_tensor_get(a, 5) == 60);

  /* Transposed: view refuses, reshape copies in logical order. */
  ember_tensor_t *t = ember_tensor_transpose(a, 0, 1);
  CHECK(t->storage == a->storage);
  CHECK(!ember_tensor_is_contiguous(t));
  CHECK(ember_tensor_reshape(t, s6, 1, 1) == NULL);
  CHECK_MSG("reshape");
  ember_tensor_t *flat = ember_tensor_reshape(t, s6, 1, 0);
  CHECK(flat != NULL);
  CHECK(flat->storage != a->storage);
  CHECK_EQ(live_storages, 2);
  const int64_t six[1] = {6};
  check_shape(flat, six, 1);
  const double want[6] = {1, 4, 2, 5, 3, 60};
  check_values(flat, want, 6);
  ember_tensor_set(flat, 0, 100);
  CHECK(ember_tensor_get(a, 0) == 1);

  /* A narrowed row block is still viewable; a column block is not. */
  ember_tensor_t *rows = ember_tensor_narrow(a, 0, 1, 1);
  ember_tensor_t *rows_flat = ember_tensor_reshape(rows, s6, 1, 1);
  CHECK(rows_flat != NULL);
  CHECK(rows_flat->storage == a->storage);
  const double row2[3] = {4, 5, 60};
  check_values(rows_flat, row2, 3);
  ember_tensor_t *cols = ember_tensor_narrow(a, 1, 1, 2);
  CHECK(ember_tensor_reshape(cols, s6, 1, 1) == NULL);

  ember_tensor_release(cols);
  ember_tensor_release(rows_flat);
  ember_tensor_release(rows);
  ember_tensor_release(flat);
  ember_tensor_release(t);
  ember_tensor_release(view);
  CHECK_EQ(live_storages, 1); /* a's storage */
  ember_tensor_release(a);
  CHECK_EQ(live_storages, 0);
}

static void test_views_share_storage(void) {
  int64_t s23[2] = {2, 3};
  const double v[6] = {1, 2, 3, 4, 5, 6};
  ember_tensor_t *a = make(s23, 2, EMBER_FLOAT64, v, NULL);
  ember_tensor_t *row = ember_tensor_select(a, 0, 1);
  const double r[3] = {4, 5, 6};
  check_values(row, r, 3);
  ember_tensor_t *col = ember_tensor_select(a, 1, -1); /* negative: last */
  const double c[2] = {3, 6};
  check_values(col, c, 2);
  CHECK(ember_tensor_select(a, 0, 2) == NULL);
  CHECK_MSG("index 3"); /* messages count from 1 */

  ember_tensor_t *u = ember_tensor_unsqueeze(a, 1);
  const int64_t us[3] = {2, 1, 3};
  check_shape(u, us, 3);
  ember_tensor_t *sq = ember_tensor_squeeze(u, 0, 1);
  check_shape(sq, s23, 2);

  int64_t one_col[2] = {2, 1}, wide[2] = {2, 4};
  ember_tensor_t *narrow = ember_tensor_narrow(a, 1, 0, 1);
  check_shape(narrow, one_col, 2);
  ember_tensor_t *e = ember_tensor_expand(narrow, wide, 2);
  CHECK(e != NULL);
  CHECK_EQ(e->strides[1], 0);
  const double ev[8] = {1, 1, 1, 1, 4, 4, 4, 4};
  check_values(e, ev, 8);
  CHECK(ember_tensor_expand(a, wide, 2) == NULL);
  CHECK_MSG("[2, 3]");

  int dims[2] = {1, 0};
  ember_tensor_t *p = ember_tensor_permute(a, dims, 2);
  ember_tensor_set(p, 1, -4); /* p[0][1] is a[1][0] */
  CHECK(ember_tensor_get(a, 3) == -4);

  CHECK_EQ(ember_tensor_fill_(row, 9), 0);
  CHECK(ember_tensor_get(a, 5) == 9);

  ember_tensor_release(p);
  ember_tensor_release(e);
  ember_tensor_release(narrow);
  ember_tensor_release(sq);
  ember_tensor_release(u);
  ember_tensor_release(col);
  ember_tensor_release(row);
  ember_tensor_release(a);
}

static void test_sum_over_dim(void) {
  const ember_device_t *dev = counting_device();
  int64_t s23[2] = {2, 3};
  const double v[6] = {1, 2, 3, 4, 5, 6};
  ember_tensor_t *a = make(s23, 2, EMBER_FLOAT32, v, dev);

  ember_tensor_t *s0 = ember_tensor_reduce(EMBER_REDUCE_SUM, a, 0, 0, NULL);
  const int64_t three[1] = {3};
  check_shape(s0, three, 1);
  const double w0[3] = {5, 7, 9};
  check_values(s0, w0, 3);

  ember_tensor_t *s1 = ember_tensor_reduce(EMBER_REDUCE_SUM, a, 1, 1, NULL);
  const int64_t two_one[2] = {2, 1};
  check_shape(s1, two_one, 2);
  const double w1[2] = {6, 15};
  check_values(s1, w1, 2);

  ember_tensor_t *all = ember_tensor_reduce(EMBER_REDUCE_SUM, a, EMBER_ALL_DIMS,
                                            0, NULL);
  CHECK_EQ(all->ndim, 0);
  CHECK_NEAR(ember_tensor_get(all, 0), 21);

  /* Over a transposed view: the same sums, the other way round. */
  ember_tensor_t *t = ember_tensor_transpose(a, 0, 1);
  ember_tensor_t *st = ember_tensor_reduce(EMBER_REDUCE_SUM, t, 1, 0, NULL);
  check_values(st, w0, 3);

  /* max over a dim with 0-based positions */
  ember_tensor_t *pos = NULL;
  ember_tensor_t *mx = ember_tensor_reduce(EMBER_REDUCE_MAX, a, 0, 0, &pos);
  CHECK(mx != NULL && pos != NULL);
  CHECK(pos->dtype == EMBER_INT64);
  for (int i = 0; i < 3; i++) CHECK_EQ(ember_tensor_get_int(pos, i), 1);

  ember_tensor_t *mean = ember_tensor_mean(a, -1, 0);
  const double wm[2] = {2, 5};
  check_values(mean, wm, 2);

  CHECK(ember_tensor_reduce(EMBER_REDUCE_SUM, a, 2, 0, NULL) == NULL);
  CHECK_MSG("dimension 3");

  ember_tensor_release(mean);
  ember_tensor_release(mx);
  ember_tensor_release(pos);
  ember_tensor_release(st);
  ember_tensor_release(t);
  ember_tensor_release(all);
  ember_tensor_release(s1);
  ember_tensor_release(s0);
  ember_tensor_release(a);
  CHECK_EQ(live_storages, 0);
}

static void test_sgemm(void) {
  const ember_device_t *dev = counting_device();
  int64_t s23[2] = {2, 3}, s32[2] = {3, 2};
  const double va[6] = {1, 2, 3, 4, 5, 6};
  const double vb[6] = {7, 8, 9, 10, 11, 12};
  ember_tensor_t *a = make(s23, 2, EMBER_FLOAT32, va, dev);
  ember_tensor_t *b = make(s32, 2, EMBER_FLOAT32, vb, dev);
  /* [[1,2,3],[4,5,6]] @ [[7,8],[9,10],[11,12]] = [[58,64],[139,154]] */
  ember_tensor_t *c = ember_tensor_matmul(a, b);
  CHECK(c != NULL);
  CHECK(c->dtype == EMBER_FLOAT32);
  const int64_t s22[2] = {2, 2};
  check_shape(c, s22, 2);
  const double want[4] = {58, 64, 139, 154};
  check_values(c, want, 4);

  /* Transposed operands go to BLAS with the transpose flags. */
  ember_tensor_t *at = ember_tensor_transpose(a, 0, 1); /* 3x2 */
  ember_tensor_t *bt = ember_tensor_transpose(b, 0, 1); /* 2x3 */
  ember_tensor_t *ct = ember_tensor_matmul(bt, at);     /* (a b)^T */
  const double want_t[4] = {58, 139, 64, 154};
  check_values(ct, want_t, 4);

  /* addmm: beta * bias + alpha * a @ b, bias broadcast over rows. */
  int64_t s2[1] = {2};
  const double vbias[2] = {1, -1};
  ember_tensor_t *bias = make(s2, 1, EMBER_FLOAT32, vbias, dev);
  ember_tensor_t *d = ember_tensor_addmm(bias, a, b, 2, 0.5);
  const double want_d[4] = {31, 30, 71.5, 75};
  check_values(d, want_d, 4);

  /* float64 through dgemm; int64 through the plain loop. */
  ember_tensor_t *a64 = ember_tensor_to(a, EMBER_FLOAT64, 0);
  ember_tensor_t *b64 = ember_tensor_to(b, EMBER_FLOAT64, 0);
  ember_tensor_t *c64 = ember_tensor_matmul(a64, b64);
  check_values(c64, want, 4);
  ember_tensor_t *ai = ember_tensor_to(a, EMBER_INT64, 0);
  ember_tensor_t *bi = ember_tensor_to(b, EMBER_INT64, 0);
  ember_tensor_t *ci = ember_tensor_matmul(ai, bi);
  CHECK(ci->dtype == EMBER_INT64);
  check_values(ci, want, 4);

  /* Mixed dtypes are refused with both named. */
  CHECK(ember_tensor_matmul(a, b64) == NULL);
  CHECK_MSG("float32");
  CHECK_MSG("float64");

  ember_tensor_release(ci);
  ember_tensor_release(bi);
  ember_tensor_release(ai);
  ember_tensor_release(c64);
  ember_tensor_release(b64);
  ember_tensor_release(a64);
  ember_tensor_release(d);
  ember_tensor_release(bias);
  ember_tensor_release(ct);
  ember_tensor_release(bt);
  ember_tensor_release(at);
  ember_tensor_release(c);
  ember_tensor_release(b);
  ember_tensor_release(a);
  CHECK_EQ(live_storages, 0);
}

static void test_backward_mul_sum(void) {
  int64_t s3[1] = {3};
  const double va[3] = {1, 2, 3}, vb[3] = {4, 5, 6};
  ember_tensor_t *a = make(s3, 1, EMBER_FLOAT64, va, NULL);
  ember_tensor_t *b = make(s3, 1, EMBER_FLOAT64, vb, NULL);
  a->requires_grad = 1;
  b->requires_grad = 1;
  ember_tensor_t *p = ember_tensor_binary(EMBER_OP_MUL, a, b);
  CHECK(p != NULL && p->grad_fn != NULL);
  CHECK(strcmp(p->grad_fn->kind->name, "MulBackward0") == 0);
  ember_tensor_t *s = ember_tensor_reduce(EMBER_REDUCE_SUM, p, EMBER_ALL_DIMS,
                                          0, NULL);
  CHECK(s != NULL && s->grad_fn != NULL);
  CHECK_NEAR(ember_tensor_get(s, 0), 32);
  CHECK_EQ(ember_backward(s, NULL, 1), 0);
  CHECK(a->grad != NULL && b->grad != NULL);
  check_values(a->grad, vb, 3);
  check_values(b->grad, va, 3);
  CHECK(a->grad->dtype == EMBER_FLOAT64);
  CHECK(ember_grad_enabled()); /* backward restores the mode */

  /* Retained: a second backward accumulates. */
  CHECK_EQ(ember_backward(s, NULL, 0), 0);
  const double twice_b[3] = {8, 10, 12};
  check_values(a->grad, twice_b, 3);
  /* Freed: a third is refused, naming retain_graph. */
  CHECK(ember_backward(s, NULL, 0) < 0);
  CHECK_MSG("retain_graph");

  /* Not a scalar, no gradient given. */
  CHECK(ember_backward(p, NULL, 0) < 0);
  CHECK_MSG("[3]");

  ember_tensor_release(s);
  ember_tensor_release(p);
  ember_tensor_release(a);
  ember_tensor_release(b);
}

static void test_backward_broadcast_and_matmul(void) {
  /* d/dw sum((x @ w) + bias) with x 2x3, w 3x2, bias {2}. */
  int64_t sx[2] = {2, 3}, sw[2] = {3, 2}, sb[1] = {2};
  const double vx[6] = {1, 2, 3, 4, 5, 6}, vw[6] = {1, 0, 0, 1, 1, 1};
  const double vbias[2] = {0.5, -0.5};
  ember_tensor_t *x = make(sx, 2, EMBER_FLOAT64, vx, NULL);
  ember_tensor_t *w = make(sw, 2, EMBER_FLOAT64, vw, NULL);
  ember_tensor_t *bias = make(sb, 1, EMBER_FLOAT64, vbias, NULL);
  w->requires_grad = 1;
  bias->requires_grad = 1;
  ember_tensor_t *y = ember_tensor_matmul(x, w);
  ember_tensor_t *z = ember_tensor_binary(EMBER_OP_ADD, y, bias);
  ember_tensor_t *s = ember_tensor_reduce(EMBER_REDUCE_SUM, z, EMBER_ALL_DIMS,
                                          0, NULL);
  CHECK_EQ(ember_backward(s, NULL, 0), 0);
  CHECK(x->grad == NULL);
  /* dw[k][j] = sum_i x[i][k]: {5, 5, 7, 7, 9, 9}; dbias = {2, 2} */
  const double gw[6] = {5, 5, 7, 7, 9, 9}, gb[2] = {2, 2};
  check_shape(w->grad, sw, 2);
  check_values(w->grad, gw, 6);
  check_shape(bias->grad, sb, 1);
  check_values(bias->grad, gb, 2);
  ember_tensor_release(s);
  ember_tensor_release(z);
  ember_tensor_release(y);
  ember_tensor_release(bias);
  ember_tensor_release(w);
  ember_tensor_release(x);
}

static void test_sum_to_shape(void) {
  int64_t s[3] = {2, 3, 4};
  ember_tensor_t *g = ember_tensor_full(s, 3, EMBER_FLOAT32, 1);
  int64_t target[2] = {3, 1};
  ember_tensor_t *r = ember_sum_to_shape(g, target, 2);
  check_shape(r, target, 2);
  const double want[3] = {8, 8, 8};
  check_values(r, want, 3);
  ember_tensor_release(r);
  ember_tensor_release(g);
}

static void test_gather_scatter_zero_based(void) {
  int64_t s23[2] = {2, 3}, s21[2] = {2, 1};
  const double v[6] = {1, 2, 3, 4, 5, 6}, vi[2] = {2, 0};
  ember_tensor_t *x = make(s23, 2, EMBER_FLOAT32, v, NULL);
  ember_tensor_t *idx = make(s21, 2, EMBER_INT64, vi, NULL);
  ember_tensor_t *g = ember_tensor_gather(x, 1, idx);
  const double wg[2] = {3, 4};
  check_values(g, wg, 2);
  ember_tensor_t *sc = ember_tensor_scatter(x, 1, idx, g, 0);
  const double ws[6] = {1, 2, 3, 4, 5, 6};
  check_values(sc, ws, 6);
  ember_tensor_set(idx, 0, 3); /* out of range */
  CHECK(ember_tensor_gather(x, 1, idx) == NULL);
  CHECK_MSG("index 4");
  ember_tensor_release(sc);
  ember_tensor_release(g);
  ember_tensor_release(idx);
  ember_tensor_release(x);
}

static void test_in_place_on_leaf_refused(void) {
  int64_t s2[1] = {2};
  ember_tensor_t *x = ember_tensor_full(s2, 1, EMBER_FLOAT32, 1);
  x->requires_grad = 1;
  CHECK(ember_tensor_fill_(x, 2) < 0);
  CHECK_MSG("leaf");
  int was = ember_set_grad_enabled(0);
  CHECK_EQ(ember_tensor_fill_(x, 2), 0);
  ember_set_grad_enabled(was);
  CHECK(ember_tensor_get(x, 0) == 2);
  ember_tensor_release(x);
}

static void test_graph_released_with_tensors(void) {
  /* A long chain: releasing the root frees every node without recursion,
  ** and every storage (counted) goes. */
  const ember_device_t *dev = counting_device();
  int64_t s1[1] = {1};
  const double one[1] = {1};
  ember_tensor_t *x = make(s1, 1, EMBER_FLOAT32, one, dev);
  x->requires_grad = 1;
  ember_tensor_t *y = x;
  ember_tensor_retain(y);
  for (int i = 0; i < 20000; i++) {
    ember_tensor_t *next = ember_tensor_unary(EMBER_OP_AXPB, y, 1, 0);
    CHECK(next != NULL);
    ember_tensor_release(y);
    y = next;
  }
  ember_tensor_release(y);
  ember_tensor_release(x);
  CHECK_EQ(live_storages, 0);
}

static void test_empty_reshape_and_sum(void) {
  /* PyTorch: torch.zeros(0).reshape(-1) has shape [0]; its sum is 0. */
  int64_t s0[1] = {0}, minus_one[1] = {-1};
  ember_tensor_t *empty = ember_tensor_new(s0, 1, EMBER_FLOAT32, NULL);
  ember_tensor_t *flat = ember_tensor_reshape(empty, minus_one, 1, 0);
  if (flat == NULL) fprintf(stderr, "reshape: %s\n", ember_tensor_error());
  CHECK(flat != NULL);
  check_shape(flat, s0, 1);
  ember_tensor_t *sum = ember_tensor_reduce(EMBER_REDUCE_SUM, empty,
                                            EMBER_ALL_DIMS, 0, NULL);
  CHECK(sum != NULL);
  CHECK(ember_tensor_get(sum, 0) == 0);
  ember_tensor_release(sum);
  ember_tensor_release(flat);
  ember_tensor_release(empty);
}

/* Backward keeps every tensor on its device: the seed gradient and the
** zeros some backward formulas make must come from the root's device. */
static void test_backward_on_another_device(void) {
  const ember_device_t *dev = counting_device();
  int64_t s3[1] = {3};
  const double va[3] = {1, 2, 3}, vb[3] = {4, 5, 6};
  ember_tensor_t *a = make(s3, 1, EMBER_FLOAT32, va, dev);
  ember_tensor_t *b = make(s3, 1, EMBER_FLOAT32, vb, dev);
  a->requires_grad = 1;
  ember_tensor_t *p = ember_tensor_binary(EMBER_OP_MUL, a, b);
  ember_tensor_t *s = ember_tensor_reduce(EMBER_REDUCE_SUM, p, EMBER_ALL_DIMS,
                                          0, NULL);
  int rc = ember_backward(s, NULL, 0);
  if (rc < 0) fprintf(stderr, "backward: %s\n", ember_tensor_error());
  CHECK_EQ(rc, 0);
  CHECK(a->grad != NULL);
  CHECK(a->grad->storage->device == dev);
  check_values(a->grad, vb, 3);
  ember_tensor_release(s);
  ember_tensor_release(p);
  ember_tensor_release(a);
  ember_tensor_release(b);
  CHECK_EQ(live_storages, 0);
}

/* Each test runs in a child process, so that a failed check (an abort)
** reports that test and the others still run; the exit status is the number
** of failed tests. */
static const check_test_t tests[] = {
    CHECK_TEST(test_creation),
    CHECK_TEST(test_dtypes),
    CHECK_TEST(test_broadcast_add),
    CHECK_TEST(test_bad_broadcast_message),
    CHECK_TEST(test_reshape_view_or_copy),
    CHECK_TEST(test_views_share_storage),
    CHECK_TEST(test_sum_over_dim),
    CHECK_TEST(test_sgemm),
    CHECK_TEST(test_backward_mul_sum),
    CHECK_TEST(test_backward_broadcast_and_matmul),
    CHECK_TEST(test_sum_to_shape),
    CHECK_TEST(test_gather_scatter_zero_based),
    CHECK_TEST(test_in_place_on_leaf_refused),
    CHECK_TEST(test_graph_released_with_tensors),
    CHECK_TEST(test_empty_reshape_and_sum),
    CHECK_TEST(test_backward_on_another_device),
};

int main(void) {
  size_t count = sizeof tests / sizeof tests[0];
  int failed = 0;
  for (size_t i = 0; i < count; i++) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
      perror("fork");
      return 1;
    }
    if (pid == 0) {
      tests[i].fn();
      exit(0);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
    }
    int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    printf("%s %zu - %s\n", ok ? "ok" : "not ok", i + 1, tests[i].name);
    fflush(stdout);
    failed += !ok;
  }
  printf("%zu passed, %d failed\n", count - (size_t)failed, failed);
  return failed;
}
