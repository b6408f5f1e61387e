/*
** The RPC agent: outgoing calls and their futures, request ids, deadlines,
** incoming requests handed to the binding, and the counters of rpc.stats().
**
** A call is a REQUEST frame with a fresh request id; its future completes
** when the RESPONSE (done) or ERROR (failed with EMBER_EREMOTE) frame with
** that id arrives, when its deadline passes (UV_ETIMEDOUT; a later reply is
** dropped), when its peer is lost (EMBER_EPEERLOST), or when the agent closes
** (EMBER_ESHUTDOWN). Either way the payload is an ember_reply_t (a reply) or
** a message (the other failures).
**
** Thread: the loop thread only.
*/
#ifndef EMBER_AGENT_H
#define EMBER_AGENT_H

#include <stdint.h>

#include "rref.h"
#include "transport.h"

typedef struct ember_agent_s ember_agent_t;

/* What a completed call holds: the reply frame's body and tensors. */
typedef struct {
  int peer;
  ember_frame_t frame;
} ember_reply_t;

extern const ember_payload_type_t ember_reply_payload;

typedef struct {
  void *user;
  /*
  ** A request from `peer`. The callee owns `frame` (ember_frame_free) and
  ** must answer it once with ember_agent_respond, whatever happens.
  */
  void (*on_request)(void *user, int peer, ember_frame_t *frame);
  /* The peer is gone; its pending calls fail right after this returns. */
  void (*on_peer_lost)(void *user, int peer, const char *why);
  /* Optional: an undeclared peer says HELLO (see transport.h). */
  void (*on_unknown_peer)(void *user, int peer, const char *name);
  /* Optional: no other worker refers to our value `rref` any more. */
  void (*on_rref_released)(void *user, ember_rref_id_t rref);
  /*
  ** Optional: replies flagged EMBER_FLAG_PACKED_CLASSES must be decoded even
  ** if nobody reads them. on_packed_reply gets a call's future right after it
  ** completed; on_unclaimed_reply gets a reply no call waits for (late, or
  ** not ours) and takes the frame.
  */
  void (*on_packed_reply)(void *user, ember_future_t *future);
  void (*on_unclaimed_reply)(void *user, int peer, ember_frame_t *frame);
} ember_agent_callbacks_t;

/* A new agent on `loop`; free it with ember_agent_close. */
int ember_agent_new(ember_loop_t *loop, const ember_transport_opts_t *opts,
                    const ember_agent_callbacks_t *callbacks,
                    ember_agent_t **out);

ember_transport_t *ember_agent_transport(ember_agent_t *agent);

/* The agent's remote references: their control frames go through the
** agent, and a lost peer drops its forks. NULL once the agent is closed. */
ember_rrefs_t *ember_agent_rrefs(ember_agent_t *agent);

/*
** Sends a request to `peer`: `msg` is taken (as by ember_transport_send).
** `timeout_ms` 0 means no deadline. On success *out is the call's future
** (the caller owns one reference). On failure (an unknown or lost peer) no
** future is made and the code is returned with a message for
** ember_wire_error().
*/
int ember_agent_call(ember_agent_t *agent, int peer, ember_wire_msg_t *msg,
                     uint64_t timeout_ms, ember_future_t **out);

/*
** Answers request `request_id` from `peer` with msg (taken): a RESPONSE, or an
** ERROR when `failed`. A peer that is gone makes this a no-op, not an error.
*/
int ember_agent_respond(ember_agent_t *agent, int peer, uint64_t request_id,
                        int failed, ember_wire_msg_t *msg);

/*
** A future that completes when no call of ours is pending and no request is
** being served (at once if so now). The caller owns the reference.
*/
ember_future_t *ember_agent_drained(ember_agent_t *agent);

typedef struct {
  uint64_t calls_sent, calls_served, calls_failed, timeouts, late_replies;
  uint64_t pending;  /* our calls awaiting replies */
  uint64_t serving;  /* requests received and not yet answered */
} ember_agent_stats_t;

void ember_agent_stats(const ember_agent_t *agent, ember_agent_stats_t *stats);

/* The same counters for one peer (its calls to us and ours to it). */
int ember_agent_peer_stats(const ember_agent_t *agent, int peer,
                           ember_agent_stats_t *stats);

/*
** Fails every pending call with EMBER_ESHUTDOWN, closes every connection and
** frees the agent. No callback runs after this returns.
*/
void ember_agent_close(ember_agent_t *agent);

#endif
