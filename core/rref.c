/*
** Remote references: owner and user records and their control messages.
** See rref.h for the protocol.
*/
#include "rref.h"

#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

/* --- A map from 64-bit keys to records that start with a node ------------ */

typedef struct node_s {
  uint64_t key;
  struct node_s *next;
} node_t;

typedef struct {
  node_t **buckets;
  size_t cap; /* a power of two, or 0 */
  size_t count;
} map_t;

static size_t slot_of(const map_t *m, uint64_t key) {
  return (size_t)((key * 0x9e3779b97f4a7c15ull) >> 17) & (m->cap - 1);
}

static node_t *map_find(const map_t *m, uint64_t key) {
  if (m->cap == 0)
    return NULL;
  for (node_t *n = m->buckets[slot_of(m, key)]; n != NULL; n = n->next)
    if (n->key == key)
      return n;
  return NULL;
}

static int map_grow(map_t *m) {
  size_t cap = m->cap ? m->cap * 2 : 64;
  node_t **old = m->buckets;
  size_t old_cap = m->cap;
  node_t **buckets = calloc(cap, sizeof(*buckets));
  if (buckets == NULL)
    return EMBER_ENOMEM;
  m->buckets = buckets;
  m->cap = cap;
  for (size_t b = 0; b < old_cap; b++) {
    node_t *n = old[b];
    while (n != NULL) {
      node_t *next = n->next;
      size_t s = slot_of(m, n->key);
      n->next = buckets[s];
      buckets[s] = n;
      n = next;
    }
  }
  free(old);
  return 0;
}

static int map_put(map_t *m, node_t *n) {
  size_t s;
  if (m->count >= m->cap && map_grow(m) != 0)
    return EMBER_ENOMEM;
  s = slot_of(m, n->key);
  n->next = m->buckets[s];
  m->buckets[s] = n;
  m->count++;
  return 0;
}

static void map_remove(map_t *m, node_t *target) {
  node_t **link = &m->buckets[slot_of(m, target->key)];
  while (*link != NULL && *link != target)
    link = &(*link)->next;
  if (*link != NULL) {
    *link = target->next;
    m->count--;
  }
}

/* Every record of the map, copied out first, so that fn may remove any. */
static void map_each(map_t *m, void (*fn)(void *arg, node_t *n), void *arg) {
  node_t **all;
  size_t k = 0;
  if (m->count == 0)
    return;
  if ((all = malloc(m->count * sizeof(*all))) == NULL)
    return;
  for (size_t b = 0; b < m->cap; b++)
    for (node_t *n = m->buckets[b]; n != NULL; n = n->next)
      all[k++] = n;
  for (size_t i = 0; i < k; i++)
    fn(arg, all[i]);
  free(all);
}

/* --- Records ------------------------------------------------------------------ */

typedef struct {
  uint64_t fork;
  int holder;
} fork_t;

typedef struct {
  node_t node; /* key: the rref id */
  fork_t *forks;
  size_t fork_count, fork_cap;
} owner_t;

typedef struct {
  node_t node; /* key: our fork id */
  ember_rref_id_t rref;
  int owner, parent;
  unsigned confirmed : 1, released : 1, deleting : 1;
  unsigned forking : 1; /* our FORK awaits the owner's CONFIRM */
  uint32_t children; /* forks we sent on, not yet accepted */
  uint64_t sent_ms;  /* when the FORK or DELETE awaiting an answer went */
} user_t;

typedef struct {
  node_t node; /* key: the child's fork id */
  uint64_t parent_fork;
  int worker; /* who received it */
  int owner;  /* the value's owner: it accepts on the child's behalf */
} child_t;

/* A CHILD_ACCEPT we sent, kept until acknowledged. */
typedef struct {
  node_t node; /* key: the accepted fork id */
  int to;
  uint64_t sent_ms;
} accept_t;

struct ember_rrefs_s {
  int self;
  ember_rrefs_ops_t ops;
  uint64_t serial;
  map_t owners, users, children;
  map_t accepts; /* CHILD_ACCEPTs awaiting their ACK */
  uint64_t clock_ms; /* the time of the last ember_rrefs_resend */
  uint64_t resent;
  map_t gone; /* peers lost or left: no fork may be made for them */
  uint64_t fork_total;
  uint64_t deleting;
  uint64_t pending;
  ember_waiters_t settle_waiters;
  /*
  ** Re-entry: sending may report a peer lost, and completing waiters or
  ** releasing a value runs Lua, which may call in again. Every entry point
  ** counts its depth; losses reported inside one wait for the outermost to
  ** finish, and only the outermost completes settle waiters.
  */
  int depth;
  int *lost_later;
  size_t lost_later_count, lost_later_cap;
};

static void drop_peer(ember_rrefs_t *r, int peer);

static void enter(ember_rrefs_t *r) { r->depth++; }

static void leave(ember_rrefs_t *r) {
  if (r->depth == 1)
    while (r->lost_later_count > 0)
      drop_peer(r, r->lost_later[--r->lost_later_count]);
  if (--r->depth == 0 && r->pending == 0 && r->settle_waiters.count > 0)
    ember_waiters_complete(&r->settle_waiters);
}

/* --- Settling ------------------------------------------------------------------ */

static void pending_add(ember_rrefs_t *r, int delta) {
  r->pending += (uint64_t)(int64_t)delta;
}

ember_future_t *ember_rrefs_settled(ember_rrefs_t *r) {
  return ember_waiters_add(&r->settle_waiters, r->pending == 0);
}

/* --- Sending ------------------------------------------------------------------- */

static int msg_write(void *data, const char *buf, size_t len) {
  return ember_wire_msg_write(data, buf, len);
}

/* Sends [a] or [a, b] (ids) to `peer`. */
static int send_ids(ember_rrefs_t *r, int peer, int kind, uint64_t a,
                    uint64_t b, int count) {
  ember_wire_msg_t msg;
  msgpack_packer pk;
  ember_wire_msg_init(&msg);
  msgpack_packer_init(&pk, &msg, msg_write);
  msgpack_pack_array(&pk, (size_t)count);
  msgpack_pack_uint64(&pk, a);
  if (count > 1)
    msgpack_pack_uint64(&pk, b);
  return r->ops.send(r->ops.user, peer, kind, &msg);
}

static uint64_t now_ms(const ember_rrefs_t *r) {
  return r->ops.now_ms != NULL ? r->ops.now_ms(r->ops.user) : r->clock_ms;
}

/* Sends CHILD_ACCEPT of `fork` to `to` and keeps it until acknowledged. */
static void send_accept(ember_rrefs_t *r, int to, uint64_t fork) {
  accept_t *a = (accept_t *)map_find(&r->accepts, fork);
  if (send_ids(r, to, EMBER_MSG_RREF_CHILD_ACCEPT, fork, 0, 1) != 0)
    return; /* the peer is gone: nobody waits for it */
  if (a == NULL) {
    if ((a = calloc(1, sizeof(*a))) == NULL)
      return; /* sent once, not kept: at worst its parent's fork leaks */
    a->node.key = fork;
    if (map_put(&r->accepts, &a->node) != 0) {
      free(a);
      return;
    }
    pending_add(r, 1);
  }
  a->to = to;
  a->sent_ms = now_ms(r);
}

static void accept_free(ember_rrefs_t *r, accept_t *a) {
  map_remove(&r->accepts, &a->node);
  free(a);
  pending_add(r, -1);
}

/* --- Life cycle ----------------------------------------------------------------- */

ember_rrefs_t *ember_rrefs_new(int self, const ember_rrefs_ops_t *ops) {
  ember_rrefs_t *r = calloc(1, sizeof(*r));
  if (r == NULL)
    return NULL;
  r->self = self;
  r->ops = *ops;
  return r;
}

static void free_map(map_t *m, int owners) {
  for (size_t b = 0; b < m->cap; b++) {
    node_t *n = m->buckets[b];
    while (n != NULL) {
      node_t *next = n->next;
      if (owners)
        free(((owner_t *)n)->forks);
      free(n);
      n = next;
    }
  }
  free(m->buckets);
  memset(m, 0, sizeof(*m));
}

void ember_rrefs_free(ember_rrefs_t *r) {
  if (r == NULL)
    return;
  free_map(&r->owners, 1);
  free_map(&r->users, 0);
  free_map(&r->children, 0);
  free_map(&r->accepts, 0);
  free_map(&r->gone, 0);
  free(r->lost_later);
  ember_waiters_complete(&r->settle_waiters);
  free(r);
}

ember_rref_id_t ember_rrefs_new_id(ember_rrefs_t *r) {
  return ((uint64_t)(uint32_t)r->self << EMBER_RREF_SERIAL_BITS) | ++r->serial;
}

int ember_rref_creator(ember_rref_id_t id) {
  return (int)(id >> EMBER_RREF_SERIAL_BITS);
}

static int check_peer(const ember_rrefs_t *r, int peer) {
  if (map_find(&r->gone, (uint64_t)(uint32_t)peer) != NULL)
    return ember__wire_fail(EMBER_EPEERLOST, "worker %d is gone: an RRef "
                            "cannot be shared with it", peer);
  return 0;
}

/* --- Owner side ------------------------------------------------------------------ */

static owner_t *find_owner(const ember_rrefs_t *r, ember_rref_id_t rref) {
  return (owner_t *)map_find(&r->owners, rref);
}

int ember_rrefs_owner_add_fork(ember_rrefs_t *r, ember_rref_id_t rref,
                               uint64_t fork, int holder) {
  owner_t *o = find_owner(r, rref);
  int err = check_peer(r, holder);
  if (err != 0)
    return err;
  if (o == NULL) {
    if ((o = calloc(1, sizeof(*o))) == NULL)
      return ember__wire_fail(EMBER_ENOMEM, "out of memory for an RRef");
    o->node.key = rref;
    if (map_put(&r->owners, &o->node) != 0) {
      free(o);
      return ember__wire_fail(EMBER_ENOMEM, "out of memory for an RRef");
    }
  }
  for (size_t i = 0; i < o->fork_count; i++)
    if (o->forks[i].fork == fork)
      return 0;
  if (o->fork_count == o->fork_cap) {
    size_t cap = o->fork_cap ? o->fork_cap * 2 : 2;
    fork_t *grown = realloc(o->forks, cap * sizeof(*grown));
    if (grown == NULL)
      return ember__wire_fail(EMBER_ENOMEM, "out of memory for an RRef");
    o->forks = grown;
    o->fork_cap = cap;
  }
  o->forks[o->fork_count].fork = fork;
  o->forks[o->fork_count].holder = holder;
  o->fork_count++;
  r->fork_total++;
  return 0;
}

/* Removes fork i of o; a value with no fork left is released. */
static void owner_drop_fork(ember_rrefs_t *r, owner_t *o, size_t i) {
  ember_rref_id_t rref = o->node.key;
  o->forks[i] = o->forks[--o->fork_count];
  r->fork_total--;
  if (o->fork_count > 0)
    return;
  map_remove(&r->owners, &o->node);
  free(o->forks);
  free(o);
  if (r->ops.on_released != NULL)
    r->ops.on_released(r->ops.user, rref);
}

/* Drops fork `fork` of our value; with check_holder, only when `holder`
** holds it (a DELETE from anyone else is ignored). */
static void owner_del_fork(ember_rrefs_t *r, ember_rref_id_t rref,
                           uint64_t fork, int holder, int check_holder) {
  owner_t *o = find_owner(r, rref);
  if (o == NULL)
    return;
  for (size_t i = 0; i < o->fork_count; i++)
    if (o->forks[i].fork == fork) {
      if (!check_holder || o->forks[i].holder == holder)
        owner_drop_fork(r, o, i);
      return;
    }
}

void ember_rrefs_owner_received(ember_rrefs_t *r, uint64_t fork, int parent) {
  enter(r);
  if (parent != r->self)
    send_accept(r, parent, fork);
  leave(r);
}

int ember_rrefs_owner_forks(const ember_rrefs_t *r, ember_rref_id_t rref) {
  const owner_t *o = find_owner(r, rref);
  return o != NULL ? (int)o->fork_count : 0;
}

/* --- User side ----------------------------------------------------------------------- */

static user_t *find_user(const ember_rrefs_t *r, uint64_t fork) {
  return (user_t *)map_find(&r->users, fork);
}

static void user_free(ember_rrefs_t *r, user_t *u) {
  if (!u->confirmed)
    pending_add(r, -1);
  if (u->deleting) {
    r->deleting--;
    pending_add(r, -1);
  }
  map_remove(&r->users, &u->node);
  free(u);
}

/* Deletes the fork at its owner once nothing keeps it. */
static void user_try_delete(ember_rrefs_t *r, user_t *u) {
  if (!u->released || !u->confirmed || u->children > 0 || u->deleting)
    return;
  u->deleting = 1;
  u->sent_ms = now_ms(r);
  r->deleting++;
  pending_add(r, 1);
  if (send_ids(r, u->owner, EMBER_MSG_RREF_DELETE, u->rref, u->node.key, 2) != 0)
    user_free(r, u); /* the owner is gone: nothing to tell it */
}

static int user_new(ember_rrefs_t *r, ember_rref_id_t rref, uint64_t fork,
                    int owner, int parent) {
  user_t *u;
  int err = check_peer(r, owner);
  if (err != 0)
    return err;
  if (owner == r->self)
    return ember__wire_fail(EMBER_EINVAL, "an RRef owned by this worker "
                            "cannot be held here as a user RRef");
  if (find_user(r, fork) != NULL)
    return ember__wire_fail(EMBER_EINVAL, "RRef fork %llu arrived twice",
                            (unsigned long long)fork);
  if ((u = calloc(1, sizeof(*u))) == NULL)
    return ember__wire_fail(EMBER_ENOMEM, "out of memory for an RRef");
  u->node.key = fork;
  u->rref = rref;
  u->owner = owner;
  u->parent = parent;
  u->confirmed = parent == owner;
  if (map_put(&r->users, &u->node) != 0) {
    free(u);
    return ember__wire_fail(EMBER_ENOMEM, "out of memory for an RRef");
  }
  if (!u->confirmed)
    pending_add(r, 1);
  if (parent != owner && parent != r->self) {
    u->forking = 1;
    u->sent_ms = now_ms(r);
    if (send_ids(r, owner, EMBER_MSG_RREF_FORK, rref, fork, 2) != 0)
      user_free(r, u); /* the owner is gone; the value with it */
  }
  return 0;
}

int ember_rrefs_user_new(ember_rrefs_t *r, ember_rref_id_t rref, uint64_t fork,
                         int owner, int parent) {
  int err;
  enter(r);
  err = user_new(r, rref, fork, owner, parent);
  leave(r);
  return err;
}

static void user_confirm(ember_rrefs_t *r, user_t *u) {
  if (u->confirmed)
    return;
  u->confirmed = 1;
  pending_add(r, -1);
  if (u->parent != u->owner && u->parent != r->self)
    send_accept(r, u->parent, u->node.key);
  user_try_delete(r, u);
}

void ember_rrefs_user_confirm(ember_rrefs_t *r, uint64_t fork) {
  user_t *u = find_user(r, fork);
  enter(r);
  if (u != NULL)
    user_confirm(r, u);
  leave(r);
}

int ember_rrefs_user_state(const ember_rrefs_t *r, uint64_t fork) {
  const user_t *u = find_user(r, fork);
  if (u == NULL || u->deleting)
    return -1;
  return u->confirmed ? 1 : 0;
}

static void user_release(ember_rrefs_t *r, user_t *u) {
  if (u->released)
    return;
  u->released = 1;
  user_try_delete(r, u);
}

void ember_rrefs_user_release(ember_rrefs_t *r, uint64_t fork) {
  user_t *u = find_user(r, fork);
  enter(r);
  if (u != NULL)
    user_release(r, u);
  leave(r);
}

int ember_rrefs_user_add_child(ember_rrefs_t *r, uint64_t parent_fork,
                               uint64_t child_fork, int to) {
  user_t *u = find_user(r, parent_fork);
  child_t *c;
  int err = check_peer(r, to);
  if (err != 0)
    return err;
  if (u == NULL || u->released)
    return ember__wire_fail(EMBER_EINVAL, "this RRef was already deleted");
  if ((c = calloc(1, sizeof(*c))) == NULL)
    return ember__wire_fail(EMBER_ENOMEM, "out of memory for an RRef");
  c->node.key = child_fork;
  c->parent_fork = parent_fork;
  c->worker = to;
  c->owner = u->owner;
  if (map_put(&r->children, &c->node) != 0) {
    free(c);
    return ember__wire_fail(EMBER_ENOMEM, "out of memory for an RRef");
  }
  u->children++;
  pending_add(r, 1);
  return 0;
}

/* The child was accepted (or will never be): the parent's fork may go. */
static void child_done(ember_rrefs_t *r, child_t *c) {
  user_t *parent = find_user(r, c->parent_fork);
  map_remove(&r->children, &c->node);
  free(c);
  pending_add(r, -1);
  if (parent != NULL) {
    parent->children--;
    user_try_delete(r, parent);
  }
}

void ember_rrefs_cancel_fork(ember_rrefs_t *r, ember_rref_id_t rref,
                             uint64_t fork) {
  child_t *c = (child_t *)map_find(&r->children, fork);
  enter(r);
  if (c != NULL)
    child_done(r, c);
  else
    owner_del_fork(r, rref, fork, r->self, 0);
  leave(r);
}

/* --- Messages ------------------------------------------------------------------------- */

/* Reads [id] or [id, id] from a control body. */
static int read_ids(const char *body, size_t len, uint64_t *ids, int count) {
  ember_wire_token_t token;
  size_t pos = 0;
  int err;
  if ((err = ember_wire_read_token(body, len, &pos, &token)) != 0)
    return err;
  if (token.type != EMBER_WIRE_ARRAY || token.length != (uint32_t)count)
    return ember__wire_fail(EMBER_EINVAL, "an RRef control message must be "
                            "an array of %d ids", count);
  for (int i = 0; i < count; i++) {
    if ((err = ember_wire_read_token(body, len, &pos, &token)) != 0)
      return err;
    if (token.type == EMBER_WIRE_UINT)
      ids[i] = token.v.u;
    else if (token.type == EMBER_WIRE_INT && token.v.i >= 0)
      ids[i] = (uint64_t)token.v.i;
    else
      return ember__wire_fail(EMBER_EINVAL, "an RRef id must be a positive "
                              "integer, not a %s",
                              ember_wire_token_name(token.type));
  }
  if (pos != len)
    return ember__wire_fail(EMBER_EINVAL, "trailing bytes after an RRef "
                            "control message");
  return 0;
}

static void on_fork(ember_rrefs_t *r, int peer, const uint64_t *ids) {
  if (ember_rrefs_owner_add_fork(r, ids[0], ids[1], peer) == 0)
    send_ids(r, peer, EMBER_MSG_RREF_CONFIRM, ids[1], 0, 1);
}

static void on_delete(ember_rrefs_t *r, int peer, const uint64_t *ids) {
  owner_del_fork(r, ids[0], ids[1], peer, 1);
  send_ids(r, peer, EMBER_MSG_RREF_DELETE_ACK, ids[1], 0, 1);
}

static void on_delete_ack(ember_rrefs_t *r, int peer, uint64_t fork) {
  user_t *u = find_user(r, fork);
  if (u != NULL && u->deleting && u->owner == peer)
    user_free(r, u);
}

/* From the child's holder, or from the owner when the child went to it. */
static void on_child_accept(ember_rrefs_t *r, int peer, uint64_t fork) {
  child_t *c = (child_t *)map_find(&r->children, fork);
  if (c != NULL && (peer == c->worker || peer == c->owner))
    child_done(r, c);
}

static void on_child_accept_ack(ember_rrefs_t *r, int peer, uint64_t fork) {
  accept_t *a = (accept_t *)map_find(&r->accepts, fork);
  if (a != NULL && a->to == peer)
    accept_free(r, a);
}

static void on_confirm(ember_rrefs_t *r, int peer, uint64_t fork) {
  user_t *u = find_user(r, fork);
  if (u != NULL && u->owner == peer)
    user_confirm(r, u);
}

int ember_rrefs_on_frame(ember_rrefs_t *r, int peer, int kind,
                         const char *body, size_t len) {
  uint64_t ids[2];
  int two = kind == EMBER_MSG_RREF_FORK || kind == EMBER_MSG_RREF_DELETE;
  int err = read_ids(body, len, ids, two ? 2 : 1);
  if (err != 0)
    return err;
  enter(r);
  switch (kind) {
  case EMBER_MSG_RREF_FORK:
    on_fork(r, peer, ids);
    break;
  case EMBER_MSG_RREF_CONFIRM:
    on_confirm(r, peer, ids[0]);
    break;
  case EMBER_MSG_RREF_DELETE:
    on_delete(r, peer, ids);
    break;
  case EMBER_MSG_RREF_DELETE_ACK:
    on_delete_ack(r, peer, ids[0]);
    break;
  case EMBER_MSG_RREF_CHILD_ACCEPT:
    /* Acknowledged every time: the first answer may have been lost. */
    send_ids(r, peer, EMBER_MSG_RREF_CHILD_ACCEPT_ACK, ids[0], 0, 1);
    on_child_accept(r, peer, ids[0]);
    break;
  case EMBER_MSG_RREF_CHILD_ACCEPT_ACK:
    on_child_accept_ack(r, peer, ids[0]);
    break;
  default:
    err = ember__wire_fail(EMBER_EINVAL, "frame kind %d is not an RRef "
                           "control message", kind);
  }
  leave(r);
  return err;
}

/* --- Lost peers ------------------------------------------------------------------------- */

typedef struct {
  ember_rrefs_t *r;
  int peer;
} lost_t;

static void drop_forks_held_by(void *arg, node_t *n) {
  lost_t *lost = arg;
  owner_t *o = (owner_t *)n;
  size_t i = o->fork_count;
  /* Backwards: dropping fork i moves the last one into its place, and the
  ** record itself goes with the last fork. */
  while (i-- > 0) {
    int last = o->fork_count == 1;
    if (o->forks[i].holder == lost->peer) {
      owner_drop_fork(lost->r, o, i);
      if (last)
        return;
    }
  }
}

static void drop_users_of(void *arg, node_t *n) {
  lost_t *lost = arg;
  user_t *u = (user_t *)n;
  if (u->owner == lost->peer)
    user_free(lost->r, u);
}

/* A child sent to the lost peer, or of a value the lost peer owned, will
** never be accepted. */
static void drop_children_at(void *arg, node_t *n) {
  lost_t *lost = arg;
  child_t *c = (child_t *)n;
  if (c->worker == lost->peer || c->owner == lost->peer)
    child_done(lost->r, c);
}

static void drop_accepts_to(void *arg, node_t *n) {
  lost_t *lost = arg;
  accept_t *a = (accept_t *)n;
  if (a->to == lost->peer)
    accept_free(lost->r, a);
}

static void drop_peer(ember_rrefs_t *r, int peer) {
  lost_t lost = {r, peer};
  node_t *gone;
  if (map_find(&r->gone, (uint64_t)(uint32_t)peer) == NULL &&
      (gone = calloc(1, sizeof(*gone))) != NULL) {
    gone->key = (uint64_t)(uint32_t)peer;
    if (map_put(&r->gone, gone) != 0)
      free(gone);
  }
  map_each(&r->owners, drop_forks_held_by, &lost);
  map_each(&r->users, drop_users_of, &lost);
  map_each(&r->children, drop_children_at, &lost);
  map_each(&r->accepts, drop_accepts_to, &lost);
}

void ember_rrefs_peer_lost(ember_rrefs_t *r, int peer) {
  if (r->depth > 0) {
    /* Reported from inside an entry point (a send that failed): later. */
    if (r->lost_later_count == r->lost_later_cap) {
      size_t cap = r->lost_later_cap ? r->lost_later_cap * 2 : 4;
      int *grown = realloc(r->lost_later, cap * sizeof(*grown));
      if (grown == NULL)
        return;
      r->lost_later = grown;
      r->lost_later_cap = cap;
    }
    r->lost_later[r->lost_later_count++] = peer;
    return;
  }
  enter(r);
  drop_peer(r, peer);
  leave(r);
}

/* --- Counters and shutdown ------------------------------------------------------------------ */

void ember_rrefs_stats(const ember_rrefs_t *r, ember_rrefs_stats_t *stats) {
  stats->owners = r->owners.count;
  stats->forks = r->fork_total;
  stats->users = r->users.count - r->deleting;
  stats->pending = r->pending;
  stats->resent = r->resent;
}

void ember_rrefs_each_held(const ember_rrefs_t *r,
                           void (*fn)(void *arg, ember_rref_id_t rref,
                                      uint64_t fork, int owner),
                           void *arg) {
  /* Copied first: fn may run Lua, whose collector may release forks. */
  user_t *held = malloc((r->users.count + 1) * sizeof(*held));
  size_t n = 0;
  if (held == NULL)
    return;
  for (size_t b = 0; b < r->users.cap; b++)
    for (node_t *node = r->users.buckets[b]; node != NULL; node = node->next)
      if (!((const user_t *)node)->released)
        held[n++] = *(const user_t *)node;
  for (size_t i = 0; i < n; i++)
    fn(arg, held[i].rref, held[i].node.key, held[i].owner);
  free(held);
}

static void release_one(void *arg, node_t *n) {
  user_release(arg, (user_t *)n);
}

void ember_rrefs_release_all(ember_rrefs_t *r) {
  enter(r);
  map_each(&r->users, release_one, r);
  leave(r);
}

/* --- Resending ------------------------------------------------------------------------------ */

typedef struct {
  ember_rrefs_t *r;
  uint64_t now;
  int sent;
} resend_t;

static int due(const resend_t *rs, uint64_t sent_ms) {
  return rs->now >= sent_ms && rs->now - sent_ms >= EMBER_RREF_RESEND_MS;
}

/* A send that fails means the peer is gone: its loss, reported by the
** transport, drops the record. */
static void resend_user(void *arg, node_t *n) {
  resend_t *rs = arg;
  user_t *u = (user_t *)n;
  if (u->forking && !u->confirmed && due(rs, u->sent_ms)) {
    u->sent_ms = rs->now;
    rs->sent++;
    send_ids(rs->r, u->owner, EMBER_MSG_RREF_FORK, u->rref, u->node.key, 2);
  } else if (u->deleting && due(rs, u->sent_ms)) {
    u->sent_ms = rs->now;
    rs->sent++;
    send_ids(rs->r, u->owner, EMBER_MSG_RREF_DELETE, u->rref, u->node.key, 2);
  }
}

static void resend_accept(void *arg, node_t *n) {
  resend_t *rs = arg;
  accept_t *a = (accept_t *)n;
  if (!due(rs, a->sent_ms))
    return;
  a->sent_ms = rs->now;
  rs->sent++;
  send_ids(rs->r, a->to, EMBER_MSG_RREF_CHILD_ACCEPT, a->node.key, 0, 1);
}

int ember_rrefs_resend(ember_rrefs_t *r, uint64_t now) {
  resend_t rs = {r, now, 0};
  r->clock_ms = now;
  if (r->pending == 0)
    return 0;
  enter(r);
  map_each(&r->users, resend_user, &rs);
  map_each(&r->accepts, resend_accept, &rs);
  r->resent += (uint64_t)rs.sent;
  leave(r);
  return rs.sent;
}
