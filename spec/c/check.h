/*
** A minimal test harness for the C core: each test file lists its tests and
** main() runs them, printing one line a test. A failed check aborts the test
** binary with the file, line and expression (ctest reports it).
*/
#ifndef EMBER_CHECK_H
#define EMBER_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define CHECK(expr)                                                            \
  do {                                                                         \
    if (!(expr)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #expr); \
      abort();                                                                 \
    }                                                                          \
  } while (0)

#define CHECK_EQ(a, b)                                                         \
  do {                                                                         \
    long long check_a_ = (long long)(a), check_b_ = (long long)(b);            \
    if (check_a_ != check_b_) {                                                \
      fprintf(stderr, "%s:%d: check failed: %s == %s (%lld != %lld)\n",        \
              __FILE__, __LINE__, #a, #b, check_a_, check_b_);                 \
      abort();                                                                 \
    }                                                                          \
  } while (0)

typedef struct {
  const char *name;
  void (*fn)(void);
} check_test_t;

#define CHECK_TEST(fn) {#fn, fn}

static inline int check_run(const check_test_t *tests, size_t count) {
  for (size_t i = 0; i < count; i++) {
    tests[i].fn();
    printf("ok %zu - %s\n", i + 1, tests[i].name);
  }
  printf("%zu passed, 0 failed\n", count);
  return 0;
}

#define CHECK_MAIN(...)                                                        \
  int main(void) {                                                             \
    static const check_test_t tests[] = {__VA_ARGS__};                         \
    return check_run(tests, sizeof(tests) / sizeof(tests[0]));                 \
  }

/* --- stderr, where the core says why it did something ----------------------- */

typedef struct {
  int saved;
  FILE *file;
} check_capture_t;

/* From now on, what is written to stderr goes to a temporary file. */
static inline void check_capture_begin(check_capture_t *c) {
  fflush(stderr);
  c->file = tmpfile();
  CHECK(c->file != NULL);
  c->saved = dup(2);
  CHECK(c->saved >= 0 && dup2(fileno(c->file), 2) >= 0);
}

/* Restores stderr and returns what was written to it (echoed there too). */
static inline void check_capture_end(check_capture_t *c, char *out,
                                     size_t size) {
  size_t n;
  fflush(stderr);
  CHECK(dup2(c->saved, 2) >= 0);
  close(c->saved);
  rewind(c->file);
  n = fread(out, 1, size - 1, c->file);
  out[n] = '\0';
  fclose(c->file);
  fputs(out, stderr);
}

#endif
