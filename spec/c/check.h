/*
** A minimal test harness for the C core: each test file lists its tests and
** main() runs them, printing one line a test. A failed check aborts the test
** binary with the file, line and expression (ctest reports it).
*/
#ifndef EMBER_CHECK_H
#define EMBER_CHECK_H

#include <stdio.h>
#include <stdlib.h>

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

#endif
