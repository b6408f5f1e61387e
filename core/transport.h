/*
** The transport: TCP connections between workers, framing and handshakes.
**
** Each peer (a worker of the world, known by its id and name) has at most one
** connection, made by whichever side sends first. When both sides connect at
** once, the connection made by the lower id wins and the other is dropped
** during the handshake, before any frame went over it. Frames for a peer wait
** in the peer's queue until its connection is ready.
**
** Handshake (frames of kind HELLO, WELCOME, AUTH; msgpack bodies):
**   initiator -> HELLO   [name, id, nonce]
**   acceptor  -> WELCOME [name, id, nonce, proof, status]   status "ok"/"duplicate"
**   initiator -> AUTH    [proof]
** With a secret, each proof is an HMAC (libsodium crypto_auth) keyed by a hash
** of the secret over both nonces and both names, so neither side can replay
** an old handshake; without one, proofs are empty and a peer that sends or
** expects one is refused. A failed handshake drops the connection and says
** why on stderr.
**
** Writes are coalesced: frames queued while the loop runs are written
** together (one writev) just before the loop polls. Tensor payloads are
** written from their storage (kept alive until written) and read straight
** into new storage.
**
** Thread: the loop thread only.
*/
#ifndef EMBER_TRANSPORT_H
#define EMBER_TRANSPORT_H

#include <stdint.h>

#include "frame_reader.h" /* ember_frame_t, ember_frame_free */
#include "loop.h"
#include "wire.h"

typedef struct ember_transport_s ember_transport_t;

typedef struct {
  void *user;
  /* A frame from a peer whose connection is ready (not handshake frames). */
  void (*on_frame)(void *user, int peer, ember_frame_t *frame);
  /*
  ** The peer is gone: its connection failed or closed without a GOODBYE, or
  ** it could not be reached. Frames still queued for it were dropped. `why`
  ** says what happened ("connection reset by peer").
  */
  void (*on_peer_lost)(void *user, int peer, int code, const char *why);
  /*
  ** Optional (may be NULL): a HELLO came from an id that no ember_transport_add_peer
  ** declared (a client joining a running world). The HELLO waits; declaring
  ** the peer answers it. Called once per parked HELLO, possibly before the
  ** world's own ranks are declared. A HELLO still undeclared after 30 s is
  ** dropped: its connection is closed, with a line on stderr naming the id.
  */
  void (*on_unknown_peer)(void *user, int peer, const char *name);
} ember_transport_callbacks_t;

typedef struct {
  const char *name;    /* this worker's name */
  int id;              /* this worker's id (rank) */
  const char *secret;  /* NULL or "" for none */
  ember_wire_limits_t limits;
  /* Microseconds the loop keeps polling after a read or write instead of
  ** sleeping (0: never); see note_io in transport.c. */
  unsigned busy_poll_us;
} ember_transport_opts_t;

/* A new transport (not listening yet). The caller owns it: free it with
** ember_transport_close. Returns 0 or a negative code. */
int ember_transport_new(ember_loop_t *loop, const ember_transport_opts_t *opts,
                        const ember_transport_callbacks_t *callbacks,
                        ember_transport_t **out);

/* Listens on host:port (port 0: any free port); *bound gets the port. */
int ember_transport_listen(ember_transport_t *t, const char *host, int port,
                           int *bound);

/* How long a parked HELLO waits for its peer's declaration (default 30 s);
** for tests. */
void ember__transport_set_park_timeout(ember_transport_t *t, uint64_t ms);

/* Declares a peer: its id, name and listen address. Returns EMBER_EINVAL for
** an id below 0 or a second declaration of the same id. */
int ember_transport_add_peer(ember_transport_t *t, int id, const char *name,
                             const char *host, int port);

/* The peer's name, or NULL for an undeclared id. */
const char *ember_transport_peer_name(const ember_transport_t *t, int id);

/*
** Queues a frame for `peer`, connecting first if needed. Takes `msg` (its
** contents are moved; the caller's struct is re-initialised). Fails with
** EMBER_EPEERLOST when the peer is lost or has left, EMBER_EINVAL for an
** undeclared peer; the message is freed then too.
*/
int ember_transport_send(ember_transport_t *t, int peer, int kind,
                         uint16_t flags, uint64_t request_id,
                         ember_wire_msg_t *msg);

/* Sends GOODBYE to every connected peer: they will not take our closing for a
** loss. */
void ember_transport_say_goodbye(ember_transport_t *t);

/* Bytes queued and not yet written, over all peers. */
uint64_t ember_transport_unsent_bytes(const ember_transport_t *t);

/* A future that completes when every queued frame has been written (now, if
** none is). The caller owns the returned reference; NULL if out of memory. */
ember_future_t *ember_transport_flushed(ember_transport_t *t);

typedef struct {
  uint64_t bytes_in, bytes_out, frames_in, frames_out;
  int connected; /* 1 while a ready connection exists */
  int lost;      /* 1 once lost */
  int left;      /* 1 once it said GOODBYE */
} ember_peer_stats_t;

/* Counters for one peer; EMBER_EINVAL for an undeclared id. */
int ember_transport_peer_stats(const ember_transport_t *t, int peer,
                               ember_peer_stats_t *stats);

/* The largest declared peer id + 1. */
int ember_transport_peer_count(const ember_transport_t *t);

/*
** Closes every connection and the listener, drops queued frames, and frees
** the transport once libuv is done with its handles. No callback runs after.
*/
void ember_transport_close(ember_transport_t *t);

#endif
