/*
** Autograd: grad mode, recording nodes, and the backward engine.
**
** backward() first walks the graph from the root to count, for every node,
** how many recorded uses feed gradients into it; then it runs nodes in an
** order where each one has received all of its gradient before it runs (a
** topological order without recursion, so deep graphs — an LSTM unrolled
** over a long sequence — do not exhaust the C stack).
*/
#include <stdlib.h>
#include <string.h>

#include "autograd.h"
#include "error.h"

static _Thread_local int grad_disabled;

/* The sink of the backward running on this thread (NULL: leaves' .grad). */
static _Thread_local const ember_grad_sink_t *current_sink;

const ember_grad_sink_t *ember_backward_sink(void) { return current_sink; }

int ember_grad_enabled(void) { return !grad_disabled; }

int ember_set_grad_enabled(int enabled) {
  int previous = !grad_disabled;
  grad_disabled = !enabled;
  return previous;
}

int ember_autograd_needed(const ember_tensor_t *const *inputs, int n) {
  if (grad_disabled) return 0;
  for (int i = 0; i < n; i++) {
    if (inputs[i] != NULL &&
        (inputs[i]->requires_grad || inputs[i]->grad_fn != NULL)) {
      return 1;
    }
  }
  return 0;
}

void ember_node_retain(ember_node_t *node) { node->refs++; }

static void node_free_saved(ember_node_t *node) {
  for (int i = 0; i < EMBER_NODE_MAX_SAVED; i++) {
    ember_tensor_release(node->saved[i]);
    node->saved[i] = NULL;
  }
}

/* Releasing a node can release a long chain behind it; do it with an
** explicit stack rather than recursion. */
void ember_node_release(ember_node_t *node) {
  ember_node_t *stack_small[64];
  ember_node_t **stack = stack_small;
  size_t top = 0, cap = 64;
  stack[top++] = node;
  while (top > 0) {
    ember_node_t *n = stack[--top];
    if (--n->refs > 0) continue;
    for (int i = 0; i < n->n_edges; i++) {
      ember_tensor_release(n->edges[i].leaf);
      if (n->edges[i].node == NULL) continue;
      if (top == cap) {
        size_t bigger = cap * 2;
        ember_node_t **grown = malloc(bigger * sizeof *grown);
        if (grown == NULL) {
          /* Out of memory while freeing: fall back to recursion. */
          ember_node_release(n->edges[i].node);
          continue;
        }
        memcpy(grown, stack, top * sizeof *stack);
        if (stack != stack_small) free(stack);
        stack = grown;
        cap = bigger;
      }
      stack[top++] = n->edges[i].node;
    }
    node_free_saved(n);
    ember_tensor_release(n->grad);
    if (n->user_free != NULL) n->user_free(n->user);
    free(n->edges);
    free(n);
  }
  if (stack != stack_small) free(stack);
}

ember_node_t *ember_autograd_record(ember_tensor_t *out,
                                    const ember_node_kind_t *kind,
                                    const ember_tensor_t *const *inputs,
                                    int n) {
  ember_node_t *node = calloc(1, sizeof *node);
  ember_edge_t *edges = calloc((size_t)(n > 0 ? n : 1), sizeof *edges);
  if (node == NULL || edges == NULL) {
    free(node);
    free(edges);
    ember__tensor_fail(EMBER_ENOMEM, "out of memory recording %s", kind->name);
    return NULL;
  }
  node->refs = 1;
  node->kind = kind;
  node->n_edges = n;
  node->edges = edges;
  for (int i = 0; i < n; i++) {
    const ember_tensor_t *in = inputs[i];
    if (in == NULL) continue;
    edges[i].ndim = in->ndim;
    memcpy(edges[i].shape, in->shape, sizeof(int64_t) * (size_t)in->ndim);
    edges[i].dtype = in->dtype;
    if (in->grad_fn != NULL) {
      edges[i].node = in->grad_fn;
      ember_node_retain(in->grad_fn);
    } else if (in->requires_grad) {
      edges[i].leaf = (ember_tensor_t *)in;
      ember_tensor_retain(edges[i].leaf);
    }
  }
  if (out->grad_fn != NULL) ember_node_release(out->grad_fn);
  out->grad_fn = node;
  out->requires_grad = 1;
  return node;
}

ember_tensor_t *ember_tensor_detach(const ember_tensor_t *t) {
  return ember_tensor_view_of(t, t->shape, t->strides, t->ndim, t->offset);
}

int ember_node_save(ember_node_t *node, int i, const ember_tensor_t *t) {
  if (t == NULL) return 0;
  ember_tensor_t *saved = ember_tensor_detach(t);
  if (saved == NULL) return EMBER_ENOMEM;
  ember_tensor_release(node->saved[i]);
  node->saved[i] = saved;
  node->saved_version[i] = saved->storage->version;
  return 0;
}

ember_tensor_t *ember_sum_to_shape(const ember_tensor_t *grad,
                                   const int64_t *shape, int ndim) {
  ember_tensor_t *g = (ember_tensor_t *)grad;
  ember_tensor_retain(g);
  /* Leading dims that broadcasting added. */
  while (g->ndim > ndim) {
    ember_tensor_t *s = ember_tensor_reduce(EMBER_REDUCE_SUM, g, 0, 0, NULL);
    ember_tensor_release(g);
    if (s == NULL) return NULL;
    g = s;
  }
  /* Dims that were 1 and got expanded. */
  for (int i = 0; i < ndim; i++) {
    if (shape[i] == 1 && g->shape[i] != 1) {
      ember_tensor_t *s = ember_tensor_reduce(EMBER_REDUCE_SUM, g, i, 1, NULL);
      ember_tensor_release(g);
      if (s == NULL) return NULL;
      g = s;
    }
  }
  return g;
}

/* Brings a gradient to the shape and dtype of the edge it flows into. */
static ember_tensor_t *fit_to_edge(ember_tensor_t *grad,
                                   const ember_edge_t *edge) {
  int same = grad->ndim == edge->ndim;
  for (int i = 0; same && i < edge->ndim; i++) {
    same = grad->shape[i] == edge->shape[i];
  }
  ember_tensor_t *g = grad;
  if (!same) {
    g = ember_sum_to_shape(grad, edge->shape, edge->ndim);
    ember_tensor_release(grad);
    if (g == NULL) return NULL;
    int fits = g->ndim == edge->ndim;
    for (int i = 0; fits && i < edge->ndim; i++) {
      fits = g->shape[i] == edge->shape[i];
    }
    if (!fits) {
      /* Equal numel, another rank (a 0-dim input, say). */
      ember_tensor_t *r = ember_tensor_reshape(g, edge->shape, edge->ndim, 0);
      ember_tensor_release(g);
      if (r == NULL) return NULL;
      g = r;
    }
  }
  if (g->dtype != edge->dtype && ember_dtype_is_float(edge->dtype)) {
    ember_tensor_t *c = ember_tensor_to(g, edge->dtype, 0);
    ember_tensor_release(g);
    g = c;
  }
  return g;
}

/* Adds grad into *slot, taking grad's reference. A leaf's .grad is its own
** (a private copy, then added to in place); a node's pending gradient may be
** a tensor that other nodes hold too, so it is summed out of place. */
static int accumulate(ember_tensor_t **slot, ember_tensor_t *grad,
                      int private_copy) {
  if (*slot == NULL) {
    if (private_copy) {
      ember_tensor_t *copy = ember_tensor_to(grad, grad->dtype, 1);
      ember_tensor_release(grad);
      if (copy == NULL) return EMBER_ENOMEM;
      grad = copy;
    }
    *slot = grad;
    return 0;
  }
  if (private_copy) {
    int rc = ember_tensor_binary_(EMBER_OP_ADD, *slot, grad, 1.0);
    ember_tensor_release(grad);
    return rc;
  }
  ember_tensor_t *sum = ember_tensor_binary(EMBER_OP_ADD, *slot, grad);
  ember_tensor_release(grad);
  if (sum == NULL) return EMBER_ENOMEM;
  ember_tensor_release(*slot);
  *slot = sum;
  return 0;
}

typedef struct {
  ember_node_t **items;
  size_t count, cap;
} node_list_t;

static int list_push(node_list_t *list, ember_node_t *node) {
  if (list->count == list->cap) {
    size_t cap = list->cap ? list->cap * 2 : 64;
    ember_node_t **items = realloc(list->items, cap * sizeof *items);
    if (items == NULL) return EMBER_ENOMEM;
    list->items = items;
    list->cap = cap;
  }
  list->items[list->count++] = node;
  return 0;
}

/* Every node reachable from root not seen before, each once; counts incoming
** uses in deps (across every root collected into the same list). */
static int collect(ember_node_t *root, node_list_t *all) {
  if (root->seen) return 0; /* reached from an earlier root */
  node_list_t stack = {0};
  int rc = list_push(&stack, root);
  root->seen = 1;
  root->deps = 0;
  if (rc == 0) rc = list_push(all, root);
  while (rc == 0 && stack.count > 0) {
    ember_node_t *n = stack.items[--stack.count];
    for (int i = 0; rc == 0 && i < n->n_edges; i++) {
      ember_node_t *next = n->edges[i].node;
      if (next == NULL) continue;
      if (!next->seen) {
        next->seen = 1;
        next->deps = 0;
        rc = list_push(all, next);
        if (rc == 0) rc = list_push(&stack, next);
      }
      next->deps++;
    }
  }
  free(stack.items);
  return rc;
}

static int check_saved_versions(const ember_node_t *n) {
  for (int i = 0; i < EMBER_NODE_MAX_SAVED; i++) {
    const ember_tensor_t *t = n->saved[i];
    if (t != NULL && t->storage->version != n->saved_version[i]) {
      char buf[128];
      return ember__tensor_fail(
          EMBER_EINVAL,
          "one of the tensors needed for gradient computation (saved by %s, "
          "shape %s) was modified by an in-place operation after it was used",
          n->kind->name, ember_shape_string(t->shape, t->ndim, buf, sizeof buf));
    }
  }
  return 0;
}

/* Adds a gradient for a leaf (taking grad's reference): into its .grad, or
** into the sink of this backward. */
static int accumulate_leaf(ember_tensor_t *leaf, ember_tensor_t *grad) {
  if (current_sink != NULL && current_sink->leaf != NULL) {
    return current_sink->leaf(current_sink->user, leaf, grad);
  }
  return accumulate(&leaf->grad, grad, 1);
}

static int run_node(ember_node_t *n, node_list_t *ready, int retain_graph) {
  ember_tensor_t *grads_in_small[4] = {0};
  ember_tensor_t **grads_in = grads_in_small;
  if (n->n_edges > 4) {
    grads_in = calloc((size_t)n->n_edges, sizeof *grads_in);
    if (grads_in == NULL) return EMBER_ENOMEM;
  }
  ember_tensor_t *grad = n->grad;
  n->grad = NULL;
  int rc = 0;
  if (n->released) {
    rc = ember__tensor_fail(
        EMBER_EINVAL,
        "trying to backward through the graph a second time (through %s): "
        "its saved tensors were freed; pass retain_graph=true to the first "
        "backward",
        n->kind->name);
  } else if (grad != NULL) {
    rc = check_saved_versions(n);
    if (rc == 0) rc = n->kind->apply(n, grad, grads_in);
  }
  ember_tensor_release(grad);
  for (int i = 0; i < n->n_edges; i++) {
    ember_edge_t *e = &n->edges[i];
    ember_tensor_t *g = grads_in[i];
    grads_in[i] = NULL;
    if (rc == 0 && g != NULL && (e->node != NULL || e->leaf != NULL)) {
      g = fit_to_edge(g, e);
      if (g == NULL) {
        rc = EMBER_ENOMEM;
      } else if (e->leaf != NULL) {
        rc = accumulate_leaf(e->leaf, g);
      } else {
        rc = accumulate(&e->node->grad, g, 0);
      }
    } else {
      ember_tensor_release(g);
    }
    if (e->node != NULL && --e->node->deps == 0 && rc == 0) {
      rc = list_push(ready, e->node);
    }
  }
  if (!retain_graph && rc == 0) {
    /* A node that saved nothing can run again, as in PyTorch. */
    for (int i = 0; i < EMBER_NODE_MAX_SAVED; i++) {
      if (n->saved[i] != NULL) n->released = 1;
    }
    node_free_saved(n);
  }
  if (grads_in != grads_in_small) free(grads_in);
  return rc;
}

/* dL/droot to start from, as a private tensor of root's dtype and device:
** ones for a one-element root when grad is NULL. NULL on failure. */
static ember_tensor_t *make_seed(const ember_tensor_t *root,
                                 const ember_tensor_t *grad) {
  char a[96], b[96];
  if (!root->requires_grad && root->grad_fn == NULL) {
    ember__tensor_fail(EMBER_EINVAL, "backward: the tensor does not require "
                                     "grad and has no grad_fn");
    return NULL;
  }
  if (grad == NULL) {
    if (ember_tensor_numel(root) != 1) {
      ember__tensor_fail(
          EMBER_EINVAL,
          "backward: grad can be implicitly created only for a tensor of one "
          "element, not of shape %s; pass a gradient",
          ember_shape_string(root->shape, root->ndim, a, sizeof a));
      return NULL;
    }
    ember_tensor_t *seed = ember_tensor_new(root->shape, root->ndim,
                                            root->dtype, root->storage->device);
    if (seed != NULL && seed->storage->device->fill(seed, 1.0) < 0) {
      ember_tensor_release(seed);
      seed = NULL;
    }
    return seed;
  }
  if (!ember_tensor_same_shape(root, grad)) {
    ember__tensor_fail(
        EMBER_EINVAL, "backward: gradient of shape %s for a tensor of shape %s",
        ember_shape_string(grad->shape, grad->ndim, a, sizeof a),
        ember_shape_string(root->shape, root->ndim, b, sizeof b));
    return NULL;
  }
  if (!ember_device_same(grad->storage->device, root->storage->device)) {
    /* A gradient that came over the wire lands where the tensor is. */
    return ember_tensor_to_device(grad, root->storage->device, root->dtype, 1);
  }
  return ember_tensor_to(grad, root->dtype, 1);
}

int ember_backward(ember_tensor_t *root, const ember_tensor_t *grad,
                   int retain_graph) {
  return ember_backward_many(&root, &grad, 1, retain_graph, NULL);
}

int ember_backward_many(ember_tensor_t *const *roots,
                        const ember_tensor_t *const *grads, int n,
                        int retain_graph, const ember_grad_sink_t *sink) {
  ember_tensor_t *seeds_small[8] = {0};
  ember_tensor_t **seeds = seeds_small;
  if (n < 0) return ember__tensor_fail(EMBER_EINVAL, "backward: %d roots", n);
  if (n > 8) {
    seeds = calloc((size_t)n, sizeof *seeds);
    if (seeds == NULL) return ember__tensor_fail(EMBER_ENOMEM, "out of memory");
  }
  int rc = 0;
  for (int i = 0; rc == 0 && i < n; i++) {
    seeds[i] = make_seed(roots[i], grads != NULL ? grads[i] : NULL);
    if (seeds[i] == NULL) rc = EMBER_EINVAL; /* make_seed left the message */
  }
  const ember_grad_sink_t *outer_sink = current_sink;
  int was_enabled = ember_set_grad_enabled(0);
  current_sink = sink;
  node_list_t all = {0}, ready = {0};
  /* Leaves take their seed now; nodes collect their graphs. */
  for (int i = 0; rc == 0 && i < n; i++) {
    if (roots[i]->grad_fn == NULL) {
      ember_tensor_t *seed = seeds[i];
      seeds[i] = NULL;
      rc = sink != NULL && sink->leaf != NULL
               ? sink->leaf(sink->user, roots[i], seed)
               : accumulate(&roots[i]->grad, seed, 0);
    } else {
      rc = collect(roots[i]->grad_fn, &all);
    }
  }
  /* Nodes that this backward cannot run refuse before anything changes. */
  for (size_t i = 0; rc == 0 && i < all.count; i++) {
    ember_node_t *node = all.items[i];
    if (node->check != NULL) rc = node->check(node, sink);
  }
  /* A root reached from another root runs once that one has given it its
  ** share; the others are ready now. */
  for (int i = 0; rc == 0 && i < n; i++) {
    ember_node_t *node = roots[i]->grad_fn;
    if (node == NULL) continue;
    rc = accumulate(&node->grad, seeds[i], 0);
    seeds[i] = NULL;
    if (rc == 0 && node->deps == 0 && node->seen == 1) {
      node->seen = 2; /* queued: roots may share a node */
      rc = list_push(&ready, node);
    }
  }
  while (rc == 0 && ready.count > 0) {
    rc = run_node(ready.items[--ready.count], &ready, retain_graph);
  }
  for (int i = 0; i < n; i++) ember_tensor_release(seeds[i]);
  if (seeds != seeds_small) free(seeds);
  /* Leave no engine state behind, also after a failure. */
  for (size_t i = 0; i < all.count; i++) {
    all.items[i]->seen = 0;
    all.items[i]->deps = 0;
    ember_tensor_release(all.items[i]->grad);
    all.items[i]->grad = NULL;
  }
  free(all.items);
  free(ready.items);
  current_sink = outer_sink;
  ember_set_grad_enabled(was_enabled);
  return rc;
}
