/*
** Views and the ops that move elements without arithmetic: reshape,
** transpose, permute, narrow, select, (un)squeeze, expand, cat, stack,
** gather, scatter, index_select, where — each with its backward.
*/
#include <stdlib.h>
#include <string.h>

#include "autograd.h"
#include "error.h"
#include "tensor.h"

/* ---- Backward of views ---------------------------------------------------- */

/* The gradient has the input's elements in another shape. */
static int reshape_backward(ember_node_t *node, const ember_tensor_t *grad,
                            ember_tensor_t **grads_in) {
  const ember_edge_t *e = &node->edges[0];
  grads_in[0] = ember_tensor_reshape(grad, e->shape, e->ndim, 0);
  return grads_in[0] != NULL ? 0 : EMBER_ENOMEM;
}

/* Broadcasting is undone by the engine; dtype too. */
static int identity_backward(ember_node_t *node, const ember_tensor_t *grad,
                             ember_tensor_t **grads_in) {
  grads_in[0] = (ember_tensor_t *)grad;
  ember_tensor_retain(grads_in[0]);
  return 0;
}

static int permute_backward(ember_node_t *node, const ember_tensor_t *grad,
                            ember_tensor_t **grads_in) {
  int inverse[EMBER_MAX_DIMS];
  for (int i = 0; i < grad->ndim; i++) inverse[node->ints[i]] = i;
  grads_in[0] = ember_tensor_permute(grad, inverse, grad->ndim);
  return grads_in[0] != NULL ? 0 : EMBER_ENOMEM;
}

/*
** The gradient of a slice (narrow or select) is zero outside the slice. An
** LSTM takes one slice per time step of the same input, so building a
** full-size gradient per slice and summing them would cost O(steps^2).
** Instead the slice's gradient is added straight into the input's pending
** gradient (or the leaf's .grad), created once as zeros. The buffer is
** copied first if anything else holds it, so no one sees it change.
** ints[0] = dim, ints[1] = start, ints[2] = length (-1: select).
*/
static int slice_backward(ember_node_t *node, const ember_tensor_t *grad,
                          ember_tensor_t **grads_in) {
  const ember_edge_t *e = &node->edges[0];
  ember_tensor_t **slot = e->leaf != NULL ? &e->leaf->grad : &e->node->grad;
  ember_tensor_t *buffer = *slot;
  int owned = buffer != NULL && buffer->dtype == e->dtype &&
              buffer->ndim == e->ndim &&
              memcmp(buffer->shape, e->shape,
                     sizeof(int64_t) * (size_t)e->ndim) == 0 &&
              (e->leaf != NULL ||
               (buffer->refs == 1 && atomic_load(&buffer->storage->refs) == 1));
  if (buffer != NULL && !owned) {
    ember_tensor_t *copy = ember_tensor_to(buffer, e->dtype, 1);
    if (copy == NULL) return EMBER_ENOMEM;
    if (copy->ndim != e->ndim ||
        memcmp(copy->shape, e->shape, sizeof(int64_t) * (size_t)e->ndim)) {
      ember_tensor_t *shaped = ember_tensor_reshape(copy, e->shape, e->ndim, 0);
      ember_tensor_release(copy);
      if (shaped == NULL) return EMBER_EINVAL;
      copy = shaped;
    }
    ember_tensor_release(buffer);
    *slot = buffer = copy;
  }
  if (buffer == NULL) {
    buffer = ember_tensor_new(e->shape, e->ndim, e->dtype,
                              grad->storage->device);
    if (buffer == NULL) return EMBER_ENOMEM;
    *slot = buffer;
  }
  int dim = (int)node->ints[0];
  ember_tensor_t *view =
      node->ints[2] < 0
          ? ember_tensor_select(buffer, dim, node->ints[1])
          : ember_tensor_narrow(buffer, dim, node->ints[1], node->ints[2]);
  int rc = view != NULL ? ember_tensor_binary_(EMBER_OP_ADD, view, grad, 1.0)
                        : EMBER_ENOMEM;
  ember_tensor_release(view);
  grads_in[0] = NULL; /* already delivered */
  return rc;
}

static const ember_node_kind_t view_kind = {"ViewBackward0", reshape_backward};
static const ember_node_kind_t expand_kind = {"ExpandBackward0",
                                              identity_backward};
static const ember_node_kind_t permute_kind = {"PermuteBackward0",
                                               permute_backward};
static const ember_node_kind_t narrow_kind = {"NarrowBackward0",
                                              slice_backward};
static const ember_node_kind_t select_kind = {"SelectBackward0",
                                              slice_backward};

/* Wraps a new view: records `kind` when x needs grad; returns v or NULL. */
static ember_tensor_t *finish_view(ember_tensor_t *v, const ember_tensor_t *x,
                                   const ember_node_kind_t *kind,
                                   ember_node_t **node) {
  if (node != NULL) *node = NULL;
  if (v == NULL || !ember_autograd_needed(&x, 1)) return v;
  ember_node_t *n = ember_autograd_record(v, kind, &x, 1);
  if (n == NULL) {
    ember_tensor_release(v);
    return NULL;
  }
  if (node != NULL) *node = n;
  return v;
}

/* ---- Reshape ---------------------------------------------------------------- */

/* Resolves one -1 and checks that numel matches; fills out. */
static int infer_shape(const ember_tensor_t *t, const int64_t *shape,
                       int ndim, int64_t *out) {
  char a[128], b[128];
  int64_t known = 1;
  int infer = -1;
  if (ndim > EMBER_MAX_DIMS) {
    return ember__tensor_fail(EMBER_EINVAL, "at most %d dimensions",
                              EMBER_MAX_DIMS);
  }
  for (int i = 0; i < ndim; i++) {
    if (shape[i] == -1 && infer < 0) {
      infer = i;
    } else if (shape[i] < 0) {
      return ember__tensor_fail(EMBER_EINVAL, "invalid shape %s",
                                ember_shape_string(shape, ndim, a, sizeof a));
    } else if (shape[i] != 0 && known > INT64_MAX / shape[i]) {
      return ember__tensor_fail(EMBER_EINVAL, "shape %s is too large",
                                ember_shape_string(shape, ndim, a, sizeof a));
    } else {
      known *= shape[i];
    }
    out[i] = shape[i];
  }
  int64_t numel = ember_tensor_numel(t);
  /* -1 is ambiguous only when another size is 0. */
  int ambiguous = infer >= 0 && known == 0;
  if (infer >= 0 && known != 0 && numel % known == 0) {
    out[infer] = numel / known;
    known = numel;
  }
  if (known != numel || ambiguous) {
    return ember__tensor_fail(
        EMBER_EINVAL, "shape %s is invalid for a tensor of shape %s (%lld "
        "elements)",
        ember_shape_string(shape, ndim, a, sizeof a),
        ember_shape_string(t->shape, t->ndim, b, sizeof b), (long long)numel);
  }
  return 0;
}

/* Strides for viewing t as `shape` without copying, if the layout allows
** (PyTorch's computeStride): groups of t's dims that are contiguous among
** themselves map onto groups of the new dims. */
static int view_strides(const ember_tensor_t *t, const int64_t *shape,
                        int ndim, int64_t *strides) {
  if (ember_tensor_numel(t) == 0 || t->ndim == 0) {
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
      strides[i] = s;
      s *= shape[i] > 0 ? shape[i] : 1;
    }
    return 1;
  }
  int view_d = ndim - 1;
  int64_t chunk_base_stride = t->strides[t->ndim - 1];
  int64_t tensor_numel = 1, view_numel = 1;
  for (int d = t->ndim - 1; d >= 0; d--) {
    tensor_numel *= t->shape[d];
    if (d == 0 || (t->shape[d - 1] != 1 &&
                   t->strides[d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 &&
             (view_numel < tensor_numel || shape[view_d] == 1)) {
        strides[view_d] = view_numel * chunk_base_stride;
        view_numel *= shape[view_d];
        view_d--;
      }
      if (view_numel != tensor_numel) return 0;
      if (d > 0) {
        chunk_base_stride = t->strides[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  return view_d == -1;
}

ember_tensor_t *ember_tensor_reshape(const ember_tensor_t *t,
                                     const int64_t *shape, int ndim,
                                     int view_only) {
  int64_t resolved[EMBER_MAX_DIMS], strides[EMBER_MAX_DIMS];
  char a[128];
  if (infer_shape(t, shape, ndim, resolved) < 0) return NULL;
  ember_tensor_t *v;
  if (view_strides(t, resolved, ndim, strides)) {
    v = ember_tensor_view_of(t, resolved, strides, ndim, t->offset);
  } else if (view_only) {
    ember__tensor_fail(EMBER_EINVAL,
                       "view: a tensor of shape %s with these strides cannot "
                       "be viewed as the new shape; use reshape (which copies)",
                       ember_shape_string(t->shape, t->ndim, a, sizeof a));
    return NULL;
  } else {
    ember_tensor_t *c = ember_tensor_contiguous(t);
    if (c == NULL) return NULL;
    v = ember_tensor_reshape(c, resolved, ndim, 1);
    ember_tensor_release(c);
    return v; /* recorded through contiguous's and the view's nodes */
  }
  return finish_view(v, t, &view_kind, NULL);
}

/* ---- Transpose, permute ------------------------------------------------------ */

ember_tensor_t *ember_tensor_permute(const ember_tensor_t *t,
                                     const int *dims, int ndim) {
  int64_t shape[EMBER_MAX_DIMS], strides[EMBER_MAX_DIMS];
  int used[EMBER_MAX_DIMS] = {0}, wrapped[EMBER_MAX_DIMS];
  if (ndim != t->ndim) {
    ember__tensor_fail(EMBER_EINVAL,
                       "permute: %d dimensions given for a tensor of %d", ndim,
                       t->ndim);
    return NULL;
  }
  for (int i = 0; i < ndim; i++) {
    int d = dims[i];
    if (ember_tensor_wrap_dim(&d, ndim, 0) < 0) return NULL;
    if (used[d]++) {
      ember__tensor_fail(EMBER_EINVAL, "permute: dimension %d repeats", d + 1);
      return NULL;
    }
    wrapped[i] = d;
    shape[i] = t->shape[d];
    strides[i] = t->strides[d];
  }
  ember_node_t *node;
  ember_tensor_t *v = finish_view(
      ember_tensor_view_of(t, shape, strides, ndim, t->offset), t,
      &permute_kind, &node);
  if (node != NULL) {
    for (int i = 0; i < ndim; i++) node->ints[i] = wrapped[i];
  }
  return v;
}

ember_tensor_t *ember_tensor_transpose(const ember_tensor_t *t, int d0,
                                       int d1) {
  int dims[EMBER_MAX_DIMS];
  if (ember_tensor_wrap_dim(&d0, t->ndim, 0) < 0 ||
      ember_tensor_wrap_dim(&d1, t->ndim, 0) < 0) {
    return NULL;
  }
  for (int i = 0; i < t->ndim; i++) dims[i] = i;
  dims[d0] = d1;
  dims[d1] = d0;
  static const ember_node_kind_t transpose_kind = {"TransposeBackward0",
                                                   permute_backward};
  ember_tensor_t *v = ember_tensor_permute(t, dims, t->ndim);
  if (v != NULL && v->grad_fn != NULL) v->grad_fn->kind = &transpose_kind;
  return v;
}

ember_tensor_t *ember_tensor_matrix_t(const ember_tensor_t *t) {
  static const ember_node_kind_t t_kind = {"TBackward0", permute_backward};
  ember_tensor_t *v = ember_tensor_transpose(t, 0, 1);
  if (v != NULL && v->grad_fn != NULL) v->grad_fn->kind = &t_kind;
  return v;
}

/* ---- Narrow, select ------------------------------------------------------------ */

ember_tensor_t *ember_tensor_narrow(const ember_tensor_t *t, int dim,
                                    int64_t start, int64_t length) {
  if (ember_tensor_wrap_dim(&dim, t->ndim, 0) < 0) return NULL;
  if (start < 0) start += t->shape[dim];
  if (start < 0 || length < 0 || start > t->shape[dim] ||
      length > t->shape[dim] - start) {
    ember__tensor_fail(EMBER_EINVAL,
                       "narrow: start %lld and length %lld are out of range "
                       "for dimension %d of size %lld",
                       (long long)start + 1, (long long)length, dim + 1,
                       (long long)t->shape[dim]);
    return NULL;
  }
  int64_t shape[EMBER_MAX_DIMS];
  memcpy(shape, t->shape, sizeof shape);
  shape[dim] = length;
  ember_node_t *node;
  ember_tensor_t *v = finish_view(
      ember_tensor_view_of(t, shape, t->strides, t->ndim,
                           t->offset + start * t->strides[dim]),
      t, &narrow_kind, &node);
  if (node != NULL) {
    node->ints[0] = dim;
    node->ints[1] = start;
    node->ints[2] = length;
  }
  return v;
}

ember_tensor_t *ember_tensor_select(const ember_tensor_t *t, int dim,
                                    int64_t index) {
  if (t->ndim == 0) {
    ember__tensor_fail(EMBER_EINVAL, "select: cannot index a 0-dim tensor");
    return NULL;
  }
  if (ember_tensor_wrap_dim(&dim, t->ndim, 0) < 0) return NULL;
  int64_t size = t->shape[dim];
  if (index < 0) index += size;
  if (index < 0 || index >= size) {
    ember__tensor_fail(EMBER_EINVAL,
                       "index %lld is out of range for dimension %d of size "
                       "%lld",
                       (long long)(index >= 0 ? index + 1 : index - size),
                       dim + 1, (long long)size);
    return NULL;
  }
  int64_t shape[EMBER_MAX_DIMS], strides[EMBER_MAX_DIMS];
  int nd = 0;
  for (int i = 0; i < t->ndim; i++) {
    if (i == dim) continue;
    shape[nd] = t->shape[i];
    strides[nd++] = t->strides[i];
  }
  ember_node_t *node;
  ember_tensor_t *v = finish_view(
      ember_tensor_view_of(t, shape, strides, nd,
                           t->offset + index * t->strides[dim]),
      t, &select_kind, &node);
  if (node != NULL) {
    node->ints[0] = dim;
    node->ints[1] = index;
    node->ints[2] = -1;
  }
  return v;
}

/* ---- Unsqueeze, squeeze, expand --------------------------------------------- */

ember_tensor_t *ember_tensor_unsqueeze(const ember_tensor_t *t, int dim) {
  if (ember_tensor_wrap_dim(&dim, t->ndim, 1) < 0) return NULL;
  if (t->ndim == EMBER_MAX_DIMS) {
    ember__tensor_fail(EMBER_EINVAL, "unsqueeze: at most %d dimensions",
                       EMBER_MAX_DIMS);
    return NULL;
  }
  int64_t shape[EMBER_MAX_DIMS], strides[EMBER_MAX_DIMS];
  for (int i = 0, j = 0; i <= t->ndim; i++) {
    if (i == dim) {
      shape[i] = 1;
      strides[i] = j < t->ndim ? t->strides[j] * t->shape[j] : 1;
    } else {
      shape[i] = t->shape[j];
      strides[i] = t->strides[j++];
    }
  }
  return finish_view(
      ember_tensor_view_of(t, shape, strides, t->ndim + 1, t->offset), t,
      &view_kind, NULL);
}

ember_tensor_t *ember_tensor_squeeze(const ember_tensor_t *t, int dim,
                                     int all) {
  if (!all && ember_tensor_wrap_dim(&dim, t->ndim, 0) < 0) return NULL;
  int64_t shape[EMBER_MAX_DIMS], strides[EMBER_MAX_DIMS];
  int nd = 0;
  for (int i = 0; i < t->ndim; i++) {
    if (t->shape[i] == 1 && (all || i == dim)) continue;
    shape[nd] = t->shape[i];
    strides[nd++] = t->strides[i];
  }
  return finish_view(ember_tensor_view_of(t, shape, strides, nd, t->offset),
                     t, &view_kind, NULL);
}

ember_tensor_t *ember_tensor_expand(const ember_tensor_t *t,
                                    const int64_t *shape, int ndim) {
  char a[128], b[128];
  int64_t out_shape[EMBER_MAX_DIMS], strides[EMBER_MAX_DIMS];
  if (ndim < t->ndim || ndim > EMBER_MAX_DIMS) goto bad;
  for (int i = ndim - 1; i >= 0; i--) {
    int j = i - (ndim - t->ndim);
    int64_t have = j >= 0 ? t->shape[j] : 1;
    int64_t want = shape[i] == -1 && j >= 0 ? have : shape[i];
    if (want < 0) goto bad;
    if (have == want) {
      out_shape[i] = want;
      strides[i] = j >= 0 ? t->strides[j] : 0;
    } else if (have == 1) {
      out_shape[i] = want;
      strides[i] = 0;
    } else {
      goto bad;
    }
  }
  return finish_view(ember_tensor_view_of(t, out_shape, strides, ndim,
                                          t->offset),
                     t, &expand_kind, NULL);
bad:
  ember__tensor_fail(EMBER_EINVAL, "expand: cannot expand shape %s to %s",
                     ember_shape_string(t->shape, t->ndim, a, sizeof a),
                     ember_shape_string(shape, ndim, b, sizeof b));
  return NULL;
}

/* ---- Cat, stack ---------------------------------------------------------------- */

/* Input i's gradient is the slice of grad it was copied to: ints hold the
** dim and, per input, the start offsets are recomputed from edge shapes. */
static int cat_backward(ember_node_t *node, const ember_tensor_t *grad,
                        ember_tensor_t **grads_in) {
  int dim = (int)node->ints[0];
  int stacked = (int)node->ints[1];
  int64_t start = 0;
  for (int i = 0; i < node->n_edges; i++) {
    const ember_edge_t *e = &node->edges[i];
    int64_t length = stacked ? 1 : e->shape[dim];
    if (e->node != NULL || e->leaf != NULL) {
      grads_in[i] = stacked ? ember_tensor_select(grad, dim, start)
                            : ember_tensor_narrow(grad, dim, start, length);
      if (grads_in[i] == NULL) return EMBER_ENOMEM;
    }
    start += length;
  }
  return 0;
}

static const ember_node_kind_t cat_kind = {"CatBackward0", cat_backward};
static const ember_node_kind_t stack_kind = {"StackBackward0", cat_backward};

static ember_tensor_t *cat_impl(ember_tensor_t *const *list, int n, int dim,
                                int stacked) {
  char a[128], b[128];
  if (n < 1) {
    ember__tensor_fail(EMBER_EINVAL, "%s: expected a non-empty list of tensors",
                       stacked ? "stack" : "cat");
    return NULL;
  }
  const ember_tensor_t *first = list[0];
  int ndim = first->ndim + (stacked ? 1 : 0);
  if (ember_tensor_wrap_dim(&dim, first->ndim, stacked) < 0) return NULL;
  if (!stacked && first->ndim == 0) {
    ember__tensor_fail(EMBER_EINVAL, "cat: zero-dimensional tensors cannot be "
                                     "concatenated; use stack");
    return NULL;
  }
  int64_t shape[EMBER_MAX_DIMS];
  ember_dtype_t dtype = first->dtype;
  for (int i = 0, j = 0; i < ndim; i++) {
    shape[i] = stacked && i == dim ? n : first->shape[j++];
  }
  if (!stacked) shape[dim] = 0;
  for (int k = 0; k < n; k++) {
    const ember_tensor_t *t = list[k];
    if (ember__check_devices(stacked ? "stack" : "cat", first, t) < 0) {
      return NULL;
    }
    int ok = t->ndim == first->ndim;
    for (int i = 0; ok && i < t->ndim; i++) {
      ok = t->shape[i] == first->shape[i] || (!stacked && i == dim);
    }
    if (!ok) {
      ember__tensor_fail(EMBER_EINVAL,
                         "%s: tensor %d has shape %s, expected %s%s",
                         stacked ? "stack" : "cat", k + 1,
                         ember_shape_string(t->shape, t->ndim, a, sizeof a),
                         ember_shape_string(first->shape, first->ndim, b,
                                            sizeof b),
                         stacked ? "" : " except in the cat dimension");
      return NULL;
    }
    if (!stacked) shape[dim] += t->shape[dim];
    dtype = ember_dtype_promote(dtype, t->dtype);
  }
  ember_tensor_t *out = ember_tensor_new(shape, ndim, dtype,
                                         first->storage->device);
  if (out == NULL) return NULL;
  int64_t start = 0;
  int was = ember_set_grad_enabled(0);
  for (int k = 0; k < n; k++) {
    ember_tensor_t *slot =
        stacked ? ember_tensor_select(out, dim, k)
                : ember_tensor_narrow(out, dim, start, list[k]->shape[dim]);
    int rc = slot != NULL ? ember_tensor_copy_(slot, list[k]) : EMBER_ENOMEM;
    ember_tensor_release(slot);
    if (rc < 0) {
      ember_set_grad_enabled(was);
      ember_tensor_release(out);
      return NULL;
    }
    start += stacked ? 1 : list[k]->shape[dim];
  }
  ember_set_grad_enabled(was);
  if (ember_autograd_needed((const ember_tensor_t *const *)list, n)) {
    ember_node_t *node = ember_autograd_record(
        out, stacked ? &stack_kind : &cat_kind,
        (const ember_tensor_t *const *)list, n);
    if (node == NULL) {
      ember_tensor_release(out);
      return NULL;
    }
    node->ints[0] = dim;
    node->ints[1] = stacked;
  }
  return out;
}

ember_tensor_t *ember_tensor_cat(ember_tensor_t *const *list, int n,
                                 int dim) {
  return cat_impl(list, n, dim, 0);
}

ember_tensor_t *ember_tensor_stack(ember_tensor_t *const *list, int n,
                                   int dim) {
  return cat_impl(list, n, dim, 1);
}

/* ---- Gather, scatter, index_select, where ------------------------------------ */

static int check_index_tensor(const ember_tensor_t *index, const char *what) {
  if (index->dtype != EMBER_INT64 && index->dtype != EMBER_INT32) {
    return ember__tensor_fail(EMBER_EINVAL,
                              "%s: index must be an int64 tensor, not %s",
                              what, ember_dtype_name(index->dtype));
  }
  return 0;
}

/*
** The CPU kernels check each index as they go; a device's cannot report
** back, so its indices are checked here first: their least and greatest,
** read back in one copy, against the size of dimension dim (0-based).
*/
static int check_device_indices(const ember_tensor_t *index, int64_t size,
                                int dim, const char *what) {
  if (index->storage->device->is_host || ember_tensor_numel(index) == 0) {
    return 0;
  }
  int was = ember_set_grad_enabled(0);
  ember_tensor_t *ends[2] = {
      ember_tensor_reduce(EMBER_REDUCE_MIN, index, EMBER_ALL_DIMS, 0, NULL),
      ember_tensor_reduce(EMBER_REDUCE_MAX, index, EMBER_ALL_DIMS, 0, NULL)};
  ember_tensor_t *both = ends[0] != NULL && ends[1] != NULL
                             ? ember_tensor_stack(ends, 2, 0) : NULL;
  ember_tensor_t *host = both != NULL
      ? ember_tensor_to_device(both, &ember_cpu_device, EMBER_INT64, 0) : NULL;
  ember_set_grad_enabled(was);
  int rc = host != NULL ? 0 : EMBER_ENOMEM;
  for (int i = 0; rc == 0 && i < 2; i++) {
    int64_t at = ember_tensor_get_int(host, i);
    if (at < 0 || at >= size) {
      rc = ember__tensor_fail(EMBER_EINVAL, "%s: index %lld is out of range "
                              "for dimension %d of size %lld", what,
                              (long long)at + 1, dim + 1, (long long)size);
    }
  }
  ember_tensor_release(host);
  ember_tensor_release(both);
  ember_tensor_release(ends[0]);
  ember_tensor_release(ends[1]);
  return rc;
}

/* gather's backward: zeros with grad added at the gathered positions. */
static int gather_backward(ember_node_t *node, const ember_tensor_t *grad,
                           ember_tensor_t **grads_in) {
  const ember_edge_t *e = &node->edges[0];
  ember_tensor_t *full = ember_tensor_new(e->shape, e->ndim, grad->dtype,
                                          grad->storage->device);
  if (full == NULL) return EMBER_ENOMEM;
  int rc = full->storage->device->scatter(full, (int)node->ints[0],
                                          node->saved[0], grad, 1);
  if (rc < 0) {
    ember_tensor_release(full);
    return rc;
  }
  grads_in[0] = full;
  return 0;
}

static const ember_node_kind_t gather_kind = {"GatherBackward0",
                                              gather_backward};

static int check_gather_shapes(const ember_tensor_t *x, int dim,
                               const ember_tensor_t *index,
                               const char *what) {
  char a[128], b[128];
  int ok = index->ndim == x->ndim;
  for (int i = 0; ok && i < x->ndim; i++) {
    ok = i == dim || index->shape[i] <= x->shape[i];
  }
  if (!ok) {
    return ember__tensor_fail(
        EMBER_EINVAL, "%s: index of shape %s does not fit a tensor of shape %s "
        "(same number of dimensions, no larger outside dimension %d)",
        what, ember_shape_string(index->shape, index->ndim, a, sizeof a),
        ember_shape_string(x->shape, x->ndim, b, sizeof b), dim + 1);
  }
  return 0;
}

ember_tensor_t *ember_tensor_gather(const ember_tensor_t *x, int dim,
                                    const ember_tensor_t *index) {
  if (ember_tensor_wrap_dim(&dim, x->ndim, 0) < 0 ||
      check_index_tensor(index, "gather") < 0 ||
      ember__check_devices("gather", x, index) < 0 ||
      check_gather_shapes(x, dim, index, "gather") < 0 ||
      check_device_indices(index, x->shape[dim], dim, "gather") < 0) {
    return NULL;
  }
  ember_tensor_t *out = ember_tensor_new(index->shape, index->ndim, x->dtype,
                                         x->storage->device);
  if (out == NULL) return NULL;
  if (x->storage->device->gather(out, x, dim, index) < 0) {
    ember_tensor_release(out);
    return NULL;
  }
  if (ember_autograd_needed(&x, 1)) {
    ember_node_t *node = ember_autograd_record(out, &gather_kind, &x, 1);
    if (node == NULL || ember_node_save(node, 0, index) < 0) {
      ember_tensor_release(out);
      return NULL;
    }
    node->ints[0] = dim;
  }
  return out;
}

/* scatter's backward: x's gradient is grad with the overwritten positions
** zeroed (all of grad when accumulating); src's is grad gathered there. */
static int scatter_backward(ember_node_t *node, const ember_tensor_t *grad,
                            ember_tensor_t **grads_in) {
  int dim = (int)node->ints[0];
  const ember_tensor_t *index = node->saved[0];
  ember_tensor_t *gx = ember_tensor_to(grad, grad->dtype, 1);
  if (gx == NULL) return EMBER_ENOMEM;
  if (!node->ints[1]) {
    ember_tensor_t *zeros = ember_tensor_new(index->shape, index->ndim,
                                             grad->dtype,
                                             grad->storage->device);
    int rc = zeros != NULL
                 ? gx->storage->device->scatter(gx, dim, index, zeros, 0)
                 : EMBER_ENOMEM;
    ember_tensor_release(zeros);
    if (rc < 0) {
      ember_tensor_release(gx);
      return rc;
    }
  }
  grads_in[0] = gx;
  /* src may be larger than index: only its leading index-shaped corner was
  ** scattered, the rest gets no gradient. */
  const ember_edge_t *src = &node->edges[1];
  ember_tensor_t *picked = ember_tensor_gather(grad, dim, index);
  ember_tensor_t *gs = picked != NULL
      ? ember_tensor_new(src->shape, src->ndim, grad->dtype, grad->storage->device)
      : NULL;
  ember_tensor_t *corner = gs != NULL
      ? ember_tensor_view_of(gs, index->shape, gs->strides, gs->ndim, 0)
      : NULL;
  int rc = corner != NULL ? ember_tensor_copy_(corner, picked) : EMBER_EINVAL;
  ember_tensor_release(corner);
  ember_tensor_release(picked);
  if (rc < 0) {
    ember_tensor_release(gs);
    return rc;
  }
  grads_in[1] = gs;
  return 0;
}

static const ember_node_kind_t scatter_kind = {"ScatterBackward0",
                                               scatter_backward};

ember_tensor_t *ember_tensor_scatter(const ember_tensor_t *x, int dim,
                                     const ember_tensor_t *index,
                                     const ember_tensor_t *src,
                                     int accumulate) {
  char a[128], b[128];
  if (ember_tensor_wrap_dim(&dim, x->ndim, 0) < 0 ||
      check_index_tensor(index, "scatter") < 0 ||
      ember__check_devices("scatter", x, index) < 0 ||
      ember__check_devices("scatter", x, src) < 0 ||
      check_gather_shapes(x, dim, index, "scatter") < 0 ||
      check_device_indices(index, x->shape[dim], dim, "scatter") < 0) {
    return NULL;
  }
  int fits = src->ndim == index->ndim;
  for (int i = 0; fits && i < src->ndim; i++) {
    fits = index->shape[i] <= src->shape[i];
  }
  if (!fits) {
    ember__tensor_fail(EMBER_EINVAL,
                       "scatter: index of shape %s is larger than src of "
                       "shape %s",
                       ember_shape_string(index->shape, index->ndim, a,
                                          sizeof a),
                       ember_shape_string(src->shape, src->ndim, b, sizeof b));
    return NULL;
  }
  ember_tensor_t *out = ember_tensor_copy_detached(x);
  if (out == NULL) return NULL;
  if (out->storage->device->scatter(out, dim, index, src, accumulate) < 0) {
    ember_tensor_release(out);
    return NULL;
  }
  const ember_tensor_t *inputs[2] = {x, src};
  if (ember_autograd_needed(inputs, 2)) {
    ember_node_t *node = ember_autograd_record(out, &scatter_kind, inputs, 2);
    if (node == NULL || ember_node_save(node, 0, index) < 0) {
      ember_tensor_release(out);
      return NULL;
    }
    node->ints[0] = dim;
    node->ints[1] = accumulate;
  }
  return out;
}

/* index_select is a gather through the expanded index (saved), so its
** backward is gather's: a scatter-add back where each slice came from. */
static const ember_node_kind_t index_select_kind = {"IndexSelectBackward0",
                                                    gather_backward};

/* The 1-D index as a gather index for out's shape: index[i] at every
** position whose coordinate along dim is i (a view with zero strides). */
static ember_tensor_t *expanded_index(const ember_tensor_t *index64,
                                      const int64_t *shape, int ndim,
                                      int dim) {
  int64_t strides[EMBER_MAX_DIMS] = {0};
  strides[dim] = index64->ndim == 1 ? index64->strides[0] : 0;
  return ember_tensor_view_of(index64, shape, strides, ndim, index64->offset);
}

/* Host indices checked one by one, a device's by their extremes. */
static int check_select_indices(const ember_tensor_t *index, int64_t size,
                                int dim) {
  if (!index->storage->device->is_host) {
    return check_device_indices(index, size, dim, "index_select");
  }
  int64_t n = ember_tensor_numel(index);
  for (int64_t i = 0; i < n; i++) {
    int64_t at = ember_tensor_get_int(index, i);
    if (at < 0 || at >= size) {
      return ember__tensor_fail(EMBER_EINVAL,
                                "index_select: index %lld is out of range for "
                                "dimension %d of size %lld",
                                (long long)at + 1, dim + 1, (long long)size);
    }
  }
  return 0;
}

ember_tensor_t *ember_tensor_index_select(const ember_tensor_t *x, int dim,
                                          const ember_tensor_t *index) {
  if (ember_tensor_wrap_dim(&dim, x->ndim, 0) < 0 ||
      check_index_tensor(index, "index_select") < 0 ||
      ember__check_devices("index_select", x, index) < 0) {
    return NULL;
  }
  if (index->ndim > 1) {
    ember__tensor_fail(EMBER_EINVAL, "index_select: index must be 1-D, not "
                                     "%d-D", index->ndim);
    return NULL;
  }
  if (x->ndim == 0) {
    ember__tensor_fail(EMBER_EINVAL, "index_select: the tensor needs at least "
                                     "one dimension");
    return NULL;
  }
  if (check_select_indices(index, x->shape[dim], dim) < 0) return NULL;
  int64_t shape[EMBER_MAX_DIMS];
  memcpy(shape, x->shape, sizeof shape);
  shape[dim] = ember_tensor_numel(index);
  ember_tensor_t *index64 = ember_tensor_to(index, EMBER_INT64, 0);
  ember_tensor_t *spread = index64 != NULL
      ? expanded_index(index64, shape, x->ndim, dim) : NULL;
  ember_tensor_release(index64);
  ember_tensor_t *out = spread != NULL
      ? ember_tensor_new(shape, x->ndim, x->dtype, x->storage->device) : NULL;
  int rc = out != NULL ? x->storage->device->gather(out, x, dim, spread)
                       : EMBER_ENOMEM;
  if (rc == 0 && ember_autograd_needed(&x, 1)) {
    ember_node_t *node = ember_autograd_record(out, &index_select_kind, &x, 1);
    rc = node != NULL ? ember_node_save(node, 0, spread) : EMBER_ENOMEM;
    if (rc == 0) node->ints[0] = dim;
  }
  ember_tensor_release(spread);
  if (rc < 0) {
    ember_tensor_release(out);
    return NULL;
  }
  return out;
}

static int where_backward(ember_node_t *node, const ember_tensor_t *grad,
                          ember_tensor_t **grads_in) {
  ember_tensor_t *zero = ember_tensor_new(NULL, 0, grad->dtype,
                                          grad->storage->device);
  if (zero == NULL) return EMBER_ENOMEM;
  grads_in[1] = ember_tensor_where(node->saved[0], grad, zero);
  grads_in[2] = ember_tensor_where(node->saved[0], zero, grad);
  ember_tensor_release(zero);
  return grads_in[1] != NULL && grads_in[2] != NULL ? 0 : EMBER_ENOMEM;
}

static const ember_node_kind_t where_kind = {"WhereBackward0",
                                             where_backward};

ember_tensor_t *ember_tensor_where(const ember_tensor_t *cond,
                                   const ember_tensor_t *a,
                                   const ember_tensor_t *b) {
  if (ember__check_devices("where", a, b) < 0 ||
      ember__check_devices("where", a, cond) < 0) {
    return NULL;
  }
  ember_dtype_t dtype = ember_dtype_promote(a->dtype, b->dtype);
  const ember_tensor_t *in[3] = {cond, a, b};
  ember_tensor_t *v[3] = {0};
  ember_tensor_t *ac = NULL, *bc = NULL, *out = NULL;
  int was = ember_set_grad_enabled(0);
  if (ember__broadcast(in, 3, v) == 0) {
    ac = ember_tensor_to(v[1], dtype, 0);
    bc = ember_tensor_to(v[2], dtype, 0);
    if (ac != NULL && bc != NULL) {
      out = ember_tensor_new(v[0]->shape, v[0]->ndim, dtype,
                             a->storage->device);
    }
    if (out != NULL && out->storage->device->where(out, v[0], ac, bc) < 0) {
      ember_tensor_release(out);
      out = NULL;
    }
  }
  ember_set_grad_enabled(was);
  ember_tensor_release(ac);
  ember_tensor_release(bc);
  for (int i = 0; i < 3; i++) ember_tensor_release(v[i]);
  const ember_tensor_t *inputs[3] = {NULL, a, b};
  if (out != NULL && ember_dtype_is_float(dtype) &&
      ember_autograd_needed(inputs, 3)) {
    ember_node_t *node = ember_autograd_record(out, &where_kind, inputs, 3);
    if (node == NULL || ember_node_save(node, 0, cond) < 0) {
      ember_tensor_release(out);
      return NULL;
    }
  }
  return out;
}
