/*
** The local launcher: worker processes on a private libuv loop.
**
** A launch goes through stages. While all is well the workers run. When one
** fails the others get a grace period to finish (they may be writing results
** or taking part in a shutdown), then SIGTERM, then SIGKILL. A SIGINT or
** SIGTERM sent to the launcher is passed on; a second one kills. The launch
** ends when every worker has exited and its output has been passed on.
*/
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <uv.h>

#include "error.h"
#include "launch.h"

extern char **environ;

#define READ_BUFFER_SIZE 65536
/* A longer line is passed on in pieces, so one worker cannot eat memory. */
#define MAX_LINE 65536

typedef enum {
  STAGE_RUNNING,     /* no failure so far */
  STAGE_GRACE,       /* a worker failed; the others may still finish */
  STAGE_INTERRUPTED, /* the launcher's signal was passed on */
  STAGE_TERMINATING, /* SIGTERM sent */
  STAGE_KILLING      /* SIGKILL sent */
} stage_t;

typedef struct launcher_s launcher_t;
typedef struct worker_s worker_t;

typedef struct {
  char *data;
  size_t length;
  size_t capacity;
} buffer_t;

/* One of a worker's output pipes and the unfinished line read from it. */
typedef struct {
  uv_pipe_t pipe;
  worker_t *worker;
  int fd; /* where its lines go */
  int open;
  buffer_t pending;
} output_t;

struct worker_s {
  uv_process_t process;
  output_t out;
  output_t err;
  launcher_t *launcher;
  const char *label;
  char default_label[32];
  size_t index;
  int running; /* started and not yet exited */
};

struct launcher_s {
  uv_loop_t loop;
  const ember_launch_opts_t *opts;
  ember_launch_result_t *result;
  worker_t *workers;
  size_t running;      /* workers started and not yet exited */
  size_t open_outputs; /* pipes not yet closed */
  stage_t stage;
  uv_timer_t escalate_timer; /* grace, then kill_after */
  uv_timer_t drain_timer;
  uv_signal_t sigint;
  uv_signal_t sigterm;
  int own_handles; /* how many of the four above are initialized */
  char read_buffer[READ_BUFFER_SIZE];
};

/* --- Writing to the launcher's fds ---------------------------------------- */

static void wait_writable(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLOUT};
  while (poll(&p, 1, -1) < 0 && errno == EINTR)
    ;
}

/*
** Writes every byte or gives up on a broken fd (a closed terminal or pipe:
** the workers keep running, their output is lost). Blocking is deliberate: a
** slow reader slows the workers down instead of filling the launcher's memory.
*/
static void write_all(int fd, struct iovec *iov, int count) {
  while (count > 0) {
    ssize_t n = writev(fd, iov, count);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        wait_writable(fd);
      else if (errno != EINTR)
        return;
      continue;
    }
    while (count > 0 && (size_t)n >= iov->iov_len) {
      n -= (ssize_t)iov->iov_len;
      iov++;
      count--;
    }
    if (count > 0) {
      iov->iov_base = (char *)iov->iov_base + n;
      iov->iov_len -= (size_t)n;
    }
  }
}

static struct iovec iov_of(const char *data, size_t length) {
  struct iovec iov = {.iov_base = (void *)data, .iov_len = length};
  return iov;
}

static void notice(launcher_t *launcher, const char *fmt, ...) {
  char text[512];
  struct iovec iov[4];
  va_list ap;
  int length;

  va_start(ap, fmt);
  length = vsnprintf(text, sizeof(text), fmt, ap);
  va_end(ap);
  if (length < 0)
    return;
  if ((size_t)length >= sizeof(text))
    length = (int)sizeof(text) - 1;
  iov[0] = iov_of(launcher->opts->name, strlen(launcher->opts->name));
  iov[1] = iov_of(": ", 2);
  iov[2] = iov_of(text, (size_t)length);
  iov[3] = iov_of("\n", 1);
  write_all(launcher->opts->err_fd, iov, 4);
}

static const char *plural(size_t n) {
  return n == 1 ? "" : "s";
}

/* --- Output lines --------------------------------------------------------- */

static int buffer_append(buffer_t *buffer, const char *data, size_t size) {
  if (buffer->length + size > buffer->capacity) {
    size_t capacity = buffer->capacity ? buffer->capacity : 256;
    char *grown;
    while (capacity < buffer->length + size)
      capacity *= 2;
    if ((grown = realloc(buffer->data, capacity)) == NULL)
      return UV_ENOMEM;
    buffer->data = grown;
    buffer->capacity = capacity;
  }
  memcpy(buffer->data + buffer->length, data, size);
  buffer->length += size;
  return 0;
}

/* "[label] " + the pending start of the line + `tail` + newline. */
static void write_line(output_t *output, const char *tail, size_t size) {
  const char *label = output->worker->label;
  struct iovec iov[6];
  iov[0] = iov_of("[", 1);
  iov[1] = iov_of(label, strlen(label));
  iov[2] = iov_of("] ", 2);
  iov[3] = iov_of(output->pending.data, output->pending.length);
  iov[4] = iov_of(tail, size);
  iov[5] = iov_of("\n", 1);
  write_all(output->fd, iov, 6);
  output->pending.length = 0;
}

/* Lines may straddle reads: the unfinished one waits for the next read. */
static void keep_partial_line(output_t *output, const char *data, size_t size) {
  while (size > 0) {
    size_t room = MAX_LINE - output->pending.length;
    size_t take = size < room ? size : room;
    if (buffer_append(&output->pending, data, take) != 0)
      write_line(output, data, take); /* no memory: pass it on as it is */
    else if (output->pending.length == MAX_LINE)
      write_line(output, "", 0);
    data += take;
    size -= take;
  }
}

static void feed_output(output_t *output, const char *data, size_t size) {
  const char *newline;
  while (size > 0 && (newline = memchr(data, '\n', size)) != NULL) {
    size_t line = (size_t)(newline - data);
    write_line(output, data, line);
    data += line + 1;
    size -= line + 1;
  }
  keep_partial_line(output, data, size);
}

/* --- Ending the launch ---------------------------------------------------- */

static void close_launcher_handles(launcher_t *launcher) {
  uv_handle_t *handles[] = {(uv_handle_t *)&launcher->escalate_timer,
                            (uv_handle_t *)&launcher->drain_timer,
                            (uv_handle_t *)&launcher->sigint,
                            (uv_handle_t *)&launcher->sigterm};
  for (int i = 0; i < launcher->own_handles; i++)
    uv_close(handles[i], NULL);
  launcher->own_handles = 0;
}

static void on_drain_timeout(uv_timer_t *timer);

/* The launch is over once no worker runs and every pipe is closed. */
static void check_done(launcher_t *launcher) {
  if (launcher->running > 0 || launcher->own_handles == 0)
    return;
  uv_timer_stop(&launcher->escalate_timer);
  if (launcher->open_outputs == 0)
    close_launcher_handles(launcher);
  else if (!uv_is_active((uv_handle_t *)&launcher->drain_timer))
    uv_timer_start(&launcher->drain_timer, on_drain_timeout,
                   launcher->opts->drain_ms, 0);
}

/* A partial last line still gets its label and a newline. */
static void close_output(output_t *output) {
  launcher_t *launcher = output->worker->launcher;
  if (!output->open)
    return;
  if (output->pending.length > 0)
    write_line(output, "", 0);
  output->open = 0;
  launcher->open_outputs--;
  uv_close((uv_handle_t *)&output->pipe, NULL);
}

static void close_all_outputs(launcher_t *launcher) {
  for (size_t i = 0; i < launcher->opts->worker_count; i++) {
    close_output(&launcher->workers[i].out);
    close_output(&launcher->workers[i].err);
  }
}

static void on_drain_timeout(uv_timer_t *timer) {
  launcher_t *launcher = timer->data;
  close_all_outputs(launcher);
  check_done(launcher);
}

static void alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  output_t *output = handle->data;
  launcher_t *launcher = output->worker->launcher;
  (void)suggested;
  /* Each read is passed on before the next: one buffer serves all pipes. */
  *buf = uv_buf_init(launcher->read_buffer, sizeof(launcher->read_buffer));
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  output_t *output = stream->data;
  if (nread > 0) {
    feed_output(output, buf->base, (size_t)nread);
  } else if (nread < 0) {
    close_output(output);
    check_done(output->worker->launcher);
  }
}

/* --- Signals to the workers ----------------------------------------------- */

static void signal_workers(launcher_t *launcher, int signum) {
  for (size_t i = 0; i < launcher->opts->worker_count; i++) {
    worker_t *worker = &launcher->workers[i];
    if (worker->running)
      uv_process_kill(&worker->process, signum); /* it may have just exited */
  }
}

static void kill_workers(launcher_t *launcher, const char *why) {
  notice(launcher, "%s; sending SIGKILL to %zu worker%s", why,
         launcher->running, plural(launcher->running));
  uv_timer_stop(&launcher->escalate_timer);
  signal_workers(launcher, SIGKILL);
  launcher->stage = STAGE_KILLING;
}

static void on_escalate_timeout(uv_timer_t *timer);

static void escalate_after(launcher_t *launcher, uint64_t ms) {
  uv_timer_start(&launcher->escalate_timer, on_escalate_timeout, ms, 0);
}

static void terminate_workers(launcher_t *launcher) {
  signal_workers(launcher, SIGTERM);
  launcher->stage = STAGE_TERMINATING;
  escalate_after(launcher, launcher->opts->kill_after_ms);
}

static void on_escalate_timeout(uv_timer_t *timer) {
  launcher_t *launcher = timer->data;
  if (launcher->running == 0)
    return;
  if (launcher->stage == STAGE_GRACE) {
    notice(launcher, "stopping the %zu worker%s still running (SIGTERM)",
           launcher->running, plural(launcher->running));
    terminate_workers(launcher);
  } else {
    kill_workers(launcher, "the workers did not stop in time");
  }
}

static const char *signal_name(int signum) {
  switch (signum) {
  case SIGHUP: return "SIGHUP";
  case SIGINT: return "SIGINT";
  case SIGQUIT: return "SIGQUIT";
  case SIGILL: return "SIGILL";
  case SIGTRAP: return "SIGTRAP";
  case SIGABRT: return "SIGABRT";
  case SIGBUS: return "SIGBUS";
  case SIGFPE: return "SIGFPE";
  case SIGKILL: return "SIGKILL";
  case SIGUSR1: return "SIGUSR1";
  case SIGSEGV: return "SIGSEGV";
  case SIGUSR2: return "SIGUSR2";
  case SIGPIPE: return "SIGPIPE";
  case SIGALRM: return "SIGALRM";
  case SIGTERM: return "SIGTERM";
  case SIGXCPU: return "SIGXCPU";
  case SIGXFSZ: return "SIGXFSZ";
  default: return "unknown signal";
  }
}

/*
** The first SIGINT or SIGTERM is passed on, so the workers can end as they
** would alone (a terminal's Ctrl-C may reach them too: they share its process
** group). A second one, or one after SIGTERM went out, kills.
*/
static void on_signal(uv_signal_t *handle, int signum) {
  launcher_t *launcher = handle->data;
  char why[32];

  if (launcher->running == 0) {
    close_all_outputs(launcher); /* only output was left to wait for */
    check_done(launcher);
    return;
  }
  switch (launcher->stage) {
  case STAGE_KILLING:
    return;
  case STAGE_INTERRUPTED:
  case STAGE_TERMINATING:
    snprintf(why, sizeof(why), "%s again", signal_name(signum));
    kill_workers(launcher, why);
    return;
  case STAGE_RUNNING:
    launcher->result->signal_received = signum;
    break;
  case STAGE_GRACE:
    break;
  }
  notice(launcher, "got %s: passing it on to %zu worker%s (again to kill)",
         signal_name(signum), launcher->running, plural(launcher->running));
  signal_workers(launcher, signum);
  launcher->stage = STAGE_INTERRUPTED;
  escalate_after(launcher, launcher->opts->grace_ms);
}

/* --- Worker exits --------------------------------------------------------- */

void ember_launch_describe_exit(int64_t exit_status, int term_signal,
                                char *buffer, size_t size) {
  if (term_signal != 0)
    snprintf(buffer, size, "killed by signal %d (%s)", term_signal,
             signal_name(term_signal));
  else
    snprintf(buffer, size, "exited with status %lld", (long long)exit_status);
}

/* Failures after the launcher began stopping the workers are its own doing. */
static void on_worker_failed(worker_t *worker, int64_t exit_status,
                             int term_signal) {
  launcher_t *launcher = worker->launcher;
  ember_launch_result_t *result = launcher->result;
  char how[64];

  if (launcher->stage != STAGE_RUNNING && launcher->stage != STAGE_GRACE)
    return;
  ember_launch_describe_exit(exit_status, term_signal, how, sizeof(how));
  notice(launcher, "%s failed: %s", worker->label, how);
  if (launcher->stage == STAGE_GRACE)
    return;
  result->failed_worker = (int)worker->index;
  result->exit_status = term_signal != 0 ? 1 : (int)exit_status;
  snprintf(result->message, sizeof(result->message), "%s failed: %s",
           worker->label, how);
  launcher->stage = STAGE_GRACE;
  escalate_after(launcher, launcher->opts->grace_ms);
}

static void on_worker_exit(uv_process_t *process, int64_t exit_status,
                           int term_signal) {
  worker_t *worker = process->data;
  launcher_t *launcher = worker->launcher;

  worker->running = 0;
  launcher->running--;
  uv_close((uv_handle_t *)process, NULL);
  if (exit_status != 0 || term_signal != 0)
    on_worker_failed(worker, exit_status, term_signal);
  check_done(launcher);
}

/* --- Starting workers ----------------------------------------------------- */

static int same_name(const char *a, const char *b) {
  while (*a != '\0' && *a != '=' && *a == *b) {
    a++;
    b++;
  }
  return (*a == '=' || *a == '\0') && (*b == '=' || *b == '\0');
}

static int is_replaced(const char *entry, const char *const *extra) {
  for (; extra != NULL && *extra != NULL; extra++)
    if (same_name(entry, *extra))
      return 1;
  return 0;
}

/* The launcher's environment with `extra` added; the caller frees the array
** (not the strings, which stay the environment's and extra's). */
static char **worker_environment(const char *const *extra) {
  size_t count = 0, n = 0;
  char **env;

  for (char **e = environ; e != NULL && *e != NULL; e++)
    count++;
  for (const char *const *e = extra; e != NULL && *e != NULL; e++)
    count++;
  if ((env = malloc((count + 1) * sizeof(*env))) == NULL)
    return NULL;
  for (char **e = environ; e != NULL && *e != NULL; e++)
    if (!is_replaced(*e, extra))
      env[n++] = *e;
  for (const char *const *e = extra; e != NULL && *e != NULL; e++)
    env[n++] = (char *)*e;
  env[n] = NULL;
  return env;
}

typedef struct {
  int *fds;
  size_t count;
  size_t capacity;
} fd_list_t;

static int fd_list_push(fd_list_t *list, int fd) {
  if (list->count == list->capacity) {
    size_t capacity = list->capacity ? list->capacity * 2 : 16;
    int *grown = realloc(list->fds, capacity * sizeof(*grown));
    if (grown == NULL)
      return UV_ENOMEM;
    list->fds = grown;
    list->capacity = capacity;
  }
  list->fds[list->count++] = fd;
  return 0;
}

static int hide_fd(fd_list_t *hidden, int fd) {
  int flags = fcntl(fd, F_GETFD);
  if (flags < 0 || (flags & FD_CLOEXEC))
    return 0;
  if (fd_list_push(hidden, fd) != 0)
    return UV_ENOMEM;
  fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
  return 0;
}

/*
** libuv's own descriptors are close-on-exec, but a file the script opened
** (io.open) would be inherited by every worker: mark every descriptor above
** stderr close-on-exec for the spawns, and put the flags back afterwards.
*/
static int hide_inherited_fds(fd_list_t *hidden) {
  DIR *dir = opendir("/proc/self/fd");
  struct dirent *entry;
  int err = 0;

  if (dir == NULL) {
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536)
      max = 65536;
    for (int fd = 3; fd < (int)max && err == 0; fd++)
      err = hide_fd(hidden, fd);
    return err;
  }
  while (err == 0 && (entry = readdir(dir)) != NULL) {
    char *end;
    long fd = strtol(entry->d_name, &end, 10);
    if (*end == '\0' && end != entry->d_name && fd > 2 && fd != dirfd(dir))
      err = hide_fd(hidden, (int)fd);
  }
  closedir(dir);
  return err;
}

static void unhide_fds(fd_list_t *hidden) {
  for (size_t i = 0; i < hidden->count; i++) {
    int flags = fcntl(hidden->fds[i], F_GETFD);
    if (flags >= 0)
      fcntl(hidden->fds[i], F_SETFD, flags & ~FD_CLOEXEC);
  }
  free(hidden->fds);
}

static void open_output(worker_t *worker, output_t *output, int fd) {
  output->worker = worker;
  output->fd = fd;
  uv_pipe_init(&worker->launcher->loop, &output->pipe, 0);
  output->pipe.data = output;
  output->open = 1;
  worker->launcher->open_outputs++;
}

static void set_output_stdio(uv_stdio_container_t *stdio, output_t *output) {
  /* Writable from the child's side. */
  stdio->flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio->data.stream = (uv_stream_t *)&output->pipe;
}

static void start_reading(output_t *output) {
  if (uv_read_start((uv_stream_t *)&output->pipe, alloc_cb, read_cb) != 0)
    close_output(output);
}

static int spawn_worker(launcher_t *launcher, worker_t *worker,
                        const ember_launch_worker_t *spec) {
  const ember_launch_opts_t *opts = launcher->opts;
  uv_process_options_t options;
  uv_stdio_container_t stdio[3];
  char **env = worker_environment(spec->env);
  int err;

  if (env == NULL)
    return UV_ENOMEM;
  open_output(worker, &worker->out, opts->out_fd);
  open_output(worker, &worker->err, opts->err_fd);
  /* A closed stdin cannot be inherited; the worker then gets /dev/null. */
  stdio[0].flags = fcntl(0, F_GETFD) >= 0 ? UV_INHERIT_FD : UV_IGNORE;
  stdio[0].data.fd = 0;
  set_output_stdio(&stdio[1], &worker->out);
  set_output_stdio(&stdio[2], &worker->err);
  memset(&options, 0, sizeof(options));
  options.file = opts->argv[0];
  options.args = (char **)opts->argv;
  options.env = env;
  options.exit_cb = on_worker_exit;
  options.stdio = stdio;
  options.stdio_count = 3;
  worker->process.data = worker;
  err = uv_spawn(&launcher->loop, &worker->process, &options);
  free(env);
  if (err != 0) {
    uv_close((uv_handle_t *)&worker->process, NULL);
    close_output(&worker->out);
    close_output(&worker->err);
    return err;
  }
  worker->running = 1;
  launcher->running++;
  start_reading(&worker->out);
  start_reading(&worker->err);
  return 0;
}

static int spawn_workers(launcher_t *launcher) {
  const ember_launch_opts_t *opts = launcher->opts;
  fd_list_t hidden = {NULL, 0, 0};
  size_t i = 0;
  int err = hide_inherited_fds(&hidden);

  for (; err == 0 && i < opts->worker_count; i++)
    err = spawn_worker(launcher, &launcher->workers[i], &opts->workers[i]);
  unhide_fds(&hidden);
  if (err == 0)
    return 0;
  if (i == 0) /* the fds could not be hidden: nothing was tried */
    snprintf(launcher->result->message, sizeof(launcher->result->message),
             "cannot start the workers: %s", uv_strerror(err));
  else
    snprintf(launcher->result->message, sizeof(launcher->result->message),
             "cannot start '%s' for %s: %s", opts->argv[0],
             launcher->workers[i - 1].label, uv_strerror(err));
  terminate_workers(launcher); /* the ones already started */
  return err;
}

/* --- The launch ----------------------------------------------------------- */

static int open_launcher_handles(launcher_t *launcher) {
  int err;
  uv_timer_init(&launcher->loop, &launcher->escalate_timer);
  uv_timer_init(&launcher->loop, &launcher->drain_timer);
  launcher->escalate_timer.data = launcher;
  launcher->drain_timer.data = launcher;
  launcher->own_handles = 2;
  if ((err = uv_signal_init(&launcher->loop, &launcher->sigint)) != 0)
    return err;
  launcher->own_handles = 3;
  if ((err = uv_signal_init(&launcher->loop, &launcher->sigterm)) != 0)
    return err;
  launcher->own_handles = 4;
  launcher->sigint.data = launcher;
  launcher->sigterm.data = launcher;
  if ((err = uv_signal_start(&launcher->sigint, on_signal, SIGINT)) != 0)
    return err;
  return uv_signal_start(&launcher->sigterm, on_signal, SIGTERM);
}

static void init_workers(launcher_t *launcher) {
  const ember_launch_opts_t *opts = launcher->opts;
  for (size_t i = 0; i < opts->worker_count; i++) {
    worker_t *worker = &launcher->workers[i];
    worker->launcher = launcher;
    worker->index = i;
    worker->label = opts->workers[i].label;
    if (worker->label == NULL) {
      snprintf(worker->default_label, sizeof(worker->default_label),
               "worker %zu", i);
      worker->label = worker->default_label;
    }
  }
}

static void free_workers(launcher_t *launcher) {
  for (size_t i = 0; i < launcher->opts->worker_count; i++) {
    free(launcher->workers[i].out.pending.data);
    free(launcher->workers[i].err.pending.data);
  }
  free(launcher->workers);
}

static void finish_result(launcher_t *launcher) {
  ember_launch_result_t *result = launcher->result;
  if (result->failed_worker >= 0) {
    result->signal_received = 0; /* it came after the failure */
  } else if (result->signal_received != 0) {
    result->exit_status = 128 + result->signal_received;
    snprintf(result->message, sizeof(result->message), "interrupted by %s",
             signal_name(result->signal_received));
  }
}

typedef struct {
  struct sigaction interrupt, terminate, broken_pipe;
} saved_signals_t;

/* A reader that went away must not kill the launcher and orphan the
** workers: SIGPIPE is ignored while the launch runs. */
static void save_signals(saved_signals_t *saved) {
  struct sigaction ignore;
  memset(&ignore, 0, sizeof(ignore));
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  sigaction(SIGINT, NULL, &saved->interrupt);
  sigaction(SIGTERM, NULL, &saved->terminate);
  sigaction(SIGPIPE, &ignore, &saved->broken_pipe);
}

/* libuv leaves SIGINT and SIGTERM at their defaults when its watchers close. */
static void restore_signals(const saved_signals_t *saved) {
  sigaction(SIGINT, &saved->interrupt, NULL);
  sigaction(SIGTERM, &saved->terminate, NULL);
  sigaction(SIGPIPE, &saved->broken_pipe, NULL);
}

static int check_opts(const ember_launch_opts_t *opts,
                      ember_launch_result_t *result) {
  const char *problem = NULL;
  if (opts->argv == NULL || opts->argv[0] == NULL)
    problem = "no program to start";
  else if (opts->worker_count == 0 || opts->workers == NULL)
    problem = "no workers to start";
  else if (opts->name == NULL)
    problem = "no name for the launcher's notices";
  if (problem == NULL)
    return 0;
  snprintf(result->message, sizeof(result->message), "%s", problem);
  return UV_EINVAL;
}

static int run_launcher(launcher_t *launcher) {
  int err = open_launcher_handles(launcher);
  if (err != 0)
    snprintf(launcher->result->message, sizeof(launcher->result->message),
             "cannot watch for signals: %s", uv_strerror(err));
  else
    err = spawn_workers(launcher);
  if (err != 0 && launcher->running == 0)
    close_launcher_handles(launcher);
  else
    check_done(launcher);
  uv_run(&launcher->loop, UV_RUN_DEFAULT);
  return err;
}

int ember_launch_run(const ember_launch_opts_t *opts,
                     ember_launch_result_t *result) {
  saved_signals_t saved;
  launcher_t *launcher;
  int err;

  memset(result, 0, sizeof(*result));
  result->failed_worker = -1;
  if ((err = check_opts(opts, result)) != 0)
    return err;
  launcher = calloc(1, sizeof(*launcher));
  if (launcher == NULL ||
      (launcher->workers = calloc(opts->worker_count,
                                  sizeof(*launcher->workers))) == NULL) {
    free(launcher);
    snprintf(result->message, sizeof(result->message), "out of memory");
    return UV_ENOMEM;
  }
  launcher->opts = opts;
  launcher->result = result;
  init_workers(launcher);
  if ((err = uv_loop_init(&launcher->loop)) != 0) {
    snprintf(result->message, sizeof(result->message),
             "cannot create an event loop: %s", uv_strerror(err));
    free_workers(launcher);
    free(launcher);
    return err;
  }
  save_signals(&saved);
  err = run_launcher(launcher);
  uv_loop_close(&launcher->loop);
  restore_signals(&saved);
  if (err == 0)
    finish_result(launcher);
  else
    result->exit_status = 1;
  free_workers(launcher);
  free(launcher);
  return err;
}

void ember_launch_opts_init(ember_launch_opts_t *opts) {
  memset(opts, 0, sizeof(*opts));
  opts->grace_ms = EMBER_LAUNCH_DEFAULT_GRACE_MS;
  opts->kill_after_ms = EMBER_LAUNCH_DEFAULT_KILL_AFTER_MS;
  opts->drain_ms = EMBER_LAUNCH_DEFAULT_DRAIN_MS;
  opts->out_fd = 1;
  opts->err_fd = 2;
  opts->name = "ember launch";
}

/* --- Free ports ----------------------------------------------------------- */

static int bound_port(const struct addrinfo *address, int *port) {
  struct sockaddr_storage bound;
  socklen_t length = sizeof(bound);
  int fd = socket(address->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int err = 0;

  if (fd < 0)
    return uv_translate_sys_error(errno);
  if (bind(fd, address->ai_addr, address->ai_addrlen) != 0 ||
      getsockname(fd, (struct sockaddr *)&bound, &length) != 0)
    err = uv_translate_sys_error(errno);
  else if (bound.ss_family == AF_INET)
    *port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
  else
    *port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
  close(fd);
  return err;
}

int ember_launch_free_port(const char *host, int *port, char *message,
                           size_t message_size) {
  struct addrinfo hints, *addresses;
  int status, err;

  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  /* Port "0": the system picks a free one at bind. */
  if ((status = getaddrinfo(host, "0", &hints, &addresses)) != 0) {
    snprintf(message, message_size, "cannot resolve '%s': %s", host,
             gai_strerror(status));
    return EMBER_EINVAL;
  }
  err = bound_port(addresses, port);
  freeaddrinfo(addresses);
  if (err != 0)
    snprintf(message, message_size, "cannot find a free port on '%s': %s",
             host, uv_strerror(err));
  return err;
}
