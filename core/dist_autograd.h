/*
** Distributed autograd, the C part: the node a tensor received over RPC gets
** (RecvRpcBackward), the gradients a context collects for this worker's
** leaves, and one worker's share of a distributed backward.
**
** A tensor that required grad on its sender arrives with a RecvRpcBackward
** node naming (sender, context, send id). A backward here runs the local
** graph from its roots (a loss, or the tensors this worker sent, with the
** gradients their receivers computed); leaves' gradients go into the
** context's map, not .grad; each RecvRpcBackward reached hands its gradient
** to an outbox, which lua/ember/dist_autograd.lua sends back to the sender,
** where the same happens from the send. Contexts, send tables and messages
** are Lua's; this file knows nothing of RPC.
*/
#ifndef EMBER_DIST_AUTOGRAD_H
#define EMBER_DIST_AUTOGRAD_H

#include <stddef.h>
#include <stdint.h>

#include "autograd.h"

/* Where the gradient of a received tensor goes. */
typedef struct {
  int worker;         /* the sender's rank */
  int64_t context_id; /* the distributed autograd context */
  int64_t send_id;    /* the sender's entry for the tensor it sent */
} ember_recv_info_t;

/*
** Makes t (a float tensor without grad_fn, as the wire delivers it) the
** output of a RecvRpcBackward node for `info`. Returns 0 or a negative code
** with a message.
*/
int ember_dist_attach_recv(ember_tensor_t *t, const ember_recv_info_t *info);

/* The node's info when it is a RecvRpcBackward node; else returns 0. */
int ember_dist_recv_info(const ember_node_t *node, ember_recv_info_t *info);

/* --- Gradients of leaves, by leaf ----------------------------------------- */

typedef struct ember_grad_map_s ember_grad_map_t;

ember_grad_map_t *ember_grad_map_new(void);
void ember_grad_map_free(ember_grad_map_t *map);
/* Adds grad (taking its reference) to leaf's gradient; the map keeps its
** own copy and a reference to the leaf. */
int ember_grad_map_add(ember_grad_map_t *map, ember_tensor_t *leaf,
                       ember_tensor_t *grad);
size_t ember_grad_map_count(const ember_grad_map_t *map);
/* The entry after *cursor (start at 0), borrowed, in no particular order;
** returns 0 past the last. */
int ember_grad_map_next(const ember_grad_map_t *map, size_t *cursor,
                        ember_tensor_t **leaf, ember_tensor_t **grad);
/* The gradient of leaf, or NULL; borrowed. */
ember_tensor_t *ember_grad_map_get(const ember_grad_map_t *map,
                                   const ember_tensor_t *leaf);
/* Swaps every leaf's .grad with the map's gradient for it: an optimizer
** then steps with the context's gradients; a second call puts both back. */
void ember_grad_map_swap_into_leaves(ember_grad_map_t *map);
void ember_grad_map_clear(ember_grad_map_t *map);

/* --- One worker's share of a backward --------------------------------------- */

typedef struct {
  ember_recv_info_t to;
  ember_tensor_t *grad; /* owned */
} ember_outgoing_grad_t;

typedef struct {
  ember_outgoing_grad_t *items;
  size_t count, cap;
} ember_grad_outbox_t;

void ember_grad_outbox_clear(ember_grad_outbox_t *out);

/*
** Runs the local graph from n roots (grads NULL or grads[i] NULL: ones, for
** a one-element root): leaves' gradients go into map, those of received
** tensors into out (cleared first). On failure out is left empty.
*/
int ember_dist_backward(ember_grad_map_t *map, ember_tensor_t *const *roots,
                        const ember_tensor_t *const *grads, int n,
                        int retain_graph, ember_grad_outbox_t *out);

#endif
