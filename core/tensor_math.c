/*
** Arithmetic ops: broadcasting, dtype promotion, element-wise math,
** reductions and softmax, each with its backward.
*/
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tensor_grad.h"

/* ---- Broadcasting --------------------------------------------------------------- */

int ember__broadcast(const ember_tensor_t *const *in, int n,
                     ember_tensor_t **views) {
  int64_t shape[EMBER_MAX_DIMS];
  int ndim = 0;
  for (int k = 0; k < n; k++) {
    if (in[k]->ndim > ndim) ndim = in[k]->ndim;
  }
  for (int i = 0; i < ndim; i++) {
    shape[i] = 1;
    for (int k = 0; k < n; k++) {
      int j = i - (ndim - in[k]->ndim);
      int64_t size = j >= 0 ? in[k]->shape[j] : 1;
      if (size == shape[i] || size == 1) continue;
      if (shape[i] != 1) {
        char a[128], b[128];
        return ember__tensor_fail(
            EMBER_EINVAL,
            "shapes %s and %s cannot be broadcast together (dimension %d: %lld "
            "vs %lld)",
            ember_shape_string(in[0]->shape, in[0]->ndim, a, sizeof a),
            ember_shape_string(in[k]->shape, in[k]->ndim, b, sizeof b),
            i + 1, (long long)shape[i], (long long)size);
      }
      shape[i] = size;
    }
  }
  for (int k = 0; k < n; k++) {
    int64_t strides[EMBER_MAX_DIMS];
    for (int i = 0; i < ndim; i++) {
      int j = i - (ndim - in[k]->ndim);
      strides[i] = j >= 0 && in[k]->shape[j] == shape[i] ? in[k]->strides[j] : 0;
    }
    views[k] = ember_tensor_view_of(in[k], shape, strides, ndim,
                                    in[k]->offset);
    if (views[k] == NULL) {
      for (int i = 0; i < k; i++) ember_tensor_release(views[i]);
      return EMBER_ENOMEM;
    }
  }
  return 0;
}

/* ---- Binary ops ------------------------------------------------------------------ */

static int binary_backward(ember_node_t *node, const ember_tensor_t *g,
                           ember_tensor_t **grads_in) {
  const ember_tensor_t *a = node->saved[0], *b = node->saved[1];
  scope_t s = {0};
  switch ((ember_binary_op_t)node->ints[0]) {
  case EMBER_OP_ADD:
  case EMBER_OP_SUB:
    if (wants(node, 0)) grads_in[0] = ember_tensor_to(g, g->dtype, 0);
    if (wants(node, 1)) {
      grads_in[1] = node->ints[0] == EMBER_OP_ADD
                        ? ember_tensor_to(g, g->dtype, 0)
                        : un(EMBER_OP_NEG, g, 0, 0);
    }
    break;
  case EMBER_OP_MUL:
    if (wants(node, 0)) grads_in[0] = bin(EMBER_OP_MUL, g, b);
    if (wants(node, 1)) grads_in[1] = bin(EMBER_OP_MUL, g, a);
    break;
  case EMBER_OP_DIV:
    if (wants(node, 0)) grads_in[0] = bin(EMBER_OP_DIV, g, b);
    if (wants(node, 1)) { /* -g * a / b^2 */
      ember_tensor_t *q = keep(&s, bin(EMBER_OP_DIV, a, b));
      ember_tensor_t *q2 = keep(&s, bin(EMBER_OP_DIV, q, b));
      grads_in[1] = un(EMBER_OP_NEG, keep(&s, bin(EMBER_OP_MUL, g, q2)), 0, 0);
    }
    break;
  case EMBER_OP_POW: {
    /* PyTorch's conventions at the edges: no gradient for the base where
    ** the exponent is 0 (0^0), none for the exponent where the base is 0
    ** and the exponent not negative; else the formulas give NaN. */
    ember_tensor_t *zero = keep(&s, ember_tensor_new(NULL, 0, g->dtype,
                                                     g->storage->device));
    if (wants(node, 0)) { /* g * b * a^(b-1) */
      ember_tensor_t *bm1 = keep(&s, bin_s(EMBER_OP_SUB, b, 1));
      ember_tensor_t *p = keep(&s, bin(EMBER_OP_POW, a, bm1));
      ember_tensor_t *d = keep(&s, bin(EMBER_OP_MUL, g,
                                       keep(&s, bin(EMBER_OP_MUL, b, p))));
      ember_tensor_t *b0 = keep(&s, bin_s(EMBER_OP_EQ, b, 0));
      grads_in[0] = d != NULL && b0 != NULL && zero != NULL
                        ? ember_tensor_where(b0, zero, d) : NULL;
    }
    if (wants(node, 1)) { /* g * a^b * log(a) */
      ember_tensor_t *p = keep(&s, bin(EMBER_OP_POW, a, b));
      ember_tensor_t *l = keep(&s, un(EMBER_OP_LOG, a, 0, 0));
      ember_tensor_t *d = keep(&s, bin(EMBER_OP_MUL, g,
                                       keep(&s, bin(EMBER_OP_MUL, p, l))));
      ember_tensor_t *edge = keep(&s, bin(EMBER_OP_MUL,
          keep(&s, bin_s(EMBER_OP_EQ, a, 0)), keep(&s, bin_s(EMBER_OP_GE, b, 0))));
      grads_in[1] = d != NULL && edge != NULL && zero != NULL
                        ? ember_tensor_where(edge, zero, d) : NULL;
    }
    break;
  }
  case EMBER_OP_MAXIMUM:
  case EMBER_OP_MINIMUM: {
    /* The winner takes the gradient; a tie splits it, as in PyTorch. */
    int max = node->ints[0] == EMBER_OP_MAXIMUM;
    ember_tensor_t *half = keep(&s, bin_s(EMBER_OP_MUL,
        keep(&s, ember_tensor_to(keep(&s, bin(EMBER_OP_EQ, a, b)), g->dtype, 0)),
        0.5));
    for (int i = 0; i < 2; i++) {
      if (!wants(node, i)) continue;
      const ember_tensor_t *self = i == 0 ? a : b, *other = i == 0 ? b : a;
      ember_tensor_t *wins = keep(&s, bin(max ? EMBER_OP_GT : EMBER_OP_LT,
                                          self, other));
      ember_tensor_t *share = keep(&s, bin(EMBER_OP_ADD, keep(&s,
          wins != NULL ? ember_tensor_to(wins, g->dtype, 0) : NULL), half));
      grads_in[i] = bin(EMBER_OP_MUL, g, share);
    }
    break;
  }
  default:
    break;
  }
  scope_end(&s);
  return all_set(node, grads_in);
}

static const ember_node_kind_t binary_kinds[] = {
    {"AddBackward0", binary_backward},     {"SubBackward0", binary_backward},
    {"MulBackward0", binary_backward},     {"DivBackward0", binary_backward},
    {"PowBackward1", binary_backward},     {"MaximumBackward0", binary_backward},
    {"MinimumBackward0", binary_backward},
};

static int dtype_category(ember_dtype_t d) {
  return d == EMBER_BOOL ? 0 : ember_dtype_is_float(d) ? 2 : 1;
}

/* PyTorch's promotion: a 0-dim operand (a Lua number becomes one) does not
** widen a dimensioned one of the same category (float32 + 0-dim float64 is
** float32), but does lift it to a higher category (int64 + 2.5 is float). */
static ember_dtype_t promote_tensors(const ember_tensor_t *a,
                                     const ember_tensor_t *b) {
  if ((a->ndim == 0) != (b->ndim == 0)) {
    const ember_tensor_t *dimmed = a->ndim == 0 ? b : a;
    const ember_tensor_t *scalar = a->ndim == 0 ? a : b;
    if (dtype_category(scalar->dtype) <= dtype_category(dimmed->dtype)) {
      return dimmed->dtype;
    }
    return scalar->dtype;
  }
  return ember_dtype_promote(a->dtype, b->dtype);
}

/* The dtype both operands are computed in. */
static ember_dtype_t compute_dtype(ember_binary_op_t op,
                                   const ember_tensor_t *a,
                                   const ember_tensor_t *b) {
  ember_dtype_t d = promote_tensors(a, b);
  if (op == EMBER_OP_DIV && !ember_dtype_is_float(d)) return EMBER_FLOAT32;
  if (d == EMBER_BOOL && op == EMBER_OP_POW) return EMBER_INT64;
  return d;
}

/* out = a op b, with a and b already in the compute dtype. */
static ember_tensor_t *binary_raw(ember_binary_op_t op,
                                  const ember_tensor_t *a,
                                  const ember_tensor_t *b) {
  const ember_tensor_t *in[2] = {a, b};
  ember_tensor_t *v[2];
  if (ember__broadcast(in, 2, v) < 0) return NULL;
  ember_tensor_t *out = ember_tensor_new(
      v[0]->shape, v[0]->ndim, is_comparison(op) ? EMBER_BOOL : a->dtype,
      a->storage->device);
  if (out != NULL &&
      out->storage->device->binary(op, out, v[0], v[1]) < 0) {
    ember_tensor_release(out);
    out = NULL;
  }
  ember_tensor_release(v[0]);
  ember_tensor_release(v[1]);
  return out;
}

/* Names for messages, in ember_binary_op_t order. */
static const char *const binary_op_names[EMBER_BINARY_OP_COUNT] = {
    "add", "sub", "mul", "div", "pow", "maximum", "minimum",
    "eq",  "ne",  "lt",  "le",  "gt",  "ge"};

ember_tensor_t *ember_tensor_binary(ember_binary_op_t op,
                                    const ember_tensor_t *a,
                                    const ember_tensor_t *b) {
  if (ember__check_devices(binary_op_names[op], a, b) < 0) return NULL;
  ember_dtype_t dtype = compute_dtype(op, a, b);
  if (dtype == EMBER_BOOL) {
    /* On booleans + is logical or and * logical and, as in PyTorch. */
    if (op == EMBER_OP_SUB) {
      ember__tensor_fail(EMBER_EINVAL, "subtracting bool tensors is not "
                                       "supported; use logical_not or ~=");
      return NULL;
    }
    if (op == EMBER_OP_ADD) op = EMBER_OP_MAXIMUM;
    if (op == EMBER_OP_MUL) op = EMBER_OP_MINIMUM;
  }
  int was = ember_set_grad_enabled(0);
  ember_tensor_t *ac = ember_tensor_to(a, dtype, 0);
  ember_tensor_t *bc = ac != NULL ? ember_tensor_to(b, dtype, 0) : NULL;
  ember_tensor_t *out = bc != NULL ? binary_raw(op, ac, bc) : NULL;
  ember_set_grad_enabled(was);
  const ember_tensor_t *inputs[2] = {a, b};
  if (out != NULL && !is_comparison(op) && ember_dtype_is_float(dtype) &&
      ember_autograd_needed(inputs, 2)) {
    ember_node_t *node = ember_autograd_record(out, &binary_kinds[op], inputs,
                                               2);
    int rc = node != NULL ? 0 : EMBER_ENOMEM;
    if (rc == 0) {
      node->ints[0] = op;
      if (op != EMBER_OP_ADD && op != EMBER_OP_SUB) {
        rc = ember_node_save(node, 0, ac);
        if (rc == 0) rc = ember_node_save(node, 1, bc);
      }
    }
    if (rc < 0) {
      ember_tensor_release(out);
      out = NULL;
    }
  }
  ember_tensor_release(ac);
  ember_tensor_release(bc);
  return out;
}

ember_tensor_t *ember_tensor_binary_scalar(ember_binary_op_t op,
                                           const ember_tensor_t *a,
                                           double scalar, int is_int,
                                           int reversed) {
  ember_dtype_t dtype = a->dtype;
  if (!ember_dtype_is_float(dtype) && !is_int) dtype = EMBER_FLOAT32;
  if (dtype == EMBER_BOOL && is_int) dtype = EMBER_INT64;
  ember_tensor_t *s = ember_tensor_new(NULL, 0, dtype, a->storage->device);
  if (s == NULL) return NULL;
  if (s->storage->device->fill(s, scalar) < 0) {
    ember_tensor_release(s);
    return NULL;
  }
  ember_tensor_t *out = reversed ? ember_tensor_binary(op, s, a)
                                 : ember_tensor_binary(op, a, s);
  ember_tensor_release(s);
  static const ember_node_kind_t pow_scalar = {"PowBackward0",
                                               binary_backward};
  if (op == EMBER_OP_POW && !reversed && out != NULL && out->grad_fn != NULL) {
    out->grad_fn->kind = &pow_scalar;
  }
  return out;
}

/* ---- Unary ops --------------------------------------------------------------------- */

static int unary_backward(ember_node_t *node, const ember_tensor_t *g,
                          ember_tensor_t **grads_in) {
  const ember_tensor_t *x = node->saved[0], *y = node->saved[1];
  double a0 = node->reals[0], a1 = node->reals[1];
  scope_t s = {0};
  ember_tensor_t *r = NULL;
  switch ((ember_unary_op_t)node->ints[0]) {
  case EMBER_OP_NEG: r = un(EMBER_OP_NEG, g, 0, 0); break;
  case EMBER_OP_EXP: r = bin(EMBER_OP_MUL, g, y); break;
  case EMBER_OP_LOG: r = bin(EMBER_OP_DIV, g, x); break;
  case EMBER_OP_SQRT:
    r = bin(EMBER_OP_DIV, g, keep(&s, bin_s(EMBER_OP_MUL, y, 2)));
    break;
  case EMBER_OP_TANH: /* g * (1 - y^2) */
    r = bin(EMBER_OP_MUL, g,
            keep(&s, un(EMBER_OP_AXPB, keep(&s, bin(EMBER_OP_MUL, y, y)), -1,
                        1)));
    break;
  case EMBER_OP_SIGMOID: /* g * y * (1 - y) */
    r = bin(EMBER_OP_MUL, g,
            keep(&s, bin(EMBER_OP_MUL, y,
                         keep(&s, un(EMBER_OP_AXPB, y, -1, 1)))));
    break;
  case EMBER_OP_RELU:
    r = bin(EMBER_OP_MUL, g,
            keep(&s, un(EMBER_OP_SIGN, y, 0, 0))); /* y >= 0: 1 or 0 */
    break;
  case EMBER_OP_ABS:
    r = bin(EMBER_OP_MUL, g, keep(&s, un(EMBER_OP_SIGN, x, 0, 0)));
    break;
  case EMBER_OP_SIN:
    r = bin(EMBER_OP_MUL, g, keep(&s, un(EMBER_OP_COS, x, 0, 0)));
    break;
  case EMBER_OP_COS:
    r = bin(EMBER_OP_MUL, g,
            keep(&s, un(EMBER_OP_NEG, keep(&s, un(EMBER_OP_SIN, x, 0, 0)), 0,
                        0)));
    break;
  case EMBER_OP_LOG1P:
    r = bin(EMBER_OP_DIV, g, keep(&s, un(EMBER_OP_AXPB, x, 1, 1)));
    break;
  case EMBER_OP_RECIPROCAL: /* -g * y^2 */
    r = un(EMBER_OP_NEG,
           keep(&s, bin(EMBER_OP_MUL, g, keep(&s, bin(EMBER_OP_MUL, y, y)))),
           0, 0);
    break;
  case EMBER_OP_CLAMP: { /* g where lo <= x <= hi */
    ember_tensor_t *inside = keep(
        &s, bin(EMBER_OP_MUL, keep(&s, bin_s(EMBER_OP_GE, x, a0)),
                keep(&s, bin_s(EMBER_OP_LE, x, a1))));
    r = bin(EMBER_OP_MUL, g, inside);
    break;
  }
  case EMBER_OP_AXPB: r = bin_s(EMBER_OP_MUL, g, a0); break;
  case EMBER_OP_SIGN: r = bin_s(EMBER_OP_MUL, g, 0); break;
  default: break;
  }
  scope_end(&s);
  grads_in[0] = r;
  return r != NULL ? 0 : EMBER_ENOMEM;
}

static const ember_node_kind_t unary_kinds[] = {
    {"NegBackward0", unary_backward},     {"ExpBackward0", unary_backward},
    {"LogBackward0", unary_backward},     {"SqrtBackward0", unary_backward},
    {"TanhBackward0", unary_backward},    {"SigmoidBackward0", unary_backward},
    {"ReluBackward0", unary_backward},    {"AbsBackward0", unary_backward},
    {"SignBackward0", unary_backward},    {"SinBackward0", unary_backward},
    {"CosBackward0", unary_backward},     {"Log1PBackward0", unary_backward},
    {"ReciprocalBackward0", unary_backward},
    {"ClampBackward1", unary_backward},   {"MulBackward0", unary_backward},
    {"NotBackward0", unary_backward},
};

ember_tensor_t *ember_tensor_unary(ember_unary_op_t op,
                                   const ember_tensor_t *x, double arg0,
                                   double arg1) {
  ember_dtype_t dtype = x->dtype;
  if (op == EMBER_OP_NOT) dtype = EMBER_BOOL;
  else if (!ember_dtype_is_float(dtype) && !keeps_integers(op)) {
    dtype = EMBER_FLOAT32;
  } else if (dtype == EMBER_BOOL) {
    dtype = EMBER_INT64;
  }
  ember_tensor_t *out = ember_tensor_new(x->shape, x->ndim, dtype,
                                         x->storage->device);
  if (out == NULL) return NULL;
  if (out->storage->device->unary(op, out, x, arg0, arg1) < 0) {
    ember_tensor_release(out);
    return NULL;
  }
  if (op != EMBER_OP_NOT && ember_dtype_is_float(dtype) &&
      ember_autograd_needed(&x, 1)) {
    ember_node_t *node = ember_autograd_record(out, &unary_kinds[op], &x, 1);
    int rc = node != NULL ? 0 : EMBER_ENOMEM;
    if (rc == 0) {
      node->ints[0] = op;
      node->reals[0] = arg0;
      node->reals[1] = arg1;
      rc = ember_node_save(node, 0, x);
      if (rc == 0) rc = ember_node_save(node, 1, out);
    }
    if (rc < 0) {
      ember_tensor_release(out);
      return NULL;
    }
  }
  return out;
}

/* ---- Reductions ------------------------------------------------------------------- */

/* For each element of x, the product of the other elements along dim
** (the derivative of prod); exact when some elements are zero, where
** prod / x is not. Computed on the CPU through element access. */
static ember_tensor_t *product_of_others(const ember_tensor_t *x, int dim) {
  if (!x->storage->device->is_host) {
    /* Rare enough (prod's backward) to compute on the host. */
    ember_tensor_t *host = ember_tensor_to_device(x, &ember_cpu_device,
                                                  x->dtype, 0);
    ember_tensor_t *r = host != NULL ? product_of_others(host, dim) : NULL;
    ember_tensor_t *out = r != NULL ? ember_tensor_to_device(
                                          r, x->storage->device, r->dtype, 0)
                                    : NULL;
    ember_tensor_release(r);
    ember_tensor_release(host);
    return out;
  }
  ember_tensor_t *out = ember_tensor_to(x, EMBER_FLOAT64, 1);
  if (out == NULL) return NULL;
  int64_t n = x->shape[dim], inner = 1;
  for (int i = dim + 1; i < x->ndim; i++) inner *= x->shape[i];
  int64_t outer = n > 0 ? ember_tensor_numel(x) / (n * inner) : 0;
  double *v = ember_tensor_data(out);
  for (int64_t o = 0; o < outer; o++) {
    for (int64_t k = 0; k < inner; k++) {
      double *row = v + o * n * inner + k;
      double before = 1;
      /* Prefix products forward, then suffix products backward. */
      double *prefix = malloc(sizeof(double) * (size_t)n);
      if (prefix == NULL) {
        ember_tensor_release(out);
        ember__tensor_fail(EMBER_ENOMEM, "out of memory");
        return NULL;
      }
      for (int64_t i = 0; i < n; i++) {
        prefix[i] = before;
        before *= row[i * inner];
      }
      double after = 1;
      for (int64_t i = n - 1; i >= 0; i--) {
        double value = row[i * inner];
        row[i * inner] = prefix[i] * after;
        after *= value;
      }
      free(prefix);
    }
  }
  ember_tensor_t *typed = ember_tensor_to(out, x->dtype, 0);
  ember_tensor_release(out);
  return typed;
}

/* sum: grad broadcast back over the reduced dim. max/min: grad placed at
** the saved positions. prod: grad * prod / x. */
static int reduce_backward(ember_node_t *node, const ember_tensor_t *g,
                           ember_tensor_t **grads_in) {
  const ember_edge_t *e = &node->edges[0];
  int dim = (int)node->ints[1], keepdim = (int)node->ints[2];
  scope_t s = {0};
  const ember_tensor_t *gk = keepdim ? g : keep(&s, ember_tensor_unsqueeze(g, dim));
  ember_tensor_t *r = NULL;
  switch ((ember_reduce_op_t)node->ints[0]) {
  case EMBER_REDUCE_SUM:
    r = gk != NULL ? ember_tensor_expand(gk, e->shape, e->ndim) : NULL;
    break;
  case EMBER_REDUCE_PROD:
    r = bin(EMBER_OP_MUL, gk,
            keep(&s, product_of_others(node->saved[0], dim)));
    break;
  default: { /* MAX, MIN: saved[2] holds the positions, keepdim-shaped */
    ember_tensor_t *full = ember_tensor_new(e->shape, e->ndim, g->dtype,
                                            g->storage->device);
    if (full != NULL && (gk == NULL ||
        full->storage->device->scatter(full, dim, node->saved[2], gk, 1) < 0)) {
      ember_tensor_release(full);
      full = NULL;
    }
    r = full;
    break;
  }
  }
  scope_end(&s);
  grads_in[0] = r;
  return r != NULL ? 0 : EMBER_ENOMEM;
}

static const ember_node_kind_t reduce_kinds[] = {
    {"SumBackward1", reduce_backward}, {"ProdBackward1", reduce_backward},
    {"MaxBackward0", reduce_backward}, {"MinBackward0", reduce_backward},
};

/* The max/min of everything: the gradient is shared evenly by the elements
** equal to the result, as PyTorch does. saved[0] = x, saved[1] = result. */
static int extreme_all_backward(ember_node_t *node, const ember_tensor_t *g,
                                ember_tensor_t **grads_in) {
  scope_t s = {0};
  ember_tensor_t *hits = keep(&s, ember_tensor_to(
      keep(&s, bin(EMBER_OP_EQ, node->saved[0], node->saved[1])), g->dtype, 0));
  ember_tensor_t *count = keep(&s, hits != NULL
      ? ember_tensor_reduce(EMBER_REDUCE_SUM, hits, EMBER_ALL_DIMS, 0, NULL)
      : NULL);
  grads_in[0] = bin(EMBER_OP_MUL, hits, keep(&s, bin(EMBER_OP_DIV, g, count)));
  scope_end(&s);
  return grads_in[0] != NULL ? 0 : EMBER_EINVAL;
}

/* Over every element: a reduction of the flattened tensor, recorded through
** the reshape like any other view (max/min: with their own node). */
static ember_tensor_t *reduce_all(ember_reduce_op_t op,
                                  const ember_tensor_t *x,
                                  ember_tensor_t **index) {
  static const ember_node_kind_t all_kinds[] = {
      {"SumBackward0", reduce_backward}, {"ProdBackward0", reduce_backward},
      {"MaxBackward1", extreme_all_backward},
      {"MinBackward1", extreme_all_backward},
  };
  int extreme = op >= EMBER_REDUCE_MAX;
  int record = extreme && ember_dtype_is_float(x->dtype) &&
               ember_autograd_needed(&x, 1);
  int was = record ? ember_set_grad_enabled(0) : ember_grad_enabled();
  int64_t minus_one = -1;
  ember_tensor_t *flat = ember_tensor_reshape(x, &minus_one, 1, 0);
  ember_tensor_t *r = flat != NULL
                          ? ember_tensor_reduce(op, flat, 0, 0, index)
                          : NULL;
  ember_tensor_release(flat);
  ember_set_grad_enabled(was);
  if (r != NULL && record) {
    ember_node_t *node = ember_autograd_record(r, &all_kinds[op], &x, 1);
    if (node == NULL || ember_node_save(node, 0, x) < 0 ||
        ember_node_save(node, 1, r) < 0) {
      ember_tensor_release(r);
      return NULL;
    }
  } else if (r != NULL && r->grad_fn != NULL) {
    r->grad_fn->kind = &all_kinds[op]; /* PyTorch's name for it */
  }
  return r;
}

static int record_reduce(ember_tensor_t *out, ember_reduce_op_t op,
                         const ember_tensor_t *x, int dim, int keepdim,
                         ember_tensor_t *positions) {
  ember_node_t *node = ember_autograd_record(out, &reduce_kinds[op], &x, 1);
  if (node == NULL) return EMBER_ENOMEM;
  node->ints[0] = op;
  node->ints[1] = dim;
  node->ints[2] = keepdim;
  if (op == EMBER_REDUCE_PROD) {
    int rc = ember_node_save(node, 0, x);
    return rc == 0 ? ember_node_save(node, 1, out) : rc;
  }
  if (op == EMBER_REDUCE_SUM) return 0;
  ember_tensor_t *pk = keepdim ? positions
                               : ember_tensor_unsqueeze(positions, dim);
  int rc = pk != NULL ? ember_node_save(node, 2, pk) : EMBER_ENOMEM;
  if (pk != positions) ember_tensor_release(pk);
  return rc;
}

ember_tensor_t *ember_tensor_reduce(ember_reduce_op_t op,
                                    const ember_tensor_t *x, int dim,
                                    int keepdim, ember_tensor_t **index) {
  if (index != NULL) *index = NULL;
  if (dim == EMBER_ALL_DIMS || x->ndim == 0) {
    if (ember_tensor_numel(x) == 0 && op >= EMBER_REDUCE_MAX) {
      ember__tensor_fail(EMBER_EINVAL, "max/min of an empty tensor");
      return NULL;
    }
    if (dim != EMBER_ALL_DIMS && ember_tensor_wrap_dim(&dim, 1, 0) < 0) {
      return NULL;
    }
    return reduce_all(op, x, index);
  }
  if (ember_tensor_wrap_dim(&dim, x->ndim, 0) < 0) return NULL;
  if (x->shape[dim] == 0 && op >= EMBER_REDUCE_MAX) {
    ember__tensor_fail(EMBER_EINVAL, "max/min over the empty dimension %d",
                       dim + 1);
    return NULL;
  }
  ember_dtype_t dtype = x->dtype;
  if (!ember_dtype_is_float(dtype) && op <= EMBER_REDUCE_PROD) {
    dtype = EMBER_INT64;
  }
  int record = ember_dtype_is_float(dtype) && ember_autograd_needed(&x, 1);
  int need_positions = op >= EMBER_REDUCE_MAX && (index != NULL || record);
  int64_t shape[EMBER_MAX_DIMS];
  int nd = 0;
  for (int i = 0; i < x->ndim; i++) {
    if (i != dim) shape[nd++] = x->shape[i];
    else if (keepdim) shape[nd++] = 1;
  }
  /* Kernels write the reduced shape; keepdim is the same memory. */
  ember_tensor_t *out = ember_tensor_new(shape, nd, dtype, x->storage->device);
  ember_tensor_t *positions =
      need_positions && out != NULL
          ? ember_tensor_new(shape, nd, EMBER_INT64, x->storage->device)
          : NULL;
  int rc = out != NULL && (positions != NULL || !need_positions)
               ? 0 : EMBER_ENOMEM;
  if (rc == 0) {
    ember_tensor_t *o = out, *p = positions;
    ember_tensor_t *os = NULL, *ps = NULL;
    if (keepdim) { /* the kernel wants the dim removed */
      os = o = ember_tensor_squeeze(out, dim, 0);
      if (positions != NULL) ps = p = ember_tensor_squeeze(positions, dim, 0);
    }
    rc = o != NULL && (p != NULL || positions == NULL)
             ? x->storage->device->reduce(op, o, p, x, dim) : EMBER_ENOMEM;
    ember_tensor_release(os);
    ember_tensor_release(ps);
  }
  if (rc == 0 && record) rc = record_reduce(out, op, x, dim, keepdim, positions);
  if (rc < 0) {
    ember_tensor_release(out);
    ember_tensor_release(positions);
    return NULL;
  }
  if (index != NULL) *index = positions;
  else ember_tensor_release(positions);
  return out;
}

ember_tensor_t *ember_tensor_mean(const ember_tensor_t *x, int dim,
                                  int keepdim) {
  if (!ember_dtype_is_float(x->dtype)) {
    ember__tensor_fail(EMBER_EINVAL, "mean needs a float tensor, not %s; "
                                     "convert it first",
                       ember_dtype_name(x->dtype));
    return NULL;
  }
  ember_tensor_t *sum = ember_tensor_reduce(EMBER_REDUCE_SUM, x, dim, keepdim,
                                            NULL);
  if (sum == NULL) return NULL;
  int64_t n = dim == EMBER_ALL_DIMS || x->ndim == 0
                  ? ember_tensor_numel(x)
                  : x->shape[dim < 0 ? dim + x->ndim : dim];
  ember_tensor_t *mean = ember_tensor_unary(EMBER_OP_AXPB, sum,
                                            1.0 / (double)n, 0);
  ember_tensor_release(sum);
  static const ember_node_kind_t mean_kinds[] = {
      {"MeanBackward0", unary_backward}, {"MeanBackward1", unary_backward}};
  if (mean != NULL && mean->grad_fn != NULL) {
    mean->grad_fn->kind = &mean_kinds[dim != EMBER_ALL_DIMS];
  }
  return mean;
}

ember_tensor_t *ember_tensor_argmax(const ember_tensor_t *x, int dim,
                                    int keepdim, int min) {
  ember_tensor_t *index = NULL;
  int was = ember_set_grad_enabled(0);
  ember_tensor_t *values = ember_tensor_reduce(
      min ? EMBER_REDUCE_MIN : EMBER_REDUCE_MAX, x, dim, keepdim, &index);
  ember_set_grad_enabled(was);
  ember_tensor_release(values);
  return index;
}

/* ---- Softmax ---------------------------------------------------------------------------- */

static int softmax_backward(ember_node_t *node, const ember_tensor_t *g,
                            ember_tensor_t **grads_in) {
  const ember_tensor_t *y = node->saved[0];
  ember_tensor_t *gx = ember_tensor_new(y->shape, y->ndim, y->dtype,
                                        y->storage->device);
  if (gx == NULL) return EMBER_ENOMEM;
  if (gx->storage->device->softmax_backward(gx, g, y, (int)node->ints[0],
                                            (int)node->ints[1]) < 0) {
    ember_tensor_release(gx);
    return EMBER_ENOMEM;
  }
  grads_in[0] = gx;
  return 0;
}

static const ember_node_kind_t softmax_kind = {"SoftmaxBackward0",
                                               softmax_backward};
static const ember_node_kind_t log_softmax_kind = {"LogSoftmaxBackward0",
                                                   softmax_backward};

ember_tensor_t *ember_tensor_softmax(const ember_tensor_t *x, int dim,
                                     int log) {
  if (x->ndim == 0) {
    int64_t one = 1;
    ember_tensor_t *v = ember_tensor_reshape(x, &one, 1, 0);
    ember_tensor_t *r = v != NULL ? ember_tensor_softmax(v, 0, log) : NULL;
    ember_tensor_release(v);
    ember_tensor_t *back = r != NULL ? ember_tensor_reshape(r, NULL, 0, 0) : NULL;
    ember_tensor_release(r);
    return back;
  }
  if (ember_tensor_wrap_dim(&dim, x->ndim, 0) < 0) return NULL;
  ember_tensor_t *xf = ember_tensor_to(
      x, ember_dtype_is_float(x->dtype) ? x->dtype : EMBER_FLOAT32, 0);
  if (xf == NULL) return NULL;
  ember_tensor_t *out = ember_tensor_new(xf->shape, xf->ndim, xf->dtype,
                                         xf->storage->device);
  int rc = out != NULL ? out->storage->device->softmax(out, xf, dim, log)
                       : EMBER_ENOMEM;
  if (rc == 0 && ember_autograd_needed((const ember_tensor_t *const *)&xf, 1)) {
    ember_node_t *node = ember_autograd_record(
        out, log ? &log_softmax_kind : &softmax_kind,
        (const ember_tensor_t *const *)&xf, 1);
    rc = node != NULL ? ember_node_save(node, 0, out) : EMBER_ENOMEM;
    if (node != NULL) {
      node->ints[0] = dim;
      node->ints[1] = log;
    }
  }
  ember_tensor_release(xf);
  if (rc < 0) {
    ember_tensor_release(out);
    return NULL;
  }
  return out;
}

