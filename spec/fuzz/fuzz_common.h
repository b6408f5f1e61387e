/*
** Shared pieces of the libFuzzer targets (header-only: each target is one
** executable).
**
** - fuzz_quiet(): ember's own "closing connection from ...: why" lines go to
**   /dev/null. They are written through stdio's `stderr`, which is replaced;
**   libFuzzer captured its own FILE* at start-up and ASan writes to fd 2, so
**   their reports still show. EMBER_FUZZ_VERBOSE=1 keeps ember's lines.
** - fuzz_socket_*: a plain socket on the far side of a connection, driven
**   while an ember loop turns.
** - fuzz_keepalive_*: a referenced timer, because the store's and the
**   transport's handles do not keep the loop alive (uv_run returns at once
**   on a loop with no referenced handle, without polling).
** - FUZZ_ASSERT: aborts with a message (libFuzzer saves the input).
*/
#ifndef EMBER_FUZZ_COMMON_H
#define EMBER_FUZZ_COMMON_H

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "loop.h"

#define FUZZ_ASSERT(cond, ...)                                                 \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(fuzz_report, "%s:%d: fuzz assertion failed: %s: ", __FILE__,     \
              __LINE__, #cond);                                                \
      fprintf(fuzz_report, __VA_ARGS__);                                       \
      fputc('\n', fuzz_report);                                                \
      fflush(fuzz_report);                                                     \
      abort();                                                                 \
    }                                                                          \
  } while (0)

/* Where assertions go: the real stderr, even once `stderr` is muted. */
static FILE *fuzz_report;

static inline void fuzz_quiet(void) {
  const char *verbose = getenv("EMBER_FUZZ_VERBOSE");
  fuzz_report = stderr;
  if (verbose != NULL && verbose[0] != '\0' && verbose[0] != '0')
    return;
  FILE *null = fopen("/dev/null", "w");
  if (null != NULL)
    stderr = null;
}

/* ---- A referenced timer that keeps uv_run polling ------------------------ */

typedef struct {
  ember_handle_owner_t owner;
  uv_timer_t timer;
} fuzz_keepalive_t;

static inline void fuzz_keepalive_closed(uv_handle_t *handle) {
  (void)handle;
}

static inline void fuzz_keepalive_tick(uv_timer_t *timer) {
  (void)timer;
}

static inline void fuzz_keepalive_start(ember_loop_t *loop,
                                        fuzz_keepalive_t *k) {
  k->owner.close_cb = fuzz_keepalive_closed;
  uv_timer_init(ember_loop_uv(loop), &k->timer);
  k->timer.data = k;
  uv_timer_start(&k->timer, fuzz_keepalive_tick, 3600 * 1000, 0);
}

static inline void fuzz_keepalive_stop(fuzz_keepalive_t *k) {
  uv_close((uv_handle_t *)&k->timer, fuzz_keepalive_closed);
}

/* ---- The far side of a connection ---------------------------------------- */

/*
** A TCP connection to 127.0.0.1:port (the listener accepts it in the kernel
** before the loop runs). Non-blocking, and waited for with poll: libFuzzer's
** SIGALRM (its -timeout) interrupts a blocking connect with EINTR.
*/
static inline int fuzz_socket_connect(int port) {
  struct sockaddr_in addr;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  FUZZ_ASSERT(fd >= 0, "socket: %s", strerror(errno));
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
    FUZZ_ASSERT(errno == EINPROGRESS || errno == EINTR,
                "connect to port %d: %s", port, strerror(errno));
    struct pollfd p = {fd, POLLOUT, 0};
    int err = 0;
    socklen_t len = sizeof err;
    while (poll(&p, 1, 10000) < 0 && errno == EINTR)
      ;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    FUZZ_ASSERT((p.revents & POLLOUT) && err == 0, "connect to port %d: %s",
                port, strerror(err != 0 ? err : ETIMEDOUT));
  }
  return fd;
}

/* A listening socket on 127.0.0.1, port chosen by the kernel; *port gets it. */
static inline int fuzz_socket_listen(int *port) {
  struct sockaddr_in addr;
  socklen_t len = sizeof addr;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0),
      on = 1;
  FUZZ_ASSERT(fd >= 0, "socket: %s", strerror(errno));
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  FUZZ_ASSERT(bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0 &&
                  listen(fd, 4) == 0 &&
                  getsockname(fd, (struct sockaddr *)&addr, &len) == 0,
              "listen: %s", strerror(errno));
  *port = ntohs(addr.sin_port);
  return fd;
}

/* Writes what it can without blocking; returns the bytes written (the rest
** waits for the loop to read). */
static inline size_t fuzz_socket_write_some(int fd, const uint8_t *data,
                                            size_t len) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = send(fd, data + done, len - done, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n <= 0)
      break;
    done += (size_t)n;
  }
  return done;
}

/* Reads and discards what arrived. Returns 1 once the other side closed
** (end of stream or reset), 0 while it is open. */
static inline int fuzz_socket_drain(int fd) {
  char buf[16384];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0)
      continue;
    if (n == 0)
      return 1;
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : 1;
  }
}

/* ---- Streams inside the loop ------------------------------------------- */

typedef struct {
  int streams;   /* connected TCP handles not closing */
  size_t unread; /* bytes waiting in their sockets */
} fuzz_streams_t;

static inline void fuzz_count_stream(uv_handle_t *handle, void *arg) {
  fuzz_streams_t *s = arg;
  uv_os_fd_t fd;
  int listening = 0, value;
  socklen_t len = sizeof value;
  if (handle->type != UV_TCP || uv_is_closing(handle) ||
      uv_fileno(handle, &fd) != 0)
    return;
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &value, &len) == 0)
    listening = value;
  if (listening)
    return;
  s->streams++;
  if (ioctl(fd, FIONREAD, &value) == 0 && value > 0)
    s->unread += (size_t)value;
}

static inline fuzz_streams_t fuzz_streams(ember_loop_t *loop) {
  fuzz_streams_t s = {0, 0};
  uv_walk(ember_loop_uv(loop), fuzz_count_stream, &s);
  return s;
}

/*
** Writes `data` into fd while the loop turns, until the other side closed
** the connection or has read every byte (and turned twice since), then
** closes fd with a reset and turns until the other side's handle closed.
**
** The end of the input is a reset, not a FIN (shutdown): the side that
** sends the first FIN keeps its port in TIME_WAIT for a minute, and tens of
** thousands of inputs would use up the machine's ephemeral ports (for every
** process on it). Both ember servers treat a reset as the end of the stream.
** Aborts after `max_turns` (a hang).
*/
static inline void fuzz_socket_feed(ember_loop_t *loop, int fd,
                                    const uint8_t *data, size_t len,
                                    int max_turns) {
  size_t done = 0;
  int quiet = 0, turn = 0;
  for (; turn < max_turns; turn++) {
    if (done < len)
      done += fuzz_socket_write_some(fd, data + done, len - done);
    uv_run(ember_loop_uv(loop), UV_RUN_NOWAIT);
    if (fuzz_socket_drain(fd))
      break; /* the other side closed */
    fuzz_streams_t s = fuzz_streams(loop);
    quiet = done == len && s.streams > 0 && s.unread == 0 ? quiet + 1 : 0;
    if (quiet > 2)
      break;
  }
  FUZZ_ASSERT(turn < max_turns,
              "the connection was still busy after %d loop turns (%zu of "
              "%zu bytes written)",
              max_turns, done, len);
  struct linger reset = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
  close(fd);
  for (turn = 0; turn < max_turns && fuzz_streams(loop).streams > 0; turn++)
    uv_run(ember_loop_uv(loop), UV_RUN_NOWAIT);
  FUZZ_ASSERT(turn < max_turns, "the connection was not closed after a reset");
}

#endif
