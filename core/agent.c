/*
** The RPC agent: pending calls (a hash table by request id and a heap by
** deadline), replies, requests and counters. See agent.h.
*/
#include "agent.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

typedef struct call_s {
  uint64_t id;
  int peer;
  uint64_t deadline;  /* loop time in ms; 0 for none */
  uint64_t timeout_ms;
  size_t heap_index;  /* position in the deadline heap, if it has a deadline */
  ember_future_t *future;
  struct call_s *next; /* hash chain */
} call_t;

typedef struct {
  uint64_t sent, served, failed, timeouts, late, pending, serving;
} counters_t;

struct ember_agent_s {
  ember_handle_owner_t timer_owner; /* the deadline timer's */
  ember_loop_t *loop;
  ember_transport_t *transport;
  ember_rrefs_t *rrefs;
  ember_agent_callbacks_t cb;
  uint64_t next_id;
  call_t **buckets;
  size_t bucket_count;
  size_t call_count;
  call_t **heap;
  size_t heap_len, heap_cap;
  uv_timer_t timer;
  uint64_t timer_due; /* the deadline the timer is set for; 0 when stopped */
  /* Resends RRef control messages that wait for an answer (see rref.h). */
  uv_timer_t resend_timer;
  ember_handle_owner_t resend_owner;
  int timers_open; /* freed when both timers have closed */
  counters_t total;
  counters_t *per_peer;
  int per_peer_count;
  ember_waiters_t drain_waiters;
  int outside_work; /* the loop is kept alive for our pending calls */
};

/* --- Replies as future payloads ------------------------------------------- */

static void drop_reply(void *data) {
  ember_reply_t *reply = data;
  ember_frame_free(&reply->frame);
  free(reply);
}

const ember_payload_type_t ember_reply_payload = {"rpc reply", drop_reply};

/* --- Counters --------------------------------------------------------------- */

static counters_t *peer_counters(ember_agent_t *agent, int peer) {
  if (peer < 0)
    return NULL;
  if (peer >= agent->per_peer_count) {
    int count = peer + 8;
    counters_t *grown = realloc(agent->per_peer, (size_t)count * sizeof(*grown));
    if (grown == NULL)
      return NULL;
    memset(grown + agent->per_peer_count, 0,
           (size_t)(count - agent->per_peer_count) * sizeof(*grown));
    agent->per_peer = grown;
    agent->per_peer_count = count;
  }
  return &agent->per_peer[peer];
}

#define COUNT(agent, peer, field, delta)                                       \
  do {                                                                         \
    counters_t *c_ = peer_counters((agent), (peer));                           \
    (agent)->total.field += (delta);                                           \
    if (c_ != NULL)                                                            \
      c_->field += (delta);                                                    \
  } while (0)

static int is_drained(const ember_agent_t *agent) {
  return agent->total.pending == 0 && agent->total.serving == 0;
}

static void check_drained(ember_agent_t *agent) {
  if (is_drained(agent) && agent->drain_waiters.count > 0)
    ember_waiters_complete(&agent->drain_waiters);
}

ember_future_t *ember_agent_drained(ember_agent_t *agent) {
  return ember_waiters_add(&agent->drain_waiters, is_drained(agent));
}

/* --- The table of pending calls -------------------------------------------- */

static size_t bucket_of(const ember_agent_t *agent, uint64_t id) {
  return (size_t)(id * 0x9e3779b97f4a7c15ull >> 20) & (agent->bucket_count - 1);
}

static int grow_table(ember_agent_t *agent) {
  size_t count = agent->bucket_count ? agent->bucket_count * 2 : 1024;
  call_t **buckets = calloc(count, sizeof(*buckets));
  size_t old_count = agent->bucket_count;
  call_t **old = agent->buckets;
  if (buckets == NULL)
    return EMBER_ENOMEM;
  agent->buckets = buckets;
  agent->bucket_count = count;
  for (size_t i = 0; i < old_count; i++) {
    call_t *call = old[i];
    while (call != NULL) {
      call_t *next = call->next;
      size_t b = bucket_of(agent, call->id);
      call->next = buckets[b];
      buckets[b] = call;
      call = next;
    }
  }
  free(old);
  return 0;
}

static int table_insert(ember_agent_t *agent, call_t *call) {
  size_t b;
  if (agent->call_count >= agent->bucket_count && grow_table(agent) != 0)
    return EMBER_ENOMEM;
  b = bucket_of(agent, call->id);
  call->next = agent->buckets[b];
  agent->buckets[b] = call;
  agent->call_count++;
  return 0;
}

/* Unlinks and returns the call with `id`, or NULL. */
static call_t *table_take(ember_agent_t *agent, uint64_t id) {
  call_t **link;
  if (agent->bucket_count == 0)
    return NULL;
  link = &agent->buckets[bucket_of(agent, id)];
  while (*link != NULL && (*link)->id != id)
    link = &(*link)->next;
  if (*link == NULL)
    return NULL;
  call_t *call = *link;
  *link = call->next;
  agent->call_count--;
  return call;
}

/* --- The deadline heap ------------------------------------------------------ */

static void heap_set(ember_agent_t *agent, size_t i, call_t *call) {
  agent->heap[i] = call;
  call->heap_index = i;
}

static void heap_up(ember_agent_t *agent, size_t i) {
  call_t *call = agent->heap[i];
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (agent->heap[parent]->deadline <= call->deadline)
      break;
    heap_set(agent, i, agent->heap[parent]);
    i = parent;
  }
  heap_set(agent, i, call);
}

static void heap_down(ember_agent_t *agent, size_t i) {
  call_t *call = agent->heap[i];
  for (;;) {
    size_t child = 2 * i + 1;
    if (child >= agent->heap_len)
      break;
    if (child + 1 < agent->heap_len &&
        agent->heap[child + 1]->deadline < agent->heap[child]->deadline)
      child++;
    if (agent->heap[child]->deadline >= call->deadline)
      break;
    heap_set(agent, i, agent->heap[child]);
    i = child;
  }
  heap_set(agent, i, call);
}

static int heap_push(ember_agent_t *agent, call_t *call) {
  if (agent->heap_len == agent->heap_cap) {
    size_t cap = agent->heap_cap ? agent->heap_cap * 2 : 1024;
    call_t **grown = realloc(agent->heap, cap * sizeof(*grown));
    if (grown == NULL)
      return EMBER_ENOMEM;
    agent->heap = grown;
    agent->heap_cap = cap;
  }
  agent->heap[agent->heap_len] = call;
  heap_up(agent, agent->heap_len++);
  return 0;
}

static void heap_remove(ember_agent_t *agent, call_t *call) {
  size_t i = call->heap_index;
  call_t *last = agent->heap[--agent->heap_len];
  if (i == agent->heap_len)
    return;
  heap_set(agent, i, last);
  heap_up(agent, i);
  heap_down(agent, last->heap_index);
}

static void timer_cb(uv_timer_t *handle);

/* Keeps the timer set for the earliest deadline. */
static void arm_timer(ember_agent_t *agent) {
  uint64_t due, now;
  if (agent->heap_len == 0) {
    if (agent->timer_due != 0)
      uv_timer_stop(&agent->timer);
    agent->timer_due = 0;
    return;
  }
  due = agent->heap[0]->deadline;
  if (due == agent->timer_due)
    return;
  uv_update_time(ember_loop_uv(agent->loop));
  now = uv_now(ember_loop_uv(agent->loop));
  agent->timer_due = due;
  uv_timer_start(&agent->timer, timer_cb, due > now ? due - now : 0, 0);
}

/* --- Calls ------------------------------------------------------------------ */

static void keep_loop_alive(ember_agent_t *agent, int alive) {
  if (alive && !agent->outside_work) {
    ember_loop_outside_work_begin(agent->loop);
    agent->outside_work = 1;
  } else if (!alive && agent->outside_work) {
    ember_loop_outside_work_end(agent->loop);
    agent->outside_work = 0;
  }
}

/* Takes the call out of the table and heap; the caller completes it. */
static void call_finish(ember_agent_t *agent, call_t *call) {
  if (call->deadline != 0) {
    heap_remove(agent, call);
    arm_timer(agent);
  }
  COUNT(agent, call->peer, pending, -1);
  keep_loop_alive(agent, agent->total.pending > 0);
}

static void call_free(call_t *call) {
  ember_future_release(call->future);
  free(call);
}

/*
** Fails calls already taken out of the table and heap (a list through
** `next`). Failing one wakes code that may make calls or close the agent, so
** nothing here may touch the table or the heap.
*/
typedef struct {
  call_t *list;
  int code;
  const char *why;
} detached_t;

static void fail_all(call_t *list, int code, const char *why) {
  while (list != NULL) {
    call_t *call = list;
    list = call->next;
    ember_future_fail(call->future, code, "%s", why);
    call_free(call);
  }
}

/* Runs later than its caller when that was itself a callback: owns `d`. */
static void fail_all_cb(ember_future_t *future, void *arg) {
  detached_t *d = arg;
  (void)future;
  fail_all(d->list, d->code, d->why);
  free(d);
}

static void fail_detached(ember_agent_t *agent, call_t *list, int code,
                          const char *why) {
  detached_t *d;
  ember_future_t *batch;
  size_t len = strlen(why);
  if (list == NULL)
    return;
  /*
  ** Failing them inside a future callback queues their own callbacks until
  ** all have failed: code woken by the first sees every one failed.
  */
  d = malloc(sizeof(*d) + len + 1);
  batch = d != NULL ? ember_future_new() : NULL;
  if (batch == NULL || ember_future_add_callback(batch, fail_all_cb, d) != 0) {
    free(d);
    fail_all(list, code, why);
  } else {
    d->list = list;
    d->code = code;
    d->why = memcpy((char *)(d + 1), why, len + 1);
    ember_future_set_result(batch, NULL, NULL);
  }
  if (batch != NULL)
    ember_future_release(batch);
  check_drained(agent);
}

int ember_agent_call(ember_agent_t *agent, int peer, ember_wire_msg_t *msg,
                     uint64_t timeout_ms, ember_future_t **out) {
  call_t *call = calloc(1, sizeof(*call));
  int err;

  *out = NULL;
  if (call == NULL || (call->future = ember_future_new()) == NULL) {
    free(call);
    ember_wire_msg_free(msg);
    ember_wire_msg_init(msg);
    return EMBER_ENOMEM;
  }
  call->id = ++agent->next_id;
  call->peer = peer;
  err = ember_transport_send(agent->transport, peer, EMBER_MSG_REQUEST, 0,
                             call->id, msg);
  if (err == 0 && (err = table_insert(agent, call)) == 0 && timeout_ms > 0) {
    call->timeout_ms = timeout_ms;
    /* Calls made outside the loop find its clock stale: refresh it. */
    uv_update_time(ember_loop_uv(agent->loop));
    call->deadline = uv_now(ember_loop_uv(agent->loop)) + timeout_ms;
    if ((err = heap_push(agent, call)) != 0)
      table_take(agent, call->id);
  }
  if (err != 0) {
    /* A frame already queued still goes out; its reply will be dropped. */
    call_free(call);
    return err;
  }
  arm_timer(agent);
  COUNT(agent, peer, sent, 1);
  COUNT(agent, peer, pending, 1);
  keep_loop_alive(agent, 1);
  ember_future_retain(call->future);
  *out = call->future;
  return 0;
}

static void timer_cb(uv_timer_t *handle) {
  ember_agent_t *agent = (ember_agent_t *)((char *)handle -
                                           offsetof(ember_agent_t, timer));
  uint64_t now = uv_now(ember_loop_uv(agent->loop));
  call_t *expired = NULL;
  agent->timer_due = 0;
  /* Take them all out first: failing one runs code that may close us. */
  while (agent->heap_len > 0 && agent->heap[0]->deadline <= now) {
    call_t *call = agent->heap[0];
    table_take(agent, call->id);
    call_finish(agent, call);
    COUNT(agent, call->peer, timeouts, 1);
    COUNT(agent, call->peer, failed, 1);
    call->next = expired;
    expired = call;
  }
  arm_timer(agent);
  while (expired != NULL) {
    call_t *call = expired;
    const char *name = agent->transport != NULL
                           ? ember_transport_peer_name(agent->transport,
                                                       call->peer)
                           : NULL;
    expired = call->next;
    ember_future_fail(call->future, UV_ETIMEDOUT,
                      "the call to worker '%s' timed out after %.3g s",
                      name != NULL ? name : "?",
                      (double)call->timeout_ms / 1000.0);
    call_free(call);
  }
  check_drained(agent);
}

static void on_reply(ember_agent_t *agent, int peer, ember_frame_t *frame) {
  call_t *call = table_take(agent, frame->header.request_id);
  ember_reply_t *reply;
  int packed = (frame->header.flags & EMBER_FLAG_PACKED_CLASSES) != 0;

  if (call == NULL || call->peer != peer) {
    if (call != NULL) /* not the peer we asked: put it back */
      table_insert(agent, call);
    COUNT(agent, peer, late, 1);
    if (packed && agent->cb.on_unclaimed_reply != NULL)
      agent->cb.on_unclaimed_reply(agent->cb.user, peer, frame);
    else
      ember_frame_free(frame);
    return;
  }
  call_finish(agent, call);
  if ((reply = malloc(sizeof(*reply))) == NULL) {
    ember_frame_free(frame);
    ember_future_fail(call->future, EMBER_ENOMEM, "out of memory for a reply");
  } else {
    reply->peer = peer;
    reply->frame = *frame;
    if (frame->header.kind == EMBER_MSG_RESPONSE) {
      ember_future_set_result(call->future, &ember_reply_payload, reply);
    } else {
      COUNT(agent, peer, failed, 1);
      ember_future_set_error(call->future, EMBER_EREMOTE, &ember_reply_payload,
                             reply);
    }
    if (packed && agent->cb.on_packed_reply != NULL)
      agent->cb.on_packed_reply(agent->cb.user, call->future);
  }
  call_free(call);
  check_drained(agent);
}

/* --- Requests --------------------------------------------------------------- */

/* An RRef control message. A malformed one is logged and dropped: the peer
** keeps its connection, as it would for a request we cannot read. */
static void on_rref_frame(ember_agent_t *agent, int peer, ember_frame_t *frame) {
  if (ember_rrefs_on_frame(agent->rrefs, peer, frame->header.kind, frame->body,
                           frame->header.body_len) != 0) {
    const char *name = ember_transport_peer_name(agent->transport, peer);
    fprintf(stderr, "ember: dropped an RRef message from worker '%s': %s\n",
            name != NULL ? name : "?", ember_wire_error());
  }
  ember_frame_free(frame);
}

static void on_frame(void *user, int peer, ember_frame_t *frame) {
  ember_agent_t *agent = user;
  switch (frame->header.kind) {
  case EMBER_MSG_REQUEST:
    COUNT(agent, peer, serving, 1);
    if (agent->cb.on_request != NULL) {
      agent->cb.on_request(agent->cb.user, peer, frame);
    } else {
      ember_frame_free(frame);
      COUNT(agent, peer, serving, -1);
    }
    return;
  case EMBER_MSG_RESPONSE:
  case EMBER_MSG_ERROR:
    on_reply(agent, peer, frame);
    return;
  case EMBER_MSG_RREF_FORK:
  case EMBER_MSG_RREF_CONFIRM:
  case EMBER_MSG_RREF_DELETE:
  case EMBER_MSG_RREF_DELETE_ACK:
  case EMBER_MSG_RREF_CHILD_ACCEPT:
  case EMBER_MSG_RREF_CHILD_ACCEPT_ACK:
    on_rref_frame(agent, peer, frame);
    return;
  default:
    ember_frame_free(frame);
  }
}

int ember_agent_respond(ember_agent_t *agent, int peer, uint64_t request_id,
                        int failed, ember_wire_msg_t *msg) {
  int err = ember_transport_send(agent->transport, peer,
                                 failed ? EMBER_MSG_ERROR : EMBER_MSG_RESPONSE,
                                 0, request_id, msg);
  if (err != 0 && err != EMBER_EPEERLOST)
    return err; /* still unanswered: the caller answers again */
  COUNT(agent, peer, serving, -1);
  COUNT(agent, peer, served, 1);
  check_drained(agent);
  return 0;
}

/* Takes every pending call to `peer` (all peers when peer < 0) out of the
** table and heap; returns them as a list. */
static call_t *detach_calls_to(ember_agent_t *agent, int peer) {
  call_t *list = NULL;
  for (size_t b = 0; b < agent->bucket_count; b++) {
    call_t **link = &agent->buckets[b];
    while (*link != NULL) {
      call_t *call = *link;
      if (peer >= 0 && call->peer != peer) {
        link = &call->next;
        continue;
      }
      *link = call->next;
      agent->call_count--;
      call_finish(agent, call);
      COUNT(agent, call->peer, failed, 1);
      call->next = list;
      list = call;
    }
  }
  return list;
}

static void fail_calls_to(ember_agent_t *agent, int peer, int code,
                          const char *why) {
  fail_detached(agent, detach_calls_to(agent, peer), code, why);
}

static void on_peer_lost(void *user, int peer, int code, const char *why) {
  ember_agent_t *agent = user;
  /* The owner hears first, so that code woken by the failed calls below
  ** already knows the peer is gone. A peer that said goodbye was not lost. */
  if (agent->cb.on_peer_lost != NULL && code != EMBER_ESHUTDOWN)
    agent->cb.on_peer_lost(agent->cb.user, peer, why);
  /* Gone either way: its forks of our values, ours of its values, and the
  ** children it was to accept go too. */
  ember_rrefs_peer_lost(agent->rrefs, peer);
  fail_calls_to(agent, peer, EMBER_EPEERLOST, why);
}

static void on_unknown_peer(void *user, int peer, const char *name) {
  ember_agent_t *agent = user;
  if (agent->cb.on_unknown_peer != NULL)
    agent->cb.on_unknown_peer(agent->cb.user, peer, name);
}

static int send_rref_frame(void *user, int peer, int kind,
                           ember_wire_msg_t *msg) {
  ember_agent_t *agent = user;
  return ember_transport_send(agent->transport, peer, kind, 0, 0, msg);
}

static void on_rref_released(void *user, ember_rref_id_t rref) {
  ember_agent_t *agent = user;
  if (agent->cb.on_rref_released != NULL)
    agent->cb.on_rref_released(agent->cb.user, rref);
}

static uint64_t rref_clock(void *user) {
  ember_agent_t *agent = user;
  return uv_now(ember_loop_uv(agent->loop));
}

static void resend_cb(uv_timer_t *handle) {
  ember_agent_t *agent = (ember_agent_t *)((char *)handle -
                                           offsetof(ember_agent_t,
                                                    resend_timer));
  if (agent->rrefs != NULL)
    ember_rrefs_resend(agent->rrefs, uv_now(ember_loop_uv(agent->loop)));
}

/* --- Life cycle --------------------------------------------------------------- */

static void agent_timer_closed(ember_agent_t *agent) {
  if (--agent->timers_open == 0)
    free(agent);
}

static void timer_close_cb(uv_handle_t *handle) {
  agent_timer_closed((ember_agent_t *)((char *)handle -
                                       offsetof(ember_agent_t, timer)));
}

static void resend_close_cb(uv_handle_t *handle) {
  agent_timer_closed((ember_agent_t *)((char *)handle -
                                       offsetof(ember_agent_t, resend_timer)));
}

int ember_agent_new(ember_loop_t *loop, const ember_transport_opts_t *opts,
                    const ember_agent_callbacks_t *callbacks,
                    ember_agent_t **out) {
  ember_agent_t *agent = calloc(1, sizeof(*agent));
  ember_transport_callbacks_t tcb;
  ember_rrefs_ops_t rops;
  int err;

  *out = NULL;
  if (agent == NULL)
    return EMBER_ENOMEM;
  rops.user = agent;
  rops.send = send_rref_frame;
  rops.on_released = on_rref_released;
  rops.now_ms = rref_clock;
  if ((agent->rrefs = ember_rrefs_new(opts->id, &rops)) == NULL) {
    free(agent);
    return EMBER_ENOMEM;
  }
  agent->loop = loop;
  agent->cb = *callbacks;
  tcb.user = agent;
  tcb.on_frame = on_frame;
  tcb.on_peer_lost = on_peer_lost;
  tcb.on_unknown_peer = on_unknown_peer;
  if ((err = ember_transport_new(loop, opts, &tcb, &agent->transport)) != 0 ||
      (err = grow_table(agent)) != 0) {
    ember_transport_close(agent->transport);
    ember_rrefs_free(agent->rrefs);
    free(agent->buckets);
    free(agent);
    return err;
  }
  agent->timer_owner.close_cb = timer_close_cb;
  uv_timer_init(ember_loop_uv(loop), &agent->timer);
  agent->timer.data = &agent->timer_owner;
  /* The timer alone must not keep the loop running: pending calls do. */
  uv_unref((uv_handle_t *)&agent->timer);
  agent->resend_owner.close_cb = resend_close_cb;
  uv_timer_init(ember_loop_uv(loop), &agent->resend_timer);
  agent->resend_timer.data = &agent->resend_owner;
  uv_timer_start(&agent->resend_timer, resend_cb, EMBER_RREF_RESEND_MS,
                 EMBER_RREF_RESEND_MS);
  /* Nor does resending: whoever waits for the RRefs to settle does. */
  uv_unref((uv_handle_t *)&agent->resend_timer);
  agent->timers_open = 2;
  *out = agent;
  return 0;
}

ember_transport_t *ember_agent_transport(ember_agent_t *agent) {
  return agent->transport;
}

ember_rrefs_t *ember_agent_rrefs(ember_agent_t *agent) {
  return agent->rrefs;
}

void ember_agent_stats(const ember_agent_t *agent, ember_agent_stats_t *stats) {
  stats->calls_sent = agent->total.sent;
  stats->calls_served = agent->total.served;
  stats->calls_failed = agent->total.failed;
  stats->timeouts = agent->total.timeouts;
  stats->late_replies = agent->total.late;
  stats->pending = agent->total.pending;
  stats->serving = agent->total.serving;
}

int ember_agent_peer_stats(const ember_agent_t *agent, int peer,
                           ember_agent_stats_t *stats) {
  static const counters_t none;
  const counters_t *c = peer >= 0 && peer < agent->per_peer_count
                            ? &agent->per_peer[peer]
                            : &none;
  stats->calls_sent = c->sent;
  stats->calls_served = c->served;
  stats->calls_failed = c->failed;
  stats->timeouts = c->timeouts;
  stats->late_replies = c->late;
  stats->pending = c->pending;
  stats->serving = c->serving;
  return 0;
}

void ember_agent_close(ember_agent_t *agent) {
  if (agent == NULL)
    return;
  fail_calls_to(agent, -1, EMBER_ESHUTDOWN,
                "the RPC agent was shut down before the reply came");
  keep_loop_alive(agent, 0);
  /* Waiters on a drain that will not come complete now. */
  agent->total.pending = agent->total.serving = 0;
  check_drained(agent);
  ember_transport_close(agent->transport);
  agent->transport = NULL;
  ember_rrefs_free(agent->rrefs);
  agent->rrefs = NULL;
  free(agent->buckets);
  agent->buckets = NULL;
  agent->bucket_count = agent->call_count = 0;
  free(agent->heap);
  agent->heap = NULL;
  agent->heap_len = agent->heap_cap = 0;
  free(agent->per_peer);
  agent->per_peer = NULL;
  agent->per_peer_count = 0;
  uv_timer_stop(&agent->timer);
  uv_close((uv_handle_t *)&agent->timer, timer_close_cb);
  uv_timer_stop(&agent->resend_timer);
  uv_close((uv_handle_t *)&agent->resend_timer, resend_close_cb);
}
