/*
** Raw loopback TCP baseline: what the machine can do without ember.
**
** `ember_tcp_baseline [--round-trips N] [--quick]` forks a server process,
** connects to it over 127.0.0.1 and measures, on one connection:
**   round_trip_us         8-byte ping-pong, blocking sockets, TCP_NODELAY
**   bulk_gbps             1 MiB and 64 MiB messages, each answered by an
**                         8-byte acknowledgement, so the time is end to end
**   pipelined_msgs_per_s  20,000 32-byte requests written without waiting,
**                         while the 32-byte echoes are read back: the raw
**                         analogue of 20,000 rpc_async calls in flight
** Prints one JSON object per line on stdout, in the format of
** scripts/bench/common.lua. ../shared/reference/FIGURES.md has the figures
** this should reproduce (72-80 us round trip, 1.87 GB/s for 64 MiB).
*/
#ifndef _DEFAULT_SOURCE
#define _DEFAULT_SOURCE
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#define PROGRAM "tcp_baseline"
#define TOTAL_SECONDS 60 /* alarm(): the whole run never takes longer. */
#define STRINGIFY(x) #x
#define TO_STRING(x) STRINGIFY(x)
#define PING_BYTES 8
#define ACK_BYTES 8
#define SMALL_BYTES 32
#define ECHO_CHUNK (64 * 1024)
#define HEADER_BYTES 24

/* The client announces each phase to the server with a 24-byte header:
** phase, count and size as big-endian 64-bit integers. */
enum phase { PHASE_DONE = 0, PHASE_PING = 1, PHASE_BULK = 2, PHASE_ECHO = 3 };

typedef struct options_s {
  long round_trips;
  long warm_up;
  long bulk_small_repeats; /* of 1 MiB */
  long bulk_large_repeats; /* of 64 MiB */
  long pipelined;
} options_t;

/* The alarm handler needs the server's id to kill and reap it. */
static volatile pid_t server_pid = -1;

/* --- Small helpers ------------------------------------------------------ */

static int fail(const char *what) {
  fprintf(stderr, "%s: %s: %s\n", PROGRAM, what, strerror(errno));
  return -1;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void put_u64(unsigned char *p, uint64_t v) {
  for (int i = 7; i >= 0; i--) {
    p[i] = (unsigned char)(v & 0xff);
    v >>= 8;
  }
}

static uint64_t get_u64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++)
    v = (v << 8) | p[i];
  return v;
}

/* Blocking I/O of exactly len bytes; a peer that closes early is an error. */
static int read_full(int fd, void *buf, size_t len) {
  unsigned char *p = buf;
  while (len > 0) {
    ssize_t n = read(fd, p, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return fail("read");
    if (n == 0) {
      fprintf(stderr, "%s: read: peer closed the connection\n", PROGRAM);
      return -1;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static int write_full(int fd, const void *buf, size_t len) {
  const unsigned char *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return fail("write");
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static int set_nodelay(int fd) {
  int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
    return fail("setsockopt(TCP_NODELAY)");
  return 0;
}

static int set_nonblocking(int fd, int on) {
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0)
    return fail("fcntl(F_GETFL)");
  flags = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (fcntl(fd, F_SETFL, flags) < 0)
    return fail("fcntl(F_SETFL)");
  return 0;
}

/* A buffer whose pages are touched now, so that page faults stay out of the
** timed loops. */
static unsigned char *alloc_touched(size_t len) {
  unsigned char *p = malloc(len);
  if (p == NULL) {
    fprintf(stderr, "%s: out of memory (%zu bytes)\n", PROGRAM, len);
    return NULL;
  }
  memset(p, 0x5a, len);
  return p;
}

/* --- Server (the forked child) ------------------------------------------ */

static int serve_ping(int fd, uint64_t count) {
  unsigned char msg[PING_BYTES];
  for (uint64_t i = 0; i < count; i++)
    if (read_full(fd, msg, sizeof msg) < 0 ||
        write_full(fd, msg, sizeof msg) < 0)
      return -1;
  return 0;
}

/* Receives each message whole into one buffer, as an RPC runtime receiving a
** tensor would, then acknowledges it. */
static int serve_bulk(int fd, uint64_t count, uint64_t size) {
  unsigned char ack[ACK_BYTES] = {0};
  unsigned char *buf = alloc_touched((size_t)size);
  int rc = buf == NULL ? -1 : 0;
  for (uint64_t i = 0; rc == 0 && i < count; i++)
    if (read_full(fd, buf, (size_t)size) < 0 || write_full(fd, ack, sizeof ack))
      rc = -1;
  free(buf);
  return rc;
}

/* Echoes whatever has arrived in one write, as an event-loop server that
** answers every complete request in its read buffer would. */
static int serve_echo(int fd, uint64_t total_bytes) {
  unsigned char buf[ECHO_CHUNK];
  while (total_bytes > 0) {
    size_t want = total_bytes < sizeof buf ? (size_t)total_bytes : sizeof buf;
    ssize_t n = read(fd, buf, want);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return fail("server read");
    if (n == 0) {
      fprintf(stderr, "%s: server: client closed the connection\n", PROGRAM);
      return -1;
    }
    if (write_full(fd, buf, (size_t)n) < 0)
      return -1;
    total_bytes -= (uint64_t)n;
  }
  return 0;
}

static int serve(int fd) {
  for (;;) {
    unsigned char header[HEADER_BYTES];
    if (read_full(fd, header, sizeof header) < 0)
      return -1;
    uint64_t phase = get_u64(header);
    uint64_t count = get_u64(header + 8);
    uint64_t size = get_u64(header + 16);
    int rc;
    switch (phase) {
    case PHASE_DONE:
      return 0;
    case PHASE_PING:
      rc = serve_ping(fd, count);
      break;
    case PHASE_BULK:
      rc = serve_bulk(fd, count, size);
      break;
    case PHASE_ECHO:
      rc = serve_echo(fd, count * size);
      break;
    default:
      fprintf(stderr, "%s: server: unknown phase %llu\n", PROGRAM,
              (unsigned long long)phase);
      return -1;
    }
    if (rc < 0)
      return -1;
  }
}

static void run_server(int listener) {
  /* The parent's alarm kills us; this one, with the default action, only
  ** covers a server whose parent vanished without closing the connection. */
  signal(SIGALRM, SIG_DFL);
  alarm(TOTAL_SECONDS + 5);
  int fd = accept(listener, NULL, NULL);
  close(listener);
  if (fd < 0) {
    fail("server accept");
    _exit(1);
  }
  int rc = set_nodelay(fd) == 0 ? serve(fd) : -1;
  close(fd);
  _exit(rc == 0 ? 0 : 1);
}

/* --- Client phases -------------------------------------------------------- */

static int send_header(int fd, enum phase phase, uint64_t count,
                       uint64_t size) {
  unsigned char header[HEADER_BYTES];
  put_u64(header, (uint64_t)phase);
  put_u64(header + 8, count);
  put_u64(header + 16, size);
  return write_full(fd, header, sizeof header);
}

static int compare_doubles(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static int measure_round_trips(int fd, const options_t *opt) {
  long total = opt->warm_up + opt->round_trips;
  double *us = malloc((size_t)opt->round_trips * sizeof *us);
  if (us == NULL)
    return fail("malloc");
  unsigned char msg[PING_BYTES] = {0};
  int rc = send_header(fd, PHASE_PING, (uint64_t)total, PING_BYTES);
  for (long i = 0; rc == 0 && i < total; i++) {
    double start = now_s();
    if (write_full(fd, msg, sizeof msg) < 0 ||
        read_full(fd, msg, sizeof msg) < 0)
      rc = -1;
    else if (i >= opt->warm_up)
      us[i - opt->warm_up] = (now_s() - start) * 1e6;
  }
  if (rc == 0) {
    double sum = 0;
    long n = opt->round_trips;
    for (long i = 0; i < n; i++)
      sum += us[i];
    qsort(us, (size_t)n, sizeof *us, compare_doubles);
    double median = n % 2 ? us[n / 2] : (us[n / 2 - 1] + us[n / 2]) / 2;
    printf("{\"bench\":\"%s\",\"what\":\"round_trip_us\",\"median\":%.6g,"
           "\"mean\":%.6g,\"p99\":%.6g,\"n\":%ld}\n",
           PROGRAM, median, sum / (double)n, us[(size_t)(n - 1) * 99 / 100], n);
    fflush(stdout);
  }
  free(us);
  return rc;
}

/* One unmeasured message first, then `repeats` timed ones, each acknowledged
** before the next is sent. */
static int measure_bulk(int fd, size_t size, long repeats) {
  unsigned char *buf = alloc_touched(size);
  if (buf == NULL)
    return -1;
  unsigned char ack[ACK_BYTES];
  int rc = send_header(fd, PHASE_BULK, (uint64_t)repeats + 1, size);
  double start = 0;
  for (long i = 0; rc == 0 && i <= repeats; i++) {
    if (i == 1)
      start = now_s();
    if (write_full(fd, buf, size) < 0 || read_full(fd, ack, sizeof ack) < 0)
      rc = -1;
  }
  if (rc == 0) {
    double seconds = now_s() - start;
    printf("{\"bench\":\"%s\",\"what\":\"bulk_gbps\",\"bytes\":%zu,"
           "\"gbps\":%.6g,\"repeats\":%ld}\n",
           PROGRAM, size, (double)size * (double)repeats / seconds / 1e9,
           repeats);
    fflush(stdout);
  }
  free(buf);
  return rc;
}

/* Pipelined requests: the byte streams out and back, and how far each got. */
typedef struct stream_s {
  unsigned char *out;
  unsigned char *in;
  size_t total;
  size_t sent;
  size_t received;
} stream_t;

/* Writes requests until the socket would block, one write() per request
** (or per remainder of one that went out partly), as an RPC runtime sending
** each call as it is made would. */
static int write_requests(int fd, stream_t *s) {
  while (s->sent < s->total) {
    size_t len = SMALL_BYTES - s->sent % SMALL_BYTES;
    ssize_t n = write(fd, s->out + s->sent, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return 0;
    if (n < 0)
      return fail("write");
    s->sent += (size_t)n;
  }
  return 0;
}

static int read_replies(int fd, stream_t *s) {
  while (s->received < s->total) {
    ssize_t n = read(fd, s->in + s->received, s->total - s->received);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return 0;
    if (n < 0)
      return fail("read");
    if (n == 0) {
      fprintf(stderr, "%s: read: server closed the connection\n", PROGRAM);
      return -1;
    }
    s->received += (size_t)n;
  }
  return 0;
}

/* Nonblocking, so that neither side can stall the other with full buffers. */
static int pump_stream(int fd, stream_t *s) {
  while (s->received < s->total) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    if (s->sent < s->total)
      pfd.events |= POLLOUT;
    if (poll(&pfd, 1, -1) < 0) {
      if (errno == EINTR)
        continue;
      return fail("poll");
    }
    if ((pfd.revents & POLLOUT) && write_requests(fd, s) < 0)
      return -1;
    if ((pfd.revents & (POLLIN | POLLERR | POLLHUP)) && read_replies(fd, s) < 0)
      return -1;
  }
  return 0;
}

static int measure_pipelined(int fd, long count) {
  stream_t s = {.total = (size_t)count * SMALL_BYTES};
  s.out = alloc_touched(s.total);
  s.in = alloc_touched(s.total);
  int rc = s.out != NULL && s.in != NULL ? 0 : -1;
  /* Number each request, so that the echo can be checked afterwards. */
  for (long i = 0; rc == 0 && i < count; i++)
    put_u64(s.out + (size_t)i * SMALL_BYTES, (uint64_t)i);
  if (rc == 0)
    rc = send_header(fd, PHASE_ECHO, (uint64_t)count, SMALL_BYTES);
  if (rc == 0)
    rc = set_nonblocking(fd, 1);
  double start = now_s();
  if (rc == 0)
    rc = pump_stream(fd, &s);
  double seconds = now_s() - start;
  if (rc == 0)
    rc = set_nonblocking(fd, 0);
  if (rc == 0 && memcmp(s.out, s.in, s.total) != 0) {
    fprintf(stderr, "%s: echoed bytes differ from those sent\n", PROGRAM);
    rc = -1;
  }
  if (rc == 0) {
    printf("{\"bench\":\"%s\",\"what\":\"pipelined_msgs_per_s\","
           "\"value\":%.0f,\"bytes\":%d,\"n\":%ld}\n",
           PROGRAM, (double)count / seconds, SMALL_BYTES, count);
    fflush(stdout);
  }
  free(s.out);
  free(s.in);
  return rc;
}

static int run_client(int fd, const options_t *opt) {
  if (measure_round_trips(fd, opt) < 0 ||
      measure_bulk(fd, (size_t)1 << 20, opt->bulk_small_repeats) < 0 ||
      measure_bulk(fd, (size_t)64 << 20, opt->bulk_large_repeats) < 0 ||
      measure_pipelined(fd, opt->pipelined) < 0)
    return -1;
  return send_header(fd, PHASE_DONE, 0, 0);
}

/* --- Processes and sockets ------------------------------------------------ */

static void on_alarm(int sig) {
  static const char msg[] = PROGRAM
      ": gave up after " TO_STRING(TOTAL_SECONDS) " s; killing the server\n";
  (void)sig;
  if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0) {
    /* Nothing more to do about it in a signal handler. */
  }
  if (server_pid > 0) {
    kill(server_pid, SIGKILL);
    waitpid(server_pid, NULL, 0);
  }
  _exit(3);
}

static int install_signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_IGN; /* A lost peer shows as EPIPE, not a signal. */
  if (sigaction(SIGPIPE, &sa, NULL) < 0)
    return fail("sigaction(SIGPIPE)");
  sa.sa_handler = on_alarm;
  if (sigaction(SIGALRM, &sa, NULL) < 0)
    return fail("sigaction(SIGALRM)");
  return 0;
}

/* A listening socket on 127.0.0.1 and a port the kernel picked. */
static int open_listener(struct sockaddr_in *addr) {
  socklen_t len = sizeof *addr;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return fail("socket");
  memset(addr, 0, sizeof *addr);
  addr->sin_family = AF_INET;
  addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, (struct sockaddr *)addr, sizeof *addr) < 0 ||
      listen(fd, 1) < 0 || getsockname(fd, (struct sockaddr *)addr, &len) < 0) {
    fail("bind/listen on 127.0.0.1");
    close(fd);
    return -1;
  }
  return fd;
}

static int connect_to(const struct sockaddr_in *addr) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return fail("socket");
  if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) < 0) {
    fail("connect to 127.0.0.1");
    close(fd);
    return -1;
  }
  if (set_nodelay(fd) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* Waits for the server; if the client failed, kills it first, since it may
** be blocked on a connection that is not yet closed. */
static int reap_server(pid_t pid, int client_failed) {
  int status;
  if (client_failed)
    kill(pid, SIGKILL);
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR)
      return fail("waitpid");
  server_pid = -1;
  if (client_failed)
    return -1;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fprintf(stderr, "%s: the server process failed\n", PROGRAM);
    return -1;
  }
  return 0;
}

static int run(const options_t *opt) {
  struct sockaddr_in addr;
  int listener = open_listener(&addr);
  if (listener < 0)
    return -1;
  fflush(stdout);
  pid_t pid = fork();
  if (pid < 0) {
    close(listener);
    return fail("fork");
  }
  if (pid == 0)
    run_server(listener);
  server_pid = pid;
  close(listener); /* The server's copy keeps accepting. */
  int fd = connect_to(&addr);
  int rc = fd < 0 ? -1 : run_client(fd, opt);
  if (fd >= 0)
    close(fd);
  return reap_server(pid, rc < 0) < 0 ? -1 : rc;
}

/* --- Options -------------------------------------------------------------- */

static void usage(FILE *out) {
  fprintf(out,
          "usage: ember_tcp_baseline [--round-trips N] [--quick] [--help]\n"
          "Measures raw loopback TCP between two processes: 8-byte ping-pong\n"
          "round trips (TCP_NODELAY), 1 MiB and 64 MiB transfers with an\n"
          "acknowledgement, and 20,000 pipelined 32-byte echoes. Prints one\n"
          "JSON object per line.\n"
          "  --round-trips N  timed round trips (default 20000, after 1000\n"
          "                   warm-up ones)\n"
          "  --quick          fewer repetitions, for tests\n");
}

static int parse_count(const char *text, long *out) {
  char *end;
  errno = 0;
  long v = strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || v < 1 || v > 10000000)
    return -1;
  *out = v;
  return 0;
}

/* Returns 0 to run, 1 when --help was asked for, -1 on a bad command line. */
static int parse_options(int argc, char **argv, options_t *opt) {
  long round_trips = 0;
  int quick = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
      return 1;
    if (strcmp(argv[i], "--quick") == 0) {
      quick = 1;
    } else if (strcmp(argv[i], "--round-trips") == 0 && i + 1 < argc) {
      if (parse_count(argv[++i], &round_trips) < 0) {
        fprintf(stderr, "%s: --round-trips wants an integer from 1 to 1e7\n",
                PROGRAM);
        return -1;
      }
    } else {
      fprintf(stderr, "%s: unknown or incomplete option '%s'\n", PROGRAM,
              argv[i]);
      return -1;
    }
  }
  options_t full = {20000, 1000, 256, 8, 20000};
  options_t fast = {2000, 100, 16, 2, 20000};
  *opt = quick ? fast : full;
  if (round_trips > 0)
    opt->round_trips = round_trips;
  return 0;
}

int main(int argc, char **argv) {
  options_t opt;
  int parsed = parse_options(argc, argv, &opt);
  if (parsed != 0) {
    usage(parsed > 0 ? stdout : stderr);
    return parsed > 0 ? 0 : 2;
  }
  if (install_signals() < 0)
    return 1;
  alarm(TOTAL_SECONDS);
  return run(&opt) < 0 ? 1 : 0;
}
