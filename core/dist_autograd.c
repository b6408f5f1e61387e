/*
** Distributed autograd: RecvRpcBackward nodes, the gradient map of a
** context, and one worker's share of a backward (see dist_autograd.h).
*/
#include <stdlib.h>
#include <string.h>

#include "dist_autograd.h"
#include "error.h"
#include "rref.h" /* context ids are laid out as RRef ids */

/* --- RecvRpcBackward ---------------------------------------------------------- */

/* Its input is on another worker: only a backward with a sink that sends
** gradients there can run it. */
static int recv_check(const ember_node_t *node, const ember_grad_sink_t *sink) {
  if (sink != NULL && sink->outgoing != NULL) return 0;
  return ember__tensor_fail(
      EMBER_EINVAL,
      "backward: the graph reaches a tensor received over RPC in "
      "distributed autograd context %lld:%lld (from worker %lld); use "
      "dist_autograd.backward(ctx, {loss}) inside that context",
      (long long)(node->ints[1] >> EMBER_RREF_SERIAL_BITS),
      (long long)(node->ints[1] & ((INT64_C(1) << EMBER_RREF_SERIAL_BITS) - 1)),
      (long long)node->ints[0]);
}

static int recv_apply(ember_node_t *node, const ember_tensor_t *grad_out,
                      ember_tensor_t **grads_in) {
  (void)grads_in;
  const ember_grad_sink_t *sink = ember_backward_sink();
  int rc = recv_check(node, sink);
  return rc != 0 ? rc : sink->outgoing(sink->user, node, grad_out);
}

static const ember_node_kind_t recv_kind = {"RecvRpcBackward", recv_apply};

int ember_dist_attach_recv(ember_tensor_t *t, const ember_recv_info_t *info) {
  if (t->grad_fn != NULL) {
    return ember__tensor_fail(EMBER_EINVAL, "dist_autograd: a received tensor "
                                            "already has a grad_fn");
  }
  if (!ember_dtype_is_float(t->dtype)) {
    return ember__tensor_fail(EMBER_EINVAL,
                              "dist_autograd: a %s tensor cannot require grad",
                              ember_dtype_name(t->dtype));
  }
  ember_node_t *node = ember_autograd_record(t, &recv_kind, NULL, 0);
  if (node == NULL) return EMBER_ENOMEM;
  node->check = recv_check;
  node->ints[0] = info->worker;
  node->ints[1] = info->context_id;
  node->ints[2] = info->send_id;
  return 0;
}

int ember_dist_recv_info(const ember_node_t *node, ember_recv_info_t *info) {
  if (node == NULL || node->kind != &recv_kind) return 0;
  info->worker = (int)node->ints[0];
  info->context_id = node->ints[1];
  info->send_id = node->ints[2];
  return 1;
}

/* --- The gradient map: open addressing on the leaf's address ------------------ */

typedef struct {
  ember_tensor_t *leaf; /* NULL: empty */
  ember_tensor_t *grad;
} slot_t;

struct ember_grad_map_s {
  slot_t *slots;
  size_t cap; /* a power of two, or 0 */
  size_t count;
};

ember_grad_map_t *ember_grad_map_new(void) {
  ember_grad_map_t *map = calloc(1, sizeof *map);
  if (map == NULL) ember__tensor_fail(EMBER_ENOMEM, "out of memory");
  return map;
}

void ember_grad_map_clear(ember_grad_map_t *map) {
  for (size_t i = 0; i < map->cap; i++) {
    ember_tensor_release(map->slots[i].leaf);
    ember_tensor_release(map->slots[i].grad);
  }
  free(map->slots);
  map->slots = NULL;
  map->cap = map->count = 0;
}

void ember_grad_map_free(ember_grad_map_t *map) {
  if (map == NULL) return;
  ember_grad_map_clear(map);
  free(map);
}

static size_t hash_pointer(const void *p) {
  uint64_t x = (uint64_t)(uintptr_t)p;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  return (size_t)x;
}

/* The slot of leaf, or the empty one where it would go. */
static slot_t *find_slot(slot_t *slots, size_t cap, const ember_tensor_t *leaf) {
  size_t i = hash_pointer(leaf) & (cap - 1);
  while (slots[i].leaf != NULL && slots[i].leaf != leaf) i = (i + 1) & (cap - 1);
  return &slots[i];
}

static int grow(ember_grad_map_t *map) {
  size_t cap = map->cap ? map->cap * 2 : 16;
  slot_t *slots = calloc(cap, sizeof *slots);
  if (slots == NULL) return ember__tensor_fail(EMBER_ENOMEM, "out of memory");
  for (size_t i = 0; i < map->cap; i++) {
    if (map->slots[i].leaf != NULL) {
      *find_slot(slots, cap, map->slots[i].leaf) = map->slots[i];
    }
  }
  free(map->slots);
  map->slots = slots;
  map->cap = cap;
  return 0;
}

int ember_grad_map_add(ember_grad_map_t *map, ember_tensor_t *leaf,
                       ember_tensor_t *grad) {
  int rc = 0;
  if ((map->count + 1) * 4 > map->cap * 3) rc = grow(map);
  if (rc != 0) {
    ember_tensor_release(grad);
    return rc;
  }
  slot_t *slot = find_slot(map->slots, map->cap, leaf);
  if (slot->leaf != NULL) {
    rc = ember_tensor_binary_(EMBER_OP_ADD, slot->grad, grad, 1.0);
    ember_tensor_release(grad);
    return rc;
  }
  /* Private: later gradients are added into it in place. */
  ember_tensor_t *own = ember_tensor_copy_detached(grad);
  ember_tensor_release(grad);
  if (own == NULL) return EMBER_ENOMEM;
  ember_tensor_retain(leaf);
  slot->leaf = leaf;
  slot->grad = own;
  map->count++;
  return 0;
}

size_t ember_grad_map_count(const ember_grad_map_t *map) { return map->count; }

int ember_grad_map_next(const ember_grad_map_t *map, size_t *cursor,
                        ember_tensor_t **leaf, ember_tensor_t **grad) {
  for (size_t s = *cursor; s < map->cap; s++) {
    if (map->slots[s].leaf == NULL) continue;
    *leaf = map->slots[s].leaf;
    *grad = map->slots[s].grad;
    *cursor = s + 1;
    return 1;
  }
  return 0;
}

ember_tensor_t *ember_grad_map_get(const ember_grad_map_t *map,
                                   const ember_tensor_t *leaf) {
  if (map->cap == 0) return NULL;
  slot_t *slot = find_slot(map->slots, map->cap, leaf);
  return slot->leaf != NULL ? slot->grad : NULL;
}

void ember_grad_map_swap_into_leaves(ember_grad_map_t *map) {
  for (size_t i = 0; i < map->cap; i++) {
    slot_t *slot = &map->slots[i];
    if (slot->leaf == NULL) continue;
    ember_tensor_t *held = slot->leaf->grad;
    slot->leaf->grad = slot->grad;
    slot->grad = held;
  }
}

/* --- One worker's share ----------------------------------------------------- */

void ember_grad_outbox_clear(ember_grad_outbox_t *out) {
  for (size_t i = 0; i < out->count; i++) ember_tensor_release(out->items[i].grad);
  free(out->items);
  out->items = NULL;
  out->count = out->cap = 0;
}

static int sink_leaf(void *user, ember_tensor_t *leaf, ember_tensor_t *grad) {
  ember_grad_map_t *map = ((void **)user)[0];
  return ember_grad_map_add(map, leaf, grad);
}

static int sink_outgoing(void *user, ember_node_t *node,
                         const ember_tensor_t *grad) {
  ember_grad_outbox_t *out = ((void **)user)[1];
  if (out->count == out->cap) {
    size_t cap = out->cap ? out->cap * 2 : 8;
    ember_outgoing_grad_t *items = realloc(out->items, cap * sizeof *items);
    if (items == NULL) return ember__tensor_fail(EMBER_ENOMEM, "out of memory");
    out->items = items;
    out->cap = cap;
  }
  ember_outgoing_grad_t *item = &out->items[out->count];
  ember_dist_recv_info(node, &item->to);
  /* Only read from now on (sent), so shared with the engine. */
  item->grad = (ember_tensor_t *)grad;
  ember_tensor_retain(item->grad);
  out->count++;
  return 0;
}

int ember_dist_backward(ember_grad_map_t *map, ember_tensor_t *const *roots,
                        const ember_tensor_t *const *grads, int n,
                        int retain_graph, ember_grad_outbox_t *out) {
  void *both[2] = {map, out};
  ember_grad_sink_t sink = {sink_leaf, sink_outgoing, both};
  ember_grad_outbox_clear(out);
  int rc = ember_backward_many(roots, grads, n, retain_graph, &sink);
  if (rc != 0) ember_grad_outbox_clear(out);
  return rc;
}
