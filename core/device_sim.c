/*
** Simulated CUDA devices (EMBER_CUDA_SIM=n), for testing on a machine
** without a GPU everything around the kernels: device names and maps,
** copies between devices and their autograd, the caching allocator, RPC
** staging. The kernels are the CPU's; the memory is mapped PROT_NONE and
** opened only while a kernel or a staging copy of this device runs, so a
** host access that the front end forgot to route through the device
** faults at once, as it would crash on a GPU.
**
** Kernels nest (a CPU kernel may call the front end, which launches
** more): memory opened inside stays open until the outermost one returns.
** Like every tensor, these belong to the loop thread.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "caching_allocator.h"
#include "device.h"
#include "error.h"

typedef struct {
  ember_device_t device;
  char name[16];
  ember_caching_allocator_t *memory;
} sim_device_t;

static sim_device_t sims[EMBER_MAX_CUDA_DEVICES];
static int sim_count;
static const ember_device_t sim_template;

/* ---- Guarded memory ---------------------------------------------------- */

#define MAX_OPEN 256

static struct {
  int depth;
  int count;
  struct {
    void *base;
    size_t bytes;
  } blocks[MAX_OPEN];
} opened;

static size_t page_round(size_t n) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  return (n + page - 1) & ~(page - 1);
}

static void *raw_alloc(size_t nbytes, void *ctx) {
  void *p = mmap(NULL, page_round(nbytes), PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

static void raw_free(void *p, size_t nbytes, void *ctx) {
  munmap(p, page_round(nbytes));
}

static sim_device_t *sim_of(const ember_device_t *device) {
  return (sim_device_t *)device;
}

static int is_sim(const ember_device_t *device) {
  return device->alloc == sim_template.alloc;
}

/* Opens the pages of [data, data + bytes) until the outermost kernel
** returns. */
static void open_range(const void *data, size_t bytes) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  uintptr_t first = (uintptr_t)data & ~(uintptr_t)(page - 1);
  size_t span = page_round((uintptr_t)data + bytes - first);
  for (int i = 0; i < opened.count; i++) {
    uintptr_t base = (uintptr_t)opened.blocks[i].base;
    if (base <= first && first + span <= base + opened.blocks[i].bytes) {
      return; /* already open */
    }
  }
  if (opened.count == MAX_OPEN) abort(); /* a test device: fail loudly */
  mprotect((void *)first, span, PROT_READ | PROT_WRITE);
  opened.blocks[opened.count].base = (void *)first;
  opened.blocks[opened.count].bytes = span;
  opened.count++;
}

/* Opens the whole block that starts at `data` (a storage's). */
static void open_block(const ember_device_t *d, const void *data) {
  size_t bytes = ember_caching_block_size(sim_of(d)->memory, data);
  if (bytes > 0) open_range(data, bytes);
}

static void open_tensor(const ember_tensor_t *t) {
  if (t != NULL && is_sim(t->storage->device)) {
    open_block(t->storage->device, t->storage->data);
  }
}

static void enter(void) { opened.depth++; }

static void leave(void) {
  if (--opened.depth > 0) return;
  for (int i = 0; i < opened.count; i++) {
    mprotect(opened.blocks[i].base, opened.blocks[i].bytes, PROT_NONE);
  }
  opened.count = 0;
}

/* ---- Memory ------------------------------------------------------------ */

static void *sim_alloc(const ember_device_t *d, size_t nbytes) {
  void *p = ember_caching_alloc(sim_of(d)->memory, nbytes);
  if (p == NULL) return NULL;
  enter();
  open_block(d, p);
  memset(p, 0, nbytes);
  leave();
  return p;
}

static void sim_free(const ember_device_t *d, void *data) {
  ember_caching_free(sim_of(d)->memory, data);
}

static int sim_to_host(const ember_device_t *d, void *host, const void *data,
                       size_t nbytes) {
  enter();
  open_range(data, nbytes);
  memcpy(host, data, nbytes);
  leave();
  return 0;
}

static int sim_from_host(const ember_device_t *d, void *data,
                         const void *host, size_t nbytes) {
  enter();
  open_range(data, nbytes);
  memcpy(data, host, nbytes);
  leave();
  return 0;
}

static int sim_synchronize(const ember_device_t *d) { return 0; }

/* ---- Kernels: the CPU's, with the operands opened ------------------------- */

#define CPU ember_cpu_device

static int sim_copy(ember_tensor_t *dst, const ember_tensor_t *src) {
  enter();
  open_tensor(dst);
  open_tensor(src);
  int rc = CPU.copy(dst, src);
  leave();
  return rc;
}

static int sim_fill(ember_tensor_t *dst, double value) {
  enter();
  open_tensor(dst);
  int rc = CPU.fill(dst, value);
  leave();
  return rc;
}

static int sim_unary(ember_unary_op_t op, ember_tensor_t *out,
                     const ember_tensor_t *x, double arg0, double arg1) {
  enter();
  open_tensor(out);
  open_tensor(x);
  int rc = CPU.unary(op, out, x, arg0, arg1);
  leave();
  return rc;
}

static int sim_binary(ember_binary_op_t op, ember_tensor_t *out,
                      const ember_tensor_t *a, const ember_tensor_t *b) {
  enter();
  open_tensor(out);
  open_tensor(a);
  open_tensor(b);
  int rc = CPU.binary(op, out, a, b);
  leave();
  return rc;
}

static int sim_reduce(ember_reduce_op_t op, ember_tensor_t *out,
                      ember_tensor_t *index, const ember_tensor_t *x,
                      int dim) {
  enter();
  open_tensor(out);
  open_tensor(index);
  open_tensor(x);
  int rc = CPU.reduce(op, out, index, x, dim);
  leave();
  return rc;
}

static int sim_gemm(ember_tensor_t *out, const ember_tensor_t *a,
                    const ember_tensor_t *b, double alpha, double beta) {
  enter();
  open_tensor(out);
  open_tensor(a);
  open_tensor(b);
  int rc = CPU.gemm(out, a, b, alpha, beta);
  leave();
  return rc;
}

static int sim_softmax(ember_tensor_t *out, const ember_tensor_t *x, int dim,
                       int log) {
  enter();
  open_tensor(out);
  open_tensor(x);
  int rc = CPU.softmax(out, x, dim, log);
  leave();
  return rc;
}

static int sim_softmax_backward(ember_tensor_t *grad_x,
                                const ember_tensor_t *grad_y,
                                const ember_tensor_t *y, int dim, int log) {
  enter();
  open_tensor(grad_x);
  open_tensor(grad_y);
  open_tensor(y);
  int rc = CPU.softmax_backward(grad_x, grad_y, y, dim, log);
  leave();
  return rc;
}

static int sim_gather(ember_tensor_t *out, const ember_tensor_t *x, int dim,
                      const ember_tensor_t *index) {
  enter();
  open_tensor(out);
  open_tensor(x);
  open_tensor(index);
  int rc = CPU.gather(out, x, dim, index);
  leave();
  return rc;
}

static int sim_scatter(ember_tensor_t *dst, int dim,
                       const ember_tensor_t *index, const ember_tensor_t *src,
                       int accumulate) {
  enter();
  open_tensor(dst);
  open_tensor(index);
  open_tensor(src);
  int rc = CPU.scatter(dst, dim, index, src, accumulate);
  leave();
  return rc;
}

static int sim_where(ember_tensor_t *out, const ember_tensor_t *cond,
                     const ember_tensor_t *a, const ember_tensor_t *b) {
  enter();
  open_tensor(out);
  open_tensor(cond);
  open_tensor(a);
  open_tensor(b);
  int rc = CPU.where(out, cond, a, b);
  leave();
  return rc;
}

/* The optional kernels, as a GPU computes them: the counter-based stream
** and one batched GEMM, so the front end's device paths are the ones that
** run here. */
static int sim_random(ember_tensor_t *t, int normal, double a, double b,
                      uint64_t seed) {
  enter();
  open_tensor(t);
  int rc = ember__host_random(t, normal, a, b, seed);
  leave();
  return rc;
}

static int sim_multinomial(ember_tensor_t *out, const ember_tensor_t *probs,
                           uint64_t seed) {
  enter();
  open_tensor(out);
  open_tensor(probs);
  int rc = ember__host_multinomial(out, probs, seed);
  leave();
  return rc;
}

static int sim_gemm_batched(ember_tensor_t *out, const ember_tensor_t *a,
                            const ember_tensor_t *b, double alpha,
                            double beta) {
  enter();
  open_tensor(out);
  open_tensor(a);
  open_tensor(b);
  int rc = 0;
  for (int64_t i = 0; rc == 0 && i < out->shape[0]; i++) {
    ember_tensor_t *oi = ember_tensor_select(out, 0, i);
    ember_tensor_t *ai = ember_tensor_select(a, 0, i);
    ember_tensor_t *bi = ember_tensor_select(b, 0, i);
    rc = oi != NULL && ai != NULL && bi != NULL
             ? CPU.gemm(oi, ai, bi, alpha, beta)
             : EMBER_ENOMEM;
    ember_tensor_release(oi);
    ember_tensor_release(ai);
    ember_tensor_release(bi);
  }
  leave();
  return rc;
}

static const ember_device_t sim_template = {
    .type = "cuda",
    .is_host = 0,
    .alloc = sim_alloc,
    .free = sim_free,
    .to_host = sim_to_host,
    .from_host = sim_from_host,
    .synchronize = sim_synchronize,
    .copy = sim_copy,
    .fill = sim_fill,
    .unary = sim_unary,
    .binary = sim_binary,
    .reduce = sim_reduce,
    .gemm = sim_gemm,
    .softmax = sim_softmax,
    .softmax_backward = sim_softmax_backward,
    .gather = sim_gather,
    .scatter = sim_scatter,
    .where = sim_where,
    .random = sim_random,
    .multinomial = sim_multinomial,
    .gemm_batched = sim_gemm_batched,
};

/* ---- The backend ------------------------------------------------------- */

static int sim_backend_count(void) { return sim_count; }

static const ember_device_t *sim_backend_device(int index) {
  return &sims[index].device;
}

static int sim_backend_name(int index, char *buf, size_t size) {
  snprintf(buf, size, "simulated CUDA device %d (guarded host memory)",
           index);
  return 0;
}

static int sim_backend_memory_stats(int index, ember_memory_stats_t *stats) {
  ember_caching_stats(sims[index].memory, stats);
  return 0;
}

static int sim_backend_empty_cache(void) {
  for (int i = 0; i < sim_count; i++) ember_caching_empty(sims[i].memory);
  return 0;
}

static const ember_cuda_backend_t sim_backend = {
    sim_backend_count, sim_backend_device, sim_backend_name,
    sim_backend_memory_stats, sim_backend_empty_cache,
};

const ember_cuda_backend_t *ember__cuda_sim_backend(int n) {
  for (int i = sim_count; i < n; i++) {
    sim_device_t *sim = &sims[i];
    sim->device = sim_template;
    snprintf(sim->name, sizeof sim->name, "cuda:%d", i);
    sim->device.name = sim->name;
    sim->device.index = i;
    sim->memory = ember_caching_allocator_new(raw_alloc, raw_free, sim);
    if (sim->memory == NULL) return NULL;
    sim_count = i + 1;
  }
  return &sim_backend;
}
