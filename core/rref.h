/*
** Remote references: their ids, the owner's table of forks, and the users'
** half of the fork/confirm/delete protocol of PyTorch's RRef design.
**
** A value lives on its owner. Every other worker that holds a reference to it
** holds a "fork" with an id of its own, and the owner keeps the value while
** any fork is registered with it. Forks come into being three ways:
**
**   remote()       the caller makes the id (rref id == fork id) and the owner
**                  registers the fork when the creation request arrives; the
**                  caller's fork is confirmed when the request is answered.
**   owner -> U     the owner registers U's fork before sending ("early fork
**                  registration"); U's fork is confirmed on arrival.
**   user A -> B    A keeps a "child" record, which keeps A's own fork from
**                  being deleted; B sends FORK to the owner, the owner
**                  registers it and answers CONFIRM, and B tells A
**                  CHILD_ACCEPT, which drops the child record. A sending to
**                  the owner itself gets CHILD_ACCEPT from the owner.
**
** So the owner never sees its last fork deleted while a fork it has not yet
** registered is on its way. A user's fork is deleted (DELETE to the owner,
** answered by DELETE_ACK) once Lua dropped it, it is confirmed, and no child
** of it is pending. Control message bodies are msgpack arrays of ids.
**
** Every message is idempotent on arrival: a repeated FORK confirms again, a
** DELETE of an unknown fork is acknowledged, a CHILD_ACCEPT is acknowledged
** (CHILD_ACCEPT_ACK) each time, unknown CONFIRMs and ACKs are ignored. So
** every message that awaits an answer is simply sent again until it comes
** (ember_rrefs_resend): an unconfirmed FORK, an unacknowledged DELETE, and
** a CHILD_ACCEPT, which its sender keeps until acknowledged. A link that
** loses a message (or fault injection, see faults.h) delays settling but
** leaks nothing. A lost peer drops the forks it held, the forks we held of
** its values, the children we were waiting for it to accept and the accepts
** we owed it.
**
** Thread: the loop thread only.
*/
#ifndef EMBER_RREF_H
#define EMBER_RREF_H

#include <stdint.h>

#include "future.h"
#include "wire.h"

/* (creating worker << EMBER_RREF_SERIAL_BITS) | serial: unique in a world. */
typedef uint64_t ember_rref_id_t;
#define EMBER_RREF_SERIAL_BITS 40

typedef struct ember_rrefs_s ember_rrefs_t;

typedef struct {
  void *user;
  /* Sends a control frame of `kind` with `msg` as its body (msg is taken).
  ** Returns 0, or EMBER_EPEERLOST when the peer is gone. */
  int (*send)(void *user, int peer, int kind, ember_wire_msg_t *msg);
  /* The last fork of an owned value is gone: no other worker refers to it. */
  void (*on_released)(void *user, ember_rref_id_t rref);
  /* Optional: the time in ms (the loop's clock), stamped on each message
  ** sent so that ember_rrefs_resend knows its age. NULL: the time of the
  ** last ember_rrefs_resend. */
  uint64_t (*now_ms)(void *user);
} ember_rrefs_ops_t;

/* How long a control message waits for its answer before it is sent again. */
#define EMBER_RREF_RESEND_MS 200

ember_rrefs_t *ember_rrefs_new(int self, const ember_rrefs_ops_t *ops);
/* Frees every record and completes waiters on ember_rrefs_settled. */
void ember_rrefs_free(ember_rrefs_t *r);

ember_rref_id_t ember_rrefs_new_id(ember_rrefs_t *r);
/* The worker an id was made on. */
int ember_rref_creator(ember_rref_id_t id);

/* --- Owner side ------------------------------------------------------------ */

/* Registers fork `fork` of our value `rref`, held by worker `holder`
** (idempotent). Used on sending our RRef, and for remote()'s creation.
** EMBER_EPEERLOST (with a message) when the holder is gone. */
int ember_rrefs_owner_add_fork(ember_rrefs_t *r, ember_rref_id_t rref,
                               uint64_t fork, int holder);

/* Our own RRef came back from worker `parent`: tell the parent its child
** arrived (its fork may now go). */
void ember_rrefs_owner_received(ember_rrefs_t *r, uint64_t fork, int parent);

/* Forks registered for our value `rref` (0 when none or unknown). */
int ember_rrefs_owner_forks(const ember_rrefs_t *r, ember_rref_id_t rref);

/* --- User side ---------------------------------------------------------------- */

/*
** A new fork of `rref` (owned by `owner`) held here, sent to us by `parent`.
** From the owner it is confirmed at once; from another user it asks the owner
** (FORK); from ourselves (remote()) it waits for ember_rrefs_user_confirm.
** EMBER_EINVAL when the fork is already known or the ids are ours.
*/
int ember_rrefs_user_new(ember_rrefs_t *r, ember_rref_id_t rref, uint64_t fork,
                         int owner, int parent);

/* The owner has our fork (remote() answered, or a CONFIRM came). */
void ember_rrefs_user_confirm(ember_rrefs_t *r, uint64_t fork);

/* 1 confirmed, 0 not yet, -1 unknown (deleted, or its owner was lost). */
int ember_rrefs_user_state(const ember_rrefs_t *r, uint64_t fork);

/* Lua dropped the fork: delete it at the owner as soon as that is safe. */
void ember_rrefs_user_release(ember_rrefs_t *r, uint64_t fork);

/* We send our fork `parent_fork` on to worker `to` as `child_fork`: keep our
** fork until the child is accepted. EMBER_EINVAL for an unknown parent. */
int ember_rrefs_user_add_child(ember_rrefs_t *r, uint64_t parent_fork,
                               uint64_t child_fork, int to);

/* A message that was to carry `fork` was never sent: undo its registration
** (a child record, or the owner's early fork). */
void ember_rrefs_cancel_fork(ember_rrefs_t *r, ember_rref_id_t rref,
                             uint64_t fork);

/* --- Messages, peers, shutdown --------------------------------------------- */

/* A control frame (kind EMBER_MSG_RREF_*) from `peer`; the frame stays the
** caller's. EMBER_EINVAL with a message for a malformed body. */
int ember_rrefs_on_frame(ember_rrefs_t *r, int peer, int kind,
                         const char *body, size_t len);

/* The peer is gone (lost, or it left): drop what concerns it. Forks for it
** are refused from now on (EMBER_EPEERLOST). */
void ember_rrefs_peer_lost(ember_rrefs_t *r, int peer);

/*
** Sends again every control message that has waited EMBER_RREF_RESEND_MS or
** more for its answer at `now_ms`: FORKs of unconfirmed forks, DELETEs not
** acknowledged, CHILD_ACCEPTs not acknowledged. Returns how many were sent.
** Call it every EMBER_RREF_RESEND_MS or so.
*/
int ember_rrefs_resend(ember_rrefs_t *r, uint64_t now_ms);

/* A future that completes when no control message awaits an answer (no
** unconfirmed fork, pending child, unacknowledged delete or accept). */
ember_future_t *ember_rrefs_settled(ember_rrefs_t *r);

typedef struct {
  uint64_t owners;  /* values of ours with forks elsewhere */
  uint64_t forks;   /* forks registered with us, over all values */
  uint64_t users;   /* forks we hold (not yet being deleted) */
  uint64_t pending; /* control messages awaiting an answer */
  uint64_t resent;  /* control messages sent again for want of an answer */
} ember_rrefs_stats_t;

void ember_rrefs_stats(const ember_rrefs_t *r, ember_rrefs_stats_t *stats);

/* Calls fn for every fork we hold that Lua has not dropped (a leak at
** shutdown). */
void ember_rrefs_each_held(const ember_rrefs_t *r,
                           void (*fn)(void *arg, ember_rref_id_t rref,
                                      uint64_t fork, int owner),
                           void *arg);

/* Drops every fork we hold, as if Lua had (shutdown). */
void ember_rrefs_release_all(ember_rrefs_t *r);

#endif
