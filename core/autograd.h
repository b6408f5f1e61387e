/*
** Autograd: the graph that differentiable ops record, and backward().
**
** Each result of a recorded op owns a node (its grad_fn). A node holds edges
** to what produced its inputs: another node, or a leaf tensor whose .grad it
** accumulates into, plus each input's shape and dtype, so broadcasting is
** undone (summed) here rather than in every op. Saved tensors are detached
** views: a node never refers back to its own output's autograd state, so the
** graph has no cycles and reference counting frees it.
**
** Grad mode is per thread; backward runs with grad mode off (no higher-order
** gradients).
*/
#ifndef EMBER_AUTOGRAD_H
#define EMBER_AUTOGRAD_H

#include "tensor.h"

typedef struct {
  ember_node_t *node;   /* produced by a recorded op, or */
  ember_tensor_t *leaf; /* a leaf that requires grad, or neither */
  int ndim;
  int64_t shape[EMBER_MAX_DIMS];
  ember_dtype_t dtype;
} ember_edge_t;

/*
** Computes the gradients of the node's inputs from the gradient of its
** output: grads_in[i] for edge i (left NULL when no gradient flows there; a
** new reference otherwise). Returns 0 or a negative code with a message.
*/
typedef int (*ember_backward_fn)(ember_node_t *node,
                                 const ember_tensor_t *grad_out,
                                 ember_tensor_t **grads_in);

typedef struct ember_grad_sink_s ember_grad_sink_t;

typedef struct {
  const char *name; /* "AddBackward0", as PyTorch names them */
  ember_backward_fn apply;
} ember_node_kind_t;

#define EMBER_NODE_MAX_SAVED 3

struct ember_node_s {
  int refs;
  const ember_node_kind_t *kind;
  int n_edges;
  ember_edge_t *edges;
  ember_tensor_t *saved[EMBER_NODE_MAX_SAVED];
  unsigned saved_version[EMBER_NODE_MAX_SAVED];
  /* Op arguments the backward needs (dims, sizes, scalars). */
  int64_t ints[EMBER_MAX_DIMS + 2];
  double reals[2];
  int released; /* saved tensors were freed by backward without retain_graph */
  /* Engine state during one backward. */
  ember_tensor_t *grad;
  int deps;
  int seen;
  /* Set by bindings for nodes whose backward runs outside C (hooks). */
  void *user;
  void (*user_free)(void *user);
  /* Optional, for nodes that not every backward can run (distributed
  ** autograd's recv): whether a backward with this sink (NULL: leaves'
  ** .grad) can. Checked for every node before any runs, so a backward that
  ** cannot finish changes nothing. 0 or a code with a message. */
  int (*check)(const ember_node_t *node, const ember_grad_sink_t *sink);
};

int ember_grad_enabled(void);
/* Returns the previous mode. */
int ember_set_grad_enabled(int enabled);

/* Whether an op on these inputs must be recorded. */
int ember_autograd_needed(const ember_tensor_t *const *inputs, int n);

/*
** Records `out` as the result of an op of `kind` on `inputs`: creates its
** node with one edge an input. Returns the node (borrowed, owned by out) so
** the caller can save tensors and arguments, or NULL when out of memory.
*/
ember_node_t *ember_autograd_record(ember_tensor_t *out,
                                    const ember_node_kind_t *kind,
                                    const ember_tensor_t *const *inputs,
                                    int n);
/* Saves a detached view of t in slot i of node (t may be NULL). */
int ember_node_save(ember_node_t *node, int i, const ember_tensor_t *t);
void ember_node_retain(ember_node_t *node);
void ember_node_release(ember_node_t *node);

/*
** Back-propagates from root: grad is dL/droot (NULL for a single-element
** root: ones). Accumulates into the .grad of every leaf that requires grad.
** Without retain_graph the saved tensors are freed on the way, and a second
** backward through the same nodes fails with a message saying so.
*/
int ember_backward(ember_tensor_t *root, const ember_tensor_t *grad,
                   int retain_graph);

/*
** Where a backward puts what it computes, when not into leaves' .grad (the
** hooks distributed autograd uses). `leaf` takes the gradient of a leaf
** (and grad's reference); `outgoing` takes the gradient a node hands to
** another worker (a borrowed grad). Each returns 0 or a negative code with
** a message.
*/
struct ember_grad_sink_s {
  int (*leaf)(void *user, ember_tensor_t *leaf, ember_tensor_t *grad);
  int (*outgoing)(void *user, ember_node_t *node, const ember_tensor_t *grad);
  void *user;
};

/*
** Back-propagates from n roots at once: grads[i] is dL/droots[i] (grads or
** grads[i] NULL: ones, for a one-element root). A node reached from several
** roots runs once, with the sum. Gradients a root's device lacks are moved
** there. sink NULL: leaves' .grad, as ember_backward.
*/
int ember_backward_many(ember_tensor_t *const *roots,
                        const ember_tensor_t *const *grads, int n,
                        int retain_graph, const ember_grad_sink_t *sink);

/* The sink of the backward running on this thread, for node kinds whose
** gradient leaves the graph (NULL outside ember_backward_many's sink). */
const ember_grad_sink_t *ember_backward_sink(void);

/* A tensor sharing t's storage with no autograd state. */
ember_tensor_t *ember_tensor_detach(const ember_tensor_t *t);

/* Sums grad down to shape (undoing broadcasting); a new reference. */
ember_tensor_t *ember_sum_to_shape(const ember_tensor_t *grad,
                                   const int64_t *shape, int ndim);

#endif
