/*
** Conversions and in-place updates: to(dtype), contiguous, copy_, fill_,
** the op= family used by optimizers, and allclose. In-place ops are not
** recorded by autograd; ember__begin_in_place refuses them where autograd
** would be misled and bumps the storage's version.
*/
#include <math.h>

#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "tensor_grad.h"

/* ---- Conversion ------------------------------------------------------------------------- */

static int copy_backward(ember_node_t *node, const ember_tensor_t *g,
                         ember_tensor_t **grads_in) {
  grads_in[0] = (ember_tensor_t *)g;
  ember_tensor_retain(grads_in[0]);
  return 0; /* the engine converts the dtype back */
}

static const ember_node_kind_t to_copy_kind = {"ToCopyBackward0",
                                               copy_backward};
static const ember_node_kind_t clone_kind = {"CloneBackward0", copy_backward};

ember_tensor_t *ember_tensor_to(const ember_tensor_t *t, ember_dtype_t dtype,
                                int copy) {
  if (dtype == t->dtype && !copy) {
    ember_tensor_retain((ember_tensor_t *)t);
    return (ember_tensor_t *)t;
  }
  ember_tensor_t *out = ember_tensor_new(t->shape, t->ndim, dtype,
                                         t->storage->device);
  if (out == NULL) return NULL;
  if (out->storage->device->copy(out, t) < 0) {
    ember_tensor_release(out);
    return NULL;
  }
  if (ember_dtype_is_float(dtype) && ember_dtype_is_float(t->dtype) &&
      ember_autograd_needed(&t, 1)) {
    if (ember_autograd_record(out, dtype == t->dtype ? &clone_kind
                                                     : &to_copy_kind,
                              &t, 1) == NULL) {
      ember_tensor_release(out);
      return NULL;
    }
  }
  return out;
}

/* ---- Between devices ------------------------------------------------------------------- */

/* The device with this index: the CPU for -1, else a CUDA device. */
static const ember_device_t *device_at(int64_t index) {
  return index < 0 ? &ember_cpu_device : ember_cuda_device((int)index);
}

static int device_copy_backward(ember_node_t *node, const ember_tensor_t *g,
                                ember_tensor_t **grads_in) {
  const ember_device_t *home = device_at(node->ints[0]);
  grads_in[0] = home != NULL ? ember_tensor_to_device(g, home, g->dtype, 0)
                             : NULL;
  return grads_in[0] != NULL ? 0 : EMBER_EFAILED;
}

static const ember_node_kind_t device_copy_kind = {"ToCopyBackward0",
                                                   device_copy_backward};

/* Moves the bytes of contiguous src into contiguous dst (same shape and
** dtype, another device); through a host buffer between two devices. */
static int move_bytes(ember_tensor_t *dst, const ember_tensor_t *src) {
  const ember_device_t *from = src->storage->device, *to = dst->storage->device;
  size_t nbytes = (size_t)ember_tensor_numel(src) * ember_dtype_size(src->dtype);
  if (nbytes == 0) return 0;
  if (from->is_host) {
    return to->from_host(to, ember_tensor_data(dst), ember_tensor_data(src),
                         nbytes);
  }
  if (to->is_host) {
    return from->to_host(from, ember_tensor_data(dst), ember_tensor_data(src),
                         nbytes);
  }
  void *staging = malloc(nbytes);
  if (staging == NULL) {
    return ember__tensor_fail(EMBER_ENOMEM, "out of memory staging %zu bytes "
                              "from %s to %s", nbytes, from->name, to->name);
  }
  int rc = from->to_host(from, staging, ember_tensor_data(src), nbytes);
  if (rc == 0) rc = to->from_host(to, ember_tensor_data(dst), staging, nbytes);
  free(staging);
  return rc;
}

/* A contiguous copy of t on `device`, in t's dtype, not recorded. */
static ember_tensor_t *moved_to(const ember_tensor_t *t,
                                const ember_device_t *device) {
  int was = ember_set_grad_enabled(0);
  ember_tensor_t *src = ember_tensor_contiguous(t);
  ember_set_grad_enabled(was);
  if (src == NULL) return NULL;
  ember_tensor_t *out = ember_tensor_new(t->shape, t->ndim, t->dtype, device);
  if (out != NULL && move_bytes(out, src) < 0) {
    ember_tensor_release(out);
    out = NULL;
  }
  ember_tensor_release(src);
  return out;
}

ember_tensor_t *ember_tensor_to_device(const ember_tensor_t *t,
                                       const ember_device_t *device,
                                       ember_dtype_t dtype, int copy) {
  if (device == NULL || ember_device_same(device, t->storage->device)) {
    return ember_tensor_to(t, dtype, copy);
  }
  ember_tensor_t *out = moved_to(t, device);
  if (out != NULL && dtype != t->dtype) {
    int was = ember_set_grad_enabled(0);
    ember_tensor_t *converted = ember_tensor_to(out, dtype, 0);
    ember_set_grad_enabled(was);
    ember_tensor_release(out);
    out = converted;
  }
  if (out != NULL && ember_dtype_is_float(dtype) &&
      ember_dtype_is_float(t->dtype) && ember_autograd_needed(&t, 1)) {
    ember_node_t *node = ember_autograd_record(out, &device_copy_kind, &t, 1);
    if (node == NULL) {
      ember_tensor_release(out);
      return NULL;
    }
    node->ints[0] = t->storage->device->index;
  }
  return out;
}

ember_tensor_t *ember_tensor_contiguous(const ember_tensor_t *t) {
  return ember_tensor_to(t, t->dtype, !ember_tensor_is_contiguous(t));
}

ember_tensor_t *ember_tensor_copy_detached(const ember_tensor_t *t) {
  int was = ember_set_grad_enabled(0);
  ember_tensor_t *copy = ember_tensor_to(t, t->dtype, 1);
  ember_set_grad_enabled(was);
  return copy;
}

/* ---- In place ------------------------------------------------------------------------------ */

/* A destination that repeats an element (an expanded view) would be
** written several times from different sources. */
static int check_distinct_elements(const ember_tensor_t *dst,
                                   const char *what) {
  for (int i = 0; i < dst->ndim; i++) {
    if (dst->strides[i] == 0 && dst->shape[i] > 1) {
      return ember__tensor_fail(EMBER_EINVAL,
                                "%s: the destination is an expanded view "
                                "whose elements share memory; clone() it "
                                "first",
                                what);
    }
  }
  return 0;
}

/* src itself, or a copy of it when it shares memory with dst, so that
** reading and writing do not overlap (a new reference either way). */
static ember_tensor_t *apart_from(const ember_tensor_t *src,
                                  const ember_tensor_t *dst) {
  if (src->storage == dst->storage) return ember_tensor_copy_detached(src);
  ember_tensor_retain((ember_tensor_t *)src);
  return (ember_tensor_t *)src;
}

int ember__begin_in_place(ember_tensor_t *dst, const char *what) {
  if (ember_grad_enabled() && dst->grad_fn != NULL) {
    return ember__tensor_fail(
        EMBER_EINVAL,
        "%s: this tensor is part of a recorded graph (%s) and changing it in "
        "place would make its gradients wrong; use the out-of-place form "
        "(y = y * 2 rather than y:mul_(2)) or detach() it first",
        what, dst->grad_fn->kind->name);
  }
  if (ember_grad_enabled() && dst->requires_grad) {
    return ember__tensor_fail(
        EMBER_EINVAL,
        "%s: a leaf tensor that requires grad cannot be changed in place "
        "while grad is enabled (use no_grad)",
        what);
  }
  dst->storage->version++;
  return 0;
}

int ember_tensor_copy_(ember_tensor_t *dst, const ember_tensor_t *src) {
  char a[128], b[128];
  if (check_distinct_elements(dst, "copy_") < 0) return EMBER_EINVAL;
  if (!ember_device_same(src->storage->device, dst->storage->device)) {
    ember_tensor_t *here = moved_to(src, dst->storage->device);
    if (here == NULL) return EMBER_ENOMEM;
    int rc = ember_tensor_copy_(dst, here);
    ember_tensor_release(here);
    return rc;
  }
  ember_tensor_t *apart = apart_from(src, dst);
  if (apart == NULL) return EMBER_ENOMEM;
  ember_tensor_t *v = ember_tensor_expand(apart, dst->shape, dst->ndim);
  ember_tensor_release(apart);
  if (v == NULL) {
    return ember__tensor_fail(
        EMBER_EINVAL, "copy_: source of shape %s does not broadcast to %s",
        ember_shape_string(src->shape, src->ndim, a, sizeof a),
        ember_shape_string(dst->shape, dst->ndim, b, sizeof b));
  }
  int rc = ember__begin_in_place(dst, "copy_");
  if (rc == 0) rc = dst->storage->device->copy(dst, v);
  ember_tensor_release(v);
  return rc;
}

int ember_tensor_fill_(ember_tensor_t *dst, double value) {
  if (ember__begin_in_place(dst, "fill_") < 0) return EMBER_EINVAL;
  return dst->storage->device->fill(dst, value);
}

/* src in dst's dtype, times alpha, broadcast to dst's shape. */
static ember_tensor_t *operand_for(const ember_tensor_t *dst,
                                   const ember_tensor_t *src, double alpha) {
  char a[128], b[128];
  int was = ember_set_grad_enabled(0);
  ember_tensor_t *s = apart_from(src, dst);
  ember_tensor_t *typed = s != NULL ? ember_tensor_to(s, dst->dtype, 0) : NULL;
  ember_tensor_release(s);
  s = typed;
  if (s != NULL && alpha != 1) {
    ember_tensor_t *scaled = ember_tensor_unary(EMBER_OP_AXPB, s, alpha, 0);
    ember_tensor_release(s);
    s = scaled;
  }
  ember_tensor_t *v = s != NULL ? ember_tensor_expand(s, dst->shape, dst->ndim)
                                : NULL;
  ember_set_grad_enabled(was);
  if (s != NULL && v == NULL) {
    ember__tensor_fail(EMBER_EINVAL,
                       "in-place op: shape %s does not broadcast to %s",
                       ember_shape_string(src->shape, src->ndim, a, sizeof a),
                       ember_shape_string(dst->shape, dst->ndim, b, sizeof b));
  }
  ember_tensor_release(s);
  return v;
}

int ember_tensor_binary_(ember_binary_op_t op, ember_tensor_t *dst,
                         const ember_tensor_t *src, double alpha) {
  if (is_comparison(op)) {
    return ember__tensor_fail(EMBER_EINVAL, "comparisons have no in-place form");
  }
  if (ember__check_devices("in-place op", dst, src) < 0) return EMBER_EINVAL;
  if (!ember_dtype_is_float(dst->dtype) &&
      (ember_dtype_is_float(src->dtype) || op == EMBER_OP_DIV)) {
    return ember__tensor_fail(EMBER_EINVAL,
                              "in-place op: a %s result cannot be stored in "
                              "a %s tensor",
                              ember_dtype_name(EMBER_FLOAT32),
                              ember_dtype_name(dst->dtype));
  }
  if (dst->dtype == EMBER_BOOL) { /* logical or / and, as out of place */
    if (op == EMBER_OP_ADD) op = EMBER_OP_MAXIMUM;
    else if (op == EMBER_OP_MUL) op = EMBER_OP_MINIMUM;
    else if (op != EMBER_OP_MAXIMUM && op != EMBER_OP_MINIMUM) {
      return ember__tensor_fail(EMBER_EINVAL, "in-place op: not defined for a "
                                              "bool tensor");
    }
  }
  if (check_distinct_elements(dst, "in-place op") < 0) return EMBER_EINVAL;
  ember_tensor_t *v = operand_for(dst, src, alpha);
  if (v == NULL) return EMBER_EINVAL;
  int rc = ember__begin_in_place(dst, "in-place op");
  if (rc == 0) rc = dst->storage->device->binary(op, dst, dst, v);
  ember_tensor_release(v);
  return rc;
}

int ember_tensor_unary_(ember_unary_op_t op, ember_tensor_t *dst, double arg0,
                        double arg1) {
  if (op == EMBER_OP_NOT ||
      (!ember_dtype_is_float(dst->dtype) && !keeps_integers(op))) {
    return ember__tensor_fail(EMBER_EINVAL, "in-place op: not defined for a "
                                            "%s tensor",
                              ember_dtype_name(dst->dtype));
  }
  if (check_distinct_elements(dst, "in-place op") < 0 ||
      ember__begin_in_place(dst, "in-place op") < 0) {
    return EMBER_EINVAL;
  }
  return dst->storage->device->unary(op, dst, dst, arg0, arg1);
}

int ember_tensor_addc_(ember_tensor_t *dst, const ember_tensor_t *a,
                       const ember_tensor_t *b, double value, int div) {
  int was = ember_set_grad_enabled(0);
  ember_tensor_t *t = ember_tensor_binary(div ? EMBER_OP_DIV : EMBER_OP_MUL, a,
                                          b);
  ember_set_grad_enabled(was);
  if (t == NULL) return EMBER_EINVAL;
  int rc = ember_tensor_binary_(EMBER_OP_ADD, dst, t, value);
  ember_tensor_release(t);
  return rc;
}

int ember_tensor_allclose(const ember_tensor_t *a, const ember_tensor_t *b,
                          double rtol, double atol, int *result) {
  *result = 0;
  if (ember__check_devices("allclose", a, b) < 0) return EMBER_EINVAL;
  if (!ember_tensor_same_shape(a, b)) return 0;
  if (!a->storage->device->is_host || !b->storage->device->is_host) {
    ember_tensor_t *ha = ember_tensor_to_device(a, &ember_cpu_device, a->dtype, 0);
    ember_tensor_t *hb = ember_tensor_to_device(b, &ember_cpu_device, b->dtype, 0);
    int rc = ha != NULL && hb != NULL
                 ? ember_tensor_allclose(ha, hb, rtol, atol, result)
                 : EMBER_ENOMEM;
    ember_tensor_release(ha);
    ember_tensor_release(hb);
    return rc;
  }
  int64_t n = ember_tensor_numel(a);
  for (int64_t i = 0; i < n; i++) {
    double x = ember_tensor_get(a, i), y = ember_tensor_get(b, i);
    if (x == y) continue; /* also equal infinities */
    if (!(fabs(x - y) <= atol + rtol * fabs(y))) return 0;
  }
  *result = 1;
  return 0;
}
