/*
** Helpers shared by the files that write backward formulas and op front
** ends (tensor_math.c, tensor_matmul.c, tensor_inplace.c). Internal.
*/
#ifndef EMBER_TENSOR_GRAD_H
#define EMBER_TENSOR_GRAD_H

#include "autograd.h"
#include "error.h"
#include "tensor.h"

/* ---- Temporaries in backward formulas ----------------------------------------
** Backward formulas chain several ops; a scope collects the intermediate
** results so that one call releases them, and every helper passes NULL
** (a failure further up) straight through. */

typedef struct {
  ember_tensor_t *items[16]; /* formulas keep at most a dozen */
  int n;
} scope_t;

static inline ember_tensor_t *keep(scope_t *s, ember_tensor_t *t) {
  if (t != NULL) s->items[s->n++] = t;
  return t;
}

static inline void scope_end(scope_t *s) {
  for (int i = 0; i < s->n; i++) ember_tensor_release(s->items[i]);
  s->n = 0;
}

static inline ember_tensor_t *bin(ember_binary_op_t op, const ember_tensor_t *a,
                           const ember_tensor_t *b) {
  return a != NULL && b != NULL ? ember_tensor_binary(op, a, b) : NULL;
}

static inline ember_tensor_t *bin_s(ember_binary_op_t op, const ember_tensor_t *a,
                             double s) {
  return a != NULL ? ember_tensor_binary_scalar(op, a, s, 0, 0) : NULL;
}

static inline ember_tensor_t *un(ember_unary_op_t op, const ember_tensor_t *x,
                          double a0, double a1) {
  return x != NULL ? ember_tensor_unary(op, x, a0, a1) : NULL;
}

/* Whether gradient must flow into the node's input i. */
static inline int wants(const ember_node_t *node, int i) {
  return node->edges[i].node != NULL || node->edges[i].leaf != NULL;
}

/* Everything the backward asked for was computed. */
static inline int all_set(const ember_node_t *node, ember_tensor_t **grads_in) {
  for (int i = 0; i < node->n_edges; i++) {
    /* The failing op left its message. */
    if (wants(node, i) && grads_in[i] == NULL) return EMBER_EINVAL;
  }
  return 0;
}

static inline int is_comparison(ember_binary_op_t op) {
  return op >= EMBER_OP_EQ;
}

/* Unary ops that keep an integer dtype; the rest compute in floating
** point. */
static inline int keeps_integers(ember_unary_op_t op) {
  return op == EMBER_OP_NEG || op == EMBER_OP_ABS || op == EMBER_OP_SIGN ||
         op == EMBER_OP_RELU || op == EMBER_OP_CLAMP || op == EMBER_OP_AXPB;
}

#endif
