/*
** Devices without a GPU: names, copies between devices and their autograd,
** element access, random streams and mixing errors, run on the simulated
** CUDA devices (EMBER_CUDA_SIM), whose memory faults when the host touches
** it outside a kernel. Dimensions and indices are 0-based, as in the core.
*/
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "autograd.h"
#include "check.h"
#include "device.h"
#include "error.h"
#include "tensor.h"

#define CHECK_MSG(needle)                                                      \
  do {                                                                         \
    if (strstr(ember_tensor_error(), (needle)) == NULL) {                      \
      fprintf(stderr, "%s:%d: error message '%s' lacks '%s'\n", __FILE__,      \
              __LINE__, ember_tensor_error(), (needle));                       \
      abort();                                                                 \
    }                                                                          \
  } while (0)

static const ember_device_t *cuda(int index) {
  const ember_device_t *d = ember_cuda_device(index);
  CHECK(d != NULL);
  return d;
}

/* 0, 1, 2, ... as a float32 CPU tensor of the given shape. */
static ember_tensor_t *counting_up(const int64_t *shape, int ndim) {
  ember_tensor_t *t = ember_tensor_new(shape, ndim, EMBER_FLOAT32, NULL);
  CHECK(t != NULL);
  for (int64_t i = 0; i < ember_tensor_numel(t); i++) ember_tensor_set(t, i, i);
  return t;
}

static void device_names(void) {
  const ember_device_t *d;
  int count;
  CHECK_EQ(ember_cuda_device_count(&count), 0);
  CHECK_EQ(count, 2);
  CHECK(ember_cuda_is_simulated());
  CHECK_EQ(ember_device_from_name("cpu", &d), 0);
  CHECK(d == &ember_cpu_device);
  CHECK_EQ(ember_device_from_name("cuda", &d), 0);
  CHECK(strcmp(d->name, "cuda:0") == 0 && d->index == 0 && !d->is_host);
  CHECK_EQ(ember_device_from_name("cuda:1", &d), 0);
  CHECK(strcmp(d->name, "cuda:1") == 0 && d->index == 1);
  CHECK_EQ(ember_device_from_name("cuda:2", &d), EMBER_ENOCUDA);
  CHECK_MSG("this worker has 2 CUDA devices (cuda:0 to cuda:1)");
  CHECK_EQ(ember_device_from_name("gpu", &d), EMBER_EINVAL);
  CHECK_MSG("unknown device 'gpu'");
  CHECK_EQ(ember_device_from_name("cuda:", &d), EMBER_EINVAL);
  CHECK_EQ(ember_device_from_name("cuda:1x", &d), EMBER_EINVAL);
  CHECK_EQ(ember_device_from_name("cuda:-1", &d), EMBER_EINVAL);
  char name[128];
  CHECK_EQ(ember_cuda_device_name(1, name, sizeof name), 0);
  CHECK(strstr(name, "simulated") != NULL);
}

/* A CPU tensor through cuda:0 and cuda:1 and back, with math on the way,
** comes back with the values the CPU computes. */
static void copies_between_devices(void) {
  int64_t shape[2] = {3, 4};
  ember_tensor_t *host = counting_up(shape, 2);
  ember_tensor_t *on0 = ember_tensor_to_device(host, cuda(0), EMBER_FLOAT32, 0);
  CHECK(on0 != NULL && on0->storage->device == cuda(0));
  ember_tensor_t *t0 = ember_tensor_transpose(on0, 0, 1); /* strided */
  ember_tensor_t *doubled = ember_tensor_binary(EMBER_OP_ADD, t0, t0);
  ember_tensor_t *on1 = ember_tensor_to_device(doubled, cuda(1),
                                               EMBER_FLOAT64, 0);
  CHECK(on1 != NULL && on1->storage->device == cuda(1));
  CHECK_EQ(on1->dtype, EMBER_FLOAT64);
  ember_tensor_t *back = ember_tensor_to_device(on1, &ember_cpu_device,
                                                EMBER_FLOAT64, 0);
  CHECK(back != NULL && back->storage->device->is_host);
  CHECK_EQ(back->shape[0], 4);
  for (int64_t r = 0; r < 4; r++) {
    for (int64_t c = 0; c < 3; c++) {
      CHECK_EQ(ember_tensor_get(back, r * 3 + c), 2 * (c * 4 + r));
    }
  }
  /* Element access reads and writes through the device. */
  CHECK_EQ(ember_tensor_get(on1, 5), ember_tensor_get(back, 5));
  CHECK_EQ(ember_tensor_set(on1, 5, 42), 0);
  CHECK_EQ(ember_tensor_get(on1, 5), 42);
  /* copy_ takes a source from another device. */
  ember_tensor_t *dst = ember_tensor_new(shape, 2, EMBER_FLOAT32, cuda(1));
  CHECK_EQ(ember_tensor_copy_(dst, host), 0);
  CHECK_EQ(ember_tensor_get(dst, 11), 11);
  ember_tensor_t *tensors[] = {host, on0, t0, doubled, on1, back, dst};
  for (size_t i = 0; i < sizeof tensors / sizeof tensors[0]; i++) {
    ember_tensor_release(tensors[i]);
  }
}

/* The point of the simulation: the host cannot read device memory. */
static void host_access_faults(void) {
  int64_t n = 4;
  ember_tensor_t *t = ember_tensor_full(&n, 1, EMBER_FLOAT32, 1);
  ember_tensor_t *d = ember_tensor_to_device(t, cuda(0), EMBER_FLOAT32, 0);
  pid_t child = fork();
  CHECK(child >= 0);
  if (child == 0) {
    signal(SIGSEGV, SIG_DFL); /* not a sanitizer's report: just the fault */
    volatile float *p = d->storage->data;
    _exit(p[0] == 1.0f ? 0 : 1); /* must not get here */
  }
  int status;
  CHECK(waitpid(child, &status, 0) == child);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV);
  ember_tensor_release(d);
  ember_tensor_release(t);
}

static void mixing_devices_is_an_error(void) {
  int64_t n = 3;
  ember_tensor_t *a = ember_tensor_full(&n, 1, EMBER_FLOAT32, 1);
  ember_tensor_t *b = ember_tensor_to_device(a, cuda(0), EMBER_FLOAT32, 0);
  CHECK(ember_tensor_binary(EMBER_OP_MUL, a, b) == NULL);
  CHECK_MSG("mul: expected all tensors on one device, found cpu and cuda:0");
  int64_t shape[2] = {1, 3};
  ember_tensor_t *m = ember_tensor_reshape(b, shape, 2, 0);
  ember_tensor_t *mt = ember_tensor_reshape(a, shape, 2, 0);
  ember_tensor_t *mtt = ember_tensor_transpose(mt, 0, 1);
  CHECK(ember_tensor_matmul(m, mtt) == NULL);
  CHECK_MSG("found cuda:0 and cpu");
  ember_tensor_t *list[2] = {a, b};
  CHECK(ember_tensor_cat(list, 2, 0) == NULL);
  CHECK_MSG("cat: expected all tensors on one device");
  ember_tensor_t *tensors[] = {a, b, m, mt, mtt};
  for (size_t i = 0; i < sizeof tensors / sizeof tensors[0]; i++) {
    ember_tensor_release(tensors[i]);
  }
}

/* d/dx sum(3 * x.to(cuda)) = 3, delivered on the CPU where x lives. */
static void autograd_across_devices(void) {
  int64_t n = 5;
  ember_tensor_t *x = ember_tensor_full(&n, 1, EMBER_FLOAT64, 2);
  x->requires_grad = 1;
  ember_tensor_t *y = ember_tensor_to_device(x, cuda(0), EMBER_FLOAT64, 0);
  CHECK(y->grad_fn != NULL);
  CHECK(strcmp(y->grad_fn->kind->name, "ToCopyBackward0") == 0);
  ember_tensor_t *z = ember_tensor_binary_scalar(EMBER_OP_MUL, y, 3, 0, 0);
  ember_tensor_t *s = ember_tensor_reduce(EMBER_REDUCE_SUM, z, EMBER_ALL_DIMS,
                                          0, NULL);
  CHECK_EQ(ember_tensor_get(s, 0), 30);
  CHECK_EQ(ember_backward(s, NULL, 0), 0);
  CHECK(x->grad != NULL && x->grad->storage->device->is_host);
  for (int64_t i = 0; i < n; i++) CHECK_EQ(ember_tensor_get(x->grad, i), 3);
  ember_tensor_release(s);
  ember_tensor_release(z);
  ember_tensor_release(y);
  ember_tensor_release(x);
}

/* One seed draws one stream, whatever the device; categories follow the
** weights (a zero weight is never drawn). */
static void random_streams(void) {
  int64_t n = 1000;
  ember_tensor_t *a = ember_tensor_new(&n, 1, EMBER_FLOAT32, cuda(0));
  ember_tensor_t *b = ember_tensor_new(&n, 1, EMBER_FLOAT32, cuda(1));
  ember_random_seed(7);
  CHECK_EQ(ember_tensor_uniform_(a, -1, 1), 0);
  ember_random_seed(7);
  CHECK_EQ(ember_tensor_uniform_(b, -1, 1), 0);
  double sum = 0;
  for (int64_t i = 0; i < n; i++) {
    double v = ember_tensor_get(a, i);
    CHECK(v >= -1 && v < 1);
    CHECK(v == ember_tensor_get(b, i));
    sum += v;
  }
  CHECK(sum / (double)n > -0.1 && sum / (double)n < 0.1);
  int64_t k = 3;
  ember_tensor_t *w = ember_tensor_new(&k, 1, EMBER_FLOAT32, NULL);
  ember_tensor_set(w, 0, 1);
  ember_tensor_set(w, 2, 3);
  ember_tensor_t *wd = ember_tensor_to_device(w, cuda(0), EMBER_FLOAT32, 0);
  ember_tensor_t *draws = ember_tensor_multinomial(wd, 400, 1);
  CHECK(draws != NULL && draws->storage->device == cuda(0));
  int64_t counts[3] = {0, 0, 0};
  for (int64_t i = 0; i < 400; i++) counts[ember_tensor_get_int(draws, i)]++;
  CHECK_EQ(counts[1], 0);
  CHECK(counts[2] > 2 * counts[0]);
  ember_tensor_set(wd, 0, -1);
  CHECK(ember_tensor_multinomial(wd, 1, 1) == NULL);
  CHECK_MSG("finite and non-negative");
  ember_tensor_t *tensors[] = {a, b, w, wd, draws};
  for (size_t i = 0; i < sizeof tensors / sizeof tensors[0]; i++) {
    ember_tensor_release(tensors[i]);
  }
}

/* Freed blocks are reused: a thousand tensors of one size cost one raw
** allocation. */
static void allocations_are_cached(void) {
  ember_memory_stats_t before, after;
  CHECK_EQ(ember_cuda_memory_stats(0, &before), 0);
  int64_t n = 1000;
  for (int i = 0; i < 1000; i++) {
    ember_tensor_t *t = ember_tensor_new(&n, 1, EMBER_FLOAT32, cuda(0));
    CHECK(t != NULL);
    ember_tensor_release(t);
  }
  CHECK_EQ(ember_cuda_memory_stats(0, &after), 0);
  CHECK(after.raw_allocs - before.raw_allocs <= 1);
  CHECK(after.reuses - before.reuses >= 999);
  CHECK_EQ(after.allocated_bytes, before.allocated_bytes);
  CHECK_EQ(ember_cuda_empty_cache(), 0);
  CHECK_EQ(ember_cuda_memory_stats(0, &after), 0);
  CHECK_EQ(after.cached_bytes, 0);
}

/* index_select on a device checks its indices before the kernel runs. */
static void device_indices_are_checked(void) {
  int64_t shape[2] = {4, 2};
  ember_tensor_t *x = counting_up(shape, 2);
  ember_tensor_t *xd = ember_tensor_to_device(x, cuda(0), EMBER_FLOAT32, 0);
  int64_t n = 2;
  ember_tensor_t *index = ember_tensor_new(&n, 1, EMBER_INT64, NULL);
  ember_tensor_set(index, 0, 3);
  ember_tensor_set(index, 1, 1);
  ember_tensor_t *id = ember_tensor_to_device(index, cuda(0), EMBER_INT64, 0);
  ember_tensor_t *rows = ember_tensor_index_select(xd, 0, id);
  CHECK(rows != NULL);
  CHECK_EQ(ember_tensor_get(rows, 0), 6);
  CHECK_EQ(ember_tensor_get(rows, 3), 3);
  ember_tensor_set(id, 1, 4);
  CHECK(ember_tensor_index_select(xd, 0, id) == NULL);
  CHECK_MSG("index 5 is out of range for dimension 1 of size 4");
  ember_tensor_t *tensors[] = {x, xd, index, id, rows};
  for (size_t i = 0; i < sizeof tensors / sizeof tensors[0]; i++) {
    ember_tensor_release(tensors[i]);
  }
}

static void run_all(void);

int main(void) {
  setenv("EMBER_CUDA_SIM", "2", 1);
  run_all();
  return 0;
}

static void run_all(void) {
  static const check_test_t tests[] = {
      CHECK_TEST(device_names),
      CHECK_TEST(copies_between_devices),
      CHECK_TEST(host_access_faults),
      CHECK_TEST(mixing_devices_is_an_error),
      CHECK_TEST(autograd_across_devices),
      CHECK_TEST(random_streams),
      CHECK_TEST(allocations_are_cached),
      CHECK_TEST(device_indices_are_checked),
  };
  check_run(tests, sizeof tests / sizeof tests[0]);
}
