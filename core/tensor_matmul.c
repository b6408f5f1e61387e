/*
** Matrix products: addmm (one GEMM, the workhorse of Linear layers), mm and
** matmul with PyTorch's 1-D, 2-D and batched rules, with their backward.
*/
#include <stdlib.h>
#include <string.h>

#include "tensor_grad.h"

/* ---- Matrix products ---------------------------------------------------------------- */

static int check_matrix_dtypes(const ember_tensor_t *a,
                               const ember_tensor_t *b, const char *what) {
  if (a->dtype != b->dtype) {
    return ember__tensor_fail(EMBER_EINVAL,
                              "%s: expected one dtype, found %s and %s", what,
                              ember_dtype_name(a->dtype),
                              ember_dtype_name(b->dtype));
  }
  return 0;
}

static int check_mm_shapes(const ember_tensor_t *a, const ember_tensor_t *b,
                           const char *what) {
  char sa[128], sb[128];
  if (a->ndim != 2 || b->ndim != 2 || a->shape[1] != b->shape[0]) {
    return ember__tensor_fail(
        EMBER_EINVAL, "%s: shapes %s and %s cannot be multiplied", what,
        ember_shape_string(a->shape, a->ndim, sa, sizeof sa),
        ember_shape_string(b->shape, b->ndim, sb, sizeof sb));
  }
  if (ember__check_devices(what, a, b) < 0) return EMBER_EINVAL;
  return check_matrix_dtypes(a, b, what);
}

/* Whether m is the transpose of a contiguous matrix (and not a column). */
static int is_transposed_matrix(const ember_tensor_t *m) {
  return m->ndim == 2 && m->shape[1] > 1 && m->strides[0] == 1 &&
         m->strides[1] == m->shape[0];
}

/* addmm's backward: bias gets beta * g, a gets alpha * g @ b^T, b gets
** alpha * a^T @ g (bias's broadcasting is undone by the engine). */
static int addmm_backward(ember_node_t *node, const ember_tensor_t *g,
                          ember_tensor_t **grads_in) {
  const ember_tensor_t *a = node->saved[0], *b = node->saved[1];
  double beta = node->reals[0], alpha = node->reals[1];
  int has_bias = (int)node->ints[0];
  int ia = has_bias ? 1 : 0;
  scope_t s = {0};
  if (has_bias && wants(node, 0)) {
    grads_in[0] = beta == 1 ? ember_tensor_to(g, g->dtype, 0)
                            : bin_s(EMBER_OP_MUL, g, beta);
  }
  if (wants(node, ia)) {
    ember_tensor_t *bt = keep(&s, ember_tensor_transpose(b, 0, 1));
    grads_in[ia] = bt != NULL ? ember_tensor_addmm(NULL, g, bt, 0, alpha) : NULL;
  }
  if (wants(node, ia + 1) && is_transposed_matrix(b)) {
    /* b is W^T of a contiguous W (nn.Linear): make W's gradient g^T @ a,
    ** contiguous, and hand back its transpose; a^T @ g would come back
    ** transposed and cost W a strided copy as large as itself. */
    ember_tensor_t *gt = keep(&s, ember_tensor_transpose(g, 0, 1));
    ember_tensor_t *gw =
        gt != NULL ? keep(&s, ember_tensor_addmm(NULL, gt, a, 0, alpha)) : NULL;
    grads_in[ia + 1] = gw != NULL ? ember_tensor_transpose(gw, 0, 1) : NULL;
  } else if (wants(node, ia + 1)) {
    ember_tensor_t *at = keep(&s, ember_tensor_transpose(a, 0, 1));
    grads_in[ia + 1] =
        at != NULL ? ember_tensor_addmm(NULL, at, g, 0, alpha) : NULL;
  }
  scope_end(&s);
  return all_set(node, grads_in);
}

static const ember_node_kind_t addmm_kind = {"AddmmBackward0",
                                             addmm_backward};
static const ember_node_kind_t mm_kind = {"MmBackward0", addmm_backward};

ember_tensor_t *ember_tensor_addmm(const ember_tensor_t *bias,
                                   const ember_tensor_t *a,
                                   const ember_tensor_t *b, double beta,
                                   double alpha) {
  if (check_mm_shapes(a, b, bias != NULL ? "addmm" : "mm") < 0 ||
      ember__check_devices("addmm", bias, a) < 0) {
    return NULL;
  }
  int64_t shape[2] = {a->shape[0], b->shape[1]};
  ember_tensor_t *out = ember_tensor_new(shape, 2, a->dtype,
                                         a->storage->device);
  if (out == NULL) return NULL;
  int rc = 0;
  int was = ember_set_grad_enabled(0);
  if (bias != NULL && beta != 0) {
    rc = ember_tensor_copy_(out, bias);
    if (rc == 0 && beta != 1) rc = ember_tensor_unary_(EMBER_OP_AXPB, out, beta, 0);
  }
  ember_set_grad_enabled(was);
  if (rc == 0) {
    rc = out->storage->device->gemm(out, a, b, alpha,
                                    bias != NULL && beta != 0 ? 1.0 : 0.0);
  }
  const ember_tensor_t *inputs[3] = {bias, a, b};
  const ember_tensor_t *const *in = bias != NULL ? inputs : inputs + 1;
  int n = bias != NULL ? 3 : 2;
  if (rc == 0 && ember_dtype_is_float(a->dtype) &&
      ember_autograd_needed(in, n)) {
    ember_node_t *node = ember_autograd_record(
        out, bias != NULL ? &addmm_kind : &mm_kind, in, n);
    rc = node != NULL ? 0 : EMBER_ENOMEM;
    if (rc == 0) {
      node->ints[0] = bias != NULL;
      node->reals[0] = beta;
      node->reals[1] = alpha;
      rc = ember_node_save(node, 0, a);
      if (rc == 0) rc = ember_node_save(node, 1, b);
    }
  }
  if (rc < 0) {
    ember_tensor_release(out);
    return NULL;
  }
  return out;
}

/* bmm's backward: dA = dC @ B^T, dB = A^T @ dC, batch by batch. */
static int bmm_backward(ember_node_t *node, const ember_tensor_t *g,
                        ember_tensor_t **grads_in) {
  const ember_tensor_t *a = node->saved[0], *b = node->saved[1];
  ember_tensor_t *bt = ember_tensor_transpose(b, 1, 2);
  ember_tensor_t *at = ember_tensor_transpose(a, 1, 2);
  grads_in[0] = bt != NULL ? ember_tensor_matmul(g, bt) : NULL;
  grads_in[1] = at != NULL ? ember_tensor_matmul(at, g) : NULL;
  ember_tensor_release(bt);
  ember_tensor_release(at);
  return grads_in[0] != NULL && grads_in[1] != NULL ? 0 : EMBER_ENOMEM;
}

static const ember_node_kind_t bmm_kind = {"BmmBackward0", bmm_backward};

/* (B, m, k) @ (B, k, n) in one call of a device's batched GEMM. */
static ember_tensor_t *bmm_on_device(const ember_tensor_t *a3,
                                     const ember_tensor_t *b3) {
  int64_t shape[3] = {a3->shape[0], a3->shape[1], b3->shape[2]};
  ember_tensor_t *out = ember_tensor_new(shape, 3, a3->dtype,
                                         a3->storage->device);
  if (out == NULL) return NULL;
  int rc = out->storage->device->gemm_batched(out, a3, b3, 1.0, 0.0);
  const ember_tensor_t *in[2] = {a3, b3};
  if (rc == 0 && ember_autograd_needed(in, 2)) {
    ember_node_t *node = ember_autograd_record(out, &bmm_kind, in, 2);
    rc = node != NULL ? ember_node_save(node, 0, a3) : EMBER_ENOMEM;
    if (rc == 0) rc = ember_node_save(node, 1, b3);
  }
  if (rc < 0) {
    ember_tensor_release(out);
    return NULL;
  }
  return out;
}

/* Batched product: both sides broadcast over their leading dims; one
** batched GEMM where the device has one, else one mm per matrix pair,
** stacked. Differentiable through the ops it is made of. */
static ember_tensor_t *batched_matmul(const ember_tensor_t *a,
                                      const ember_tensor_t *b) {
  char sa[128], sb[128];
  int64_t shape[EMBER_MAX_DIMS];
  int nb = (a->ndim > b->ndim ? a->ndim : b->ndim) - 2;
  for (int i = 0; i < nb; i++) {
    int ja = i - (nb - (a->ndim - 2)), jb = i - (nb - (b->ndim - 2));
    int64_t x = ja >= 0 ? a->shape[ja] : 1, y = jb >= 0 ? b->shape[jb] : 1;
    if (x != y && x != 1 && y != 1) {
      ember__tensor_fail(EMBER_EINVAL,
                         "matmul: batch dimensions of %s and %s do not "
                         "broadcast",
                         ember_shape_string(a->shape, a->ndim, sa, sizeof sa),
                         ember_shape_string(b->shape, b->ndim, sb, sizeof sb));
      return NULL;
    }
    shape[i] = x == 1 ? y : x;
  }
  int64_t batch = 1;
  for (int i = 0; i < nb; i++) batch *= shape[i];
  int64_t ea[EMBER_MAX_DIMS], eb[EMBER_MAX_DIMS], flat_a[3], flat_b[3];
  memcpy(ea, shape, sizeof(int64_t) * (size_t)nb);
  memcpy(eb, shape, sizeof(int64_t) * (size_t)nb);
  ea[nb] = a->shape[a->ndim - 2];
  ea[nb + 1] = a->shape[a->ndim - 1];
  eb[nb] = b->shape[b->ndim - 2];
  eb[nb + 1] = b->shape[b->ndim - 1];
  flat_a[0] = flat_b[0] = batch;
  flat_a[1] = ea[nb];
  flat_a[2] = ea[nb + 1];
  flat_b[1] = eb[nb];
  flat_b[2] = eb[nb + 1];
  scope_t s = {0};
  ember_tensor_t *a3 = keep(&s, ember_tensor_expand(a, ea, nb + 2));
  ember_tensor_t *b3 = keep(&s, ember_tensor_expand(b, eb, nb + 2));
  a3 = a3 != NULL ? keep(&s, ember_tensor_reshape(a3, flat_a, 3, 0)) : NULL;
  b3 = b3 != NULL ? keep(&s, ember_tensor_reshape(b3, flat_b, 3, 0)) : NULL;
  if (a3 != NULL && b3 != NULL && batch > 0 &&
      a->storage->device->gemm_batched != NULL &&
      ember_dtype_is_float(a->dtype) &&
      check_matrix_dtypes(a, b, "matmul") == 0 &&
      ember__check_devices("matmul", a, b) == 0) {
    ember_tensor_t *out3 = bmm_on_device(a3, b3);
    shape[nb] = ea[nb];
    shape[nb + 1] = eb[nb + 1];
    ember_tensor_t *out = out3 != NULL
        ? ember_tensor_reshape(out3, shape, nb + 2, 0) : NULL;
    ember_tensor_release(out3);
    scope_end(&s);
    return out;
  }
  ember_tensor_t **parts = calloc((size_t)(batch > 0 ? batch : 1),
                                  sizeof *parts);
  ember_tensor_t *out = NULL;
  int ok = a3 != NULL && b3 != NULL && parts != NULL && batch > 0;
  for (int64_t i = 0; ok && i < batch; i++) {
    ember_tensor_t *ai = ember_tensor_select(a3, 0, i);
    ember_tensor_t *bi = ember_tensor_select(b3, 0, i);
    parts[i] = ai != NULL && bi != NULL ? ember_tensor_addmm(NULL, ai, bi, 0, 1)
                                        : NULL;
    ok = parts[i] != NULL;
    ember_tensor_release(ai);
    ember_tensor_release(bi);
  }
  if (ok) {
    ember_tensor_t *stacked = ember_tensor_stack(parts, (int)batch, 0);
    shape[nb] = ea[nb];
    shape[nb + 1] = eb[nb + 1];
    out = stacked != NULL ? ember_tensor_reshape(stacked, shape, nb + 2, 0)
                          : NULL;
    ember_tensor_release(stacked);
  } else if (batch == 0 && a3 != NULL && b3 != NULL) {
    shape[nb] = ea[nb];
    shape[nb + 1] = eb[nb + 1];
    out = ember_tensor_new(shape, nb + 2, a->dtype, a->storage->device);
  }
  for (int64_t i = 0; parts != NULL && i < batch; i++) {
    ember_tensor_release(parts[i]);
  }
  free(parts);
  scope_end(&s);
  return out;
}

ember_tensor_t *ember_tensor_matmul(const ember_tensor_t *a,
                                    const ember_tensor_t *b) {
  char sa[128], sb[128];
  if (a->ndim == 0 || b->ndim == 0) {
    ember__tensor_fail(EMBER_EINVAL, "matmul: both arguments need at least "
                                     "one dimension, got shapes %s and %s",
                       ember_shape_string(a->shape, a->ndim, sa, sizeof sa),
                       ember_shape_string(b->shape, b->ndim, sb, sizeof sb));
    return NULL;
  }
  if (a->shape[a->ndim - 1] != b->shape[b->ndim > 1 ? b->ndim - 2 : 0]) {
    ember__tensor_fail(EMBER_EINVAL, "matmul: shapes %s and %s cannot be "
                                     "multiplied",
                       ember_shape_string(a->shape, a->ndim, sa, sizeof sa),
                       ember_shape_string(b->shape, b->ndim, sb, sizeof sb));
    return NULL;
  }
  if (a->ndim <= 2 && b->ndim <= 2) {
    scope_t s = {0};
    const ember_tensor_t *a2 = a->ndim == 1 ? keep(&s, ember_tensor_unsqueeze(a, 0)) : a;
    const ember_tensor_t *b2 = b->ndim == 1 ? keep(&s, ember_tensor_unsqueeze(b, 1)) : b;
    ember_tensor_t *out = a2 != NULL && b2 != NULL
                              ? ember_tensor_addmm(NULL, a2, b2, 0, 1)
                              : NULL;
    if (out != NULL && (a->ndim == 1 || b->ndim == 1)) {
      int64_t shape[2];
      int nd = 0;
      if (a->ndim == 2) shape[nd++] = a->shape[0];
      if (b->ndim == 2) shape[nd++] = b->shape[1];
      ember_tensor_t *r = ember_tensor_reshape(out, shape, nd, 0);
      ember_tensor_release(out);
      out = r;
    }
    scope_end(&s);
    return out;
  }
  scope_t s = {0};
  const ember_tensor_t *a2 = a->ndim == 1 ? keep(&s, ember_tensor_unsqueeze(a, 0)) : a;
  const ember_tensor_t *b2 = b->ndim == 1 ? keep(&s, ember_tensor_unsqueeze(b, 1)) : b;
  ember_tensor_t *out = a2 != NULL && b2 != NULL ? batched_matmul(a2, b2) : NULL;
  if (out != NULL && (a->ndim == 1 || b->ndim == 1)) {
    ember_tensor_t *r = ember_tensor_squeeze(out, a->ndim == 1 ? -2 : -1, 0);
    ember_tensor_release(out);
    out = r;
  }
  scope_end(&s);
  return out;
}
