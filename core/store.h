/*
** The rendezvous store: a key/value server that workers use to find each
** other (the analogue of PyTorch's TCPStore).
**
** Rank 0 serves it at MASTER_ADDR:MASTER_PORT; every worker connects as a
** client, publishes what the others need (name, rank, listen address) and
** waits until the whole world has done the same. A barrier is an add plus a
** wait. Keys are NUL-terminated strings; values are bytes.
**
** The protocol is private to this module: each message is a big-endian u32
** length and a msgpack array of integers and strings. Requests are
** [op, request id, args...]; replies are [request id, status, results...].
** A server checks every frame before it decodes it (at most
** EMBER_STORE_MAX_FRAME bytes; every count against the bytes present); a
** client that sends a bad one is disconnected, with the reason on stderr, and
** the server keeps serving the others.
**
** Server handles do not keep the loop alive by themselves: the store serves
** while something else (a pending operation, the RPC agent) runs the loop. A
** client keeps the loop alive only while it has operations pending.
**
** Timeouts are the client's: each operation with one arms its own timer, and a
** reply that comes after the timeout is dropped. Losing the connection fails
** every pending operation with EMBER_EPEERLOST.
**
** Thread: everything here runs on the loop thread.
*/
#ifndef EMBER_STORE_H
#define EMBER_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "future.h"
#include "loop.h"

/* The largest frame either side accepts (a value is at most a bit less). */
#define EMBER_STORE_MAX_FRAME (64u << 20)

/* Pass as timeout_ms for no timeout. */
#define EMBER_STORE_NO_TIMEOUT 0

typedef struct ember_store_server_s ember_store_server_t;
typedef struct ember_store_client_s ember_store_client_t;

/* --- Server ------------------------------------------------------------------
 */

/*
** Starts serving on host:port (port 0 picks a free port; host may be a
** numeric address or a name). On success *out is the caller's, until
** ember_store_server_close. Returns 0, UV_EADDRINUSE, UV_EINVAL, ...
*/
int ember_store_server_start(ember_loop_t *loop, const char *host, int port,
                             ember_store_server_t **out);

/* The port it listens on (useful after asking for port 0); 0 once closed. */
int ember_store_server_port(const ember_store_server_t *server);

/*
** Stops listening, disconnects every client (their waiters are dropped) and
** frees the server once its handles have closed. Safe after the loop has been
** closed (ember_loop_close already closed the handles).
*/
void ember_store_server_close(ember_store_server_t *server);

/* --- Client ------------------------------------------------------------------
 */

/*
** Connects to the store at host:port, retrying every 50 ms until timeout_ms
** has passed (workers start in any order; the server may come up last).
** Returns a future, owned by the caller, that completes with an
** ember_store_client_payload or fails with UV_ETIMEDOUT ("cannot reach the
** store at HOST:PORT within N s (last error: ...)"); NULL if out of memory.
** The client is owned by the future; ember_store_client_retain it to keep it
** longer.
*/
ember_future_t *ember_store_connect(ember_loop_t *loop, const char *host,
                                    int port, uint64_t timeout_ms);

/* The payload of a connect future: data is the ember_store_client_t *. */
extern const ember_payload_type_t ember_store_client_payload;

/*
** References on a client. Its pending operations hold one each, so dropping
** the last reference never cuts an operation short; it closes the connection
** and frees the client once its handles have closed.
*/
void ember_store_client_retain(ember_store_client_t *client);
void ember_store_client_release(ember_store_client_t *client);

/*
** Closes the connection now: pending operations fail with UV_ECANCELED, later
** ones fail at once. The client stays valid until its last release.
*/
void ember_store_client_close(ember_store_client_t *client);

/*
** The numeric address (no port) of this end of the connection: the address
** through which this host reaches the store, which peers can usually reach
** it at too. Returns 0, UV_ENOTCONN once closed, or UV_ENOSPC if `size` is
** too small (INET6_ADDRSTRLEN is enough).
*/
int ember_store_client_local_address(ember_store_client_t *client, char *out,
                                     size_t size);

/*
** Operations. Each returns a new future owned by the caller (NULL only if out
** of memory); operations on a closed or lost client return failed futures.
** Requests on one client are pipelined; the server handles them in order.
*/

/* Completes with ember_store_bool_payload true. */
ember_future_t *ember_store_set(ember_store_client_t *client, const char *key,
                                const void *value, size_t len);

/*
** Waits until the key exists; completes with ember_store_bytes_payload.
** Fails with UV_ETIMEDOUT "store: key 'k' was not set within N s".
*/
ember_future_t *ember_store_get(ember_store_client_t *client, const char *key,
                                uint64_t timeout_ms);

/*
** Adds delta to the integer stored at key (created at 0; stored as decimal
** text, as get returns it); completes with ember_store_int_payload, the new
** value. Fails with UV_EINVAL when the value is not an integer, UV_ERANGE on
** overflow.
*/
ember_future_t *ember_store_add(ember_store_client_t *client, const char *key,
                                int64_t delta);

/* Completes with ember_store_bool_payload: whether the key existed. */
ember_future_t *ember_store_delete(ember_store_client_t *client,
                                   const char *key);

/*
** Completes (ember_store_bool_payload true) once all `count` keys exist.
** Fails with UV_ETIMEDOUT naming the keys still missing.
*/
ember_future_t *ember_store_wait(ember_store_client_t *client,
                                 const char *const *keys, size_t count,
                                 uint64_t timeout_ms);

/* Completes with ember_store_flags_payload: which of the keys exist now. */
ember_future_t *ember_store_check(ember_store_client_t *client,
                                  const char *const *keys, size_t count);

/* --- Result payloads ---------------------------------------------------------
 */

/* get: the value's bytes (followed by a NUL that is not counted). */
typedef struct {
  size_t len;
  char data[];
} ember_store_bytes_t;

/* check: exists[i] is 1 when keys[i] exists. */
typedef struct {
  size_t count;
  unsigned char exists[];
} ember_store_flags_t;

extern const ember_payload_type_t ember_store_bytes_payload; /* bytes_t * */
extern const ember_payload_type_t ember_store_int_payload;   /* int64_t * */
extern const ember_payload_type_t
    ember_store_bool_payload; /* unsigned char * */
extern const ember_payload_type_t ember_store_flags_payload; /* flags_t * */

#endif
