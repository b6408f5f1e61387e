/*
** One error namespace for the C core.
** Functions return 0 or a negative code. libuv's codes (UV_E*) pass through
** unchanged; ember's own codes live in a range libuv never uses.
*/
#ifndef EMBER_ERROR_H
#define EMBER_ERROR_H

#include <uv.h>

/* X(name, value, message) */
#define EMBER_ERRNO_MAP(X)                                                     \
  X(PENDING, -5001, "the future is not done yet")                              \
  X(COMPLETED, -5002, "the future was already completed")                      \
  X(DEADLOCK, -5003, "waiting on a future that nothing left can complete")     \
  X(BUSY, -5004, "the loop is already running")                                \
  X(FAILED, -5005, "the operation failed")                                     \
  X(PEERLOST, -5006, "the peer was lost")                                      \
  X(NOCUDA, -5007, "ember was built without CUDA")                           \
  X(REMOTE, -5008, "the remote function raised an error")                     \
  X(SHUTDOWN, -5009, "the RPC agent was shut down")

typedef enum {
#define EMBER_ERRNO_ENUM(name, value, message) EMBER_E##name = value,
  EMBER_ERRNO_MAP(EMBER_ERRNO_ENUM)
#undef EMBER_ERRNO_ENUM
} ember_errno_t;

/* Out of memory and invalid argument are libuv's own codes. */
#define EMBER_ENOMEM UV_ENOMEM
#define EMBER_EINVAL UV_EINVAL

/* "EPENDING", "ETIMEDOUT", ...; a static string, never NULL. */
const char *ember_err_name(int code);

/* A one-line description; a static string, never NULL. */
const char *ember_strerror(int code);

#endif
