/*
** The local launcher behind `ember launch`: starts worker processes, passes
** their output on line by line with a label ("[rank 3] ..."), passes the
** launcher's SIGINT and SIGTERM on to them, and stops the others when one
** fails. It knows nothing of ranks or RPC: the caller gives each worker its
** environment.
**
** Thread: the calling thread, which ember_launch_run blocks until every
** worker has ended (it runs a private libuv loop, not the ember loop). Not
** reentrant: signal handling is process-wide.
*/
#ifndef EMBER_LAUNCH_H
#define EMBER_LAUNCH_H

#include <stddef.h>
#include <stdint.h>

#define EMBER_LAUNCH_DEFAULT_GRACE_MS 10000
#define EMBER_LAUNCH_DEFAULT_KILL_AFTER_MS 3000
#define EMBER_LAUNCH_DEFAULT_DRAIN_MS 2000

typedef struct {
  /* Prefixes its output lines as "[label] " and names it in notices; NULL
  ** means "worker I" (I its 0-based index). */
  const char *label;
  /* "NAME=value" entries added to the launcher's environment (replacing an
  ** inherited entry of the same name); NULL-terminated, or NULL for none. */
  const char *const *env;
} ember_launch_worker_t;

typedef struct {
  /* The program and its arguments, NULL-terminated. argv[0] is a path, or a
  ** name looked up in the PATH of the worker's environment. */
  const char *const *argv;
  const ember_launch_worker_t *workers;
  size_t worker_count;
  /* After a worker fails (or the launcher is interrupted), how long the
  ** others may keep running before SIGTERM (SIGKILL after an interrupt). */
  uint64_t grace_ms;
  /* After SIGTERM, how long before SIGKILL. */
  uint64_t kill_after_ms;
  /* After the last worker exited, how long its output may take to arrive
  ** (a process it started may hold the pipes open). */
  uint64_t drain_ms;
  /* Where the workers' stdout and stderr lines go; notices go to err_fd. */
  int out_fd;
  int err_fd;
  /* Starts the launcher's own notices: "ember launch: rank 2 failed: ...". */
  const char *name;
} ember_launch_opts_t;

/* Defaults: the grace, kill and drain times above, fds 1 and 2, and the name
** "ember launch". argv and workers are left empty. */
void ember_launch_opts_init(ember_launch_opts_t *opts);

typedef struct {
  /* 0 when every worker exited with status 0; else the first failure's exit
  ** status (1 if it was killed by a signal), or 128 + the signal number when
  ** the launcher was interrupted before any worker failed. */
  int exit_status;
  int failed_worker;   /* index of the first failed worker, or -1 */
  int signal_received; /* the signal that interrupted the launch, or 0 */
  /* "rank 2 failed: exited with status 1", "interrupted by SIGINT", or why
  ** the launch could not happen; empty when all went well. */
  char message[256];
} ember_launch_result_t;

/*
** Starts opts->worker_count processes of opts->argv, each with its own
** environment, and waits for all of them. Returns 0 when they ran (however
** they ended: see result), or an error code with result->message saying why:
** UV_EINVAL for bad options, a libuv code when a worker could not be started
** ("cannot start 'X' for rank 2: no such file or directory"; the workers
** already started are then stopped and waited for).
**
** Workers inherit the launcher's stdin and no other descriptor. While the
** launch runs, SIGINT, SIGTERM and SIGPIPE are the launcher's; their previous
** dispositions are put back before it returns.
*/
int ember_launch_run(const ember_launch_opts_t *opts,
                     ember_launch_result_t *result);

/*
** A TCP port that is free on `host` now (bound to port 0, read, closed).
** Returns 0 and *port, or an error code with `message` saying why.
*/
int ember_launch_free_port(const char *host, int *port, char *message,
                           size_t message_size);

/* "exited with status 3" or "killed by signal 9 (SIGKILL)" into `buffer`. */
void ember_launch_describe_exit(int64_t exit_status, int term_signal,
                                char *buffer, size_t size);

#endif
