/*
** Tensors: dtypes, storage and view life cycle, creation, element access,
** the process's random generator, and error messages.
*/
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <string.h>

#include "autograd.h"
#include "counter_rng.h"
#include "error.h"
#include "tensor.h"

/* ---- dtypes ------------------------------------------------------------- */

static const struct {
  const char *name;
  size_t size;
  int is_float;
} dtype_info[EMBER_DTYPE_COUNT] = {
#define EMBER_DTYPE_INFO(name, ctype, lname, size, isfloat) {lname, size, isfloat},
    EMBER_DTYPE_MAP(EMBER_DTYPE_INFO)
#undef EMBER_DTYPE_INFO
};

const char *ember_dtype_name(ember_dtype_t dtype) {
  return dtype_info[dtype].name;
}

size_t ember_dtype_size(ember_dtype_t dtype) { return dtype_info[dtype].size; }

int ember_dtype_is_float(ember_dtype_t dtype) {
  return dtype_info[dtype].is_float;
}

int ember_dtype_from_name(const char *name, ember_dtype_t *dtype) {
  for (int i = 0; i < EMBER_DTYPE_COUNT; i++) {
    if (strcmp(name, dtype_info[i].name) == 0) {
      *dtype = (ember_dtype_t)i;
      return 0;
    }
  }
  /* PyTorch's aliases, so that code written for it reads the same here. */
  static const struct {
    const char *alias;
    ember_dtype_t dtype;
  } aliases[] = {{"float", EMBER_FLOAT32}, {"double", EMBER_FLOAT64},
                 {"long", EMBER_INT64},    {"int", EMBER_INT32},
                 {"byte", EMBER_UINT8}};
  for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++) {
    if (strcmp(name, aliases[i].alias) == 0) {
      *dtype = aliases[i].dtype;
      return 0;
    }
  }
  return ember__tensor_fail(EMBER_EINVAL,
                            "unknown dtype '%s' (expected float32, float64, "
                            "int64, int32, uint8 or bool)",
                            name);
}

ember_dtype_t ember_dtype_promote(ember_dtype_t a, ember_dtype_t b) {
  return a > b ? a : b;
}

/* ---- Errors --------------------------------------------------------------- */

static _Thread_local char last_error[512];

const char *ember_tensor_error(void) {
  return last_error[0] != '\0' ? last_error : "tensor operation failed";
}

int ember__tensor_fail(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  return code;
}

const char *ember_shape_string(const int64_t *shape, int ndim, char *buf,
                               size_t size) {
  size_t used = (size_t)snprintf(buf, size, "[");
  for (int i = 0; i < ndim && used < size; i++) {
    used += (size_t)snprintf(buf + used, size - used, "%s%lld",
                             i > 0 ? ", " : "", (long long)shape[i]);
  }
  if (used < size) snprintf(buf + used, size - used, "]");
  return buf;
}

/* ---- Life cycle ----------------------------------------------------------- */

static ember_storage_t *storage_new(size_t nbytes,
                                    const ember_device_t *device) {
  ember_storage_t *s = malloc(sizeof *s);
  if (s == NULL) return NULL;
  /* Never a NULL data pointer, even for an empty tensor. */
  s->data = device->alloc(device, nbytes > 0 ? nbytes : 1);
  if (s->data == NULL) {
    free(s);
    return NULL;
  }
  atomic_init(&s->refs, 1);
  s->version = 0;
  s->nbytes = nbytes;
  s->device = device;
  s->reusable_block = 0;
  s->pinned_by = NULL;
  return s;
}

/*
** CPU memory that will be overwritten at once (a payload read from a
** socket): not zeroed, and big blocks ask for huge pages, so that filling
** them takes few page faults.
*/
#define HUGE_PAGE_BYTES (2u << 20)

/*
** A few freed big blocks are kept for the next big payload: mapping fresh
** memory costs the kernel a page fault and a zeroed page per 4 KiB, which
** halves the speed of moving 64 MiB tensors.
*/
#define BLOCK_CACHE_SLOTS 4
#define BLOCK_CACHE_MIN (2 * HUGE_PAGE_BYTES)
#define BLOCK_CACHE_MAX_BYTES ((size_t)512 << 20)

static struct {
  void *data;
  size_t bytes;
} block_cache[BLOCK_CACHE_SLOTS];
static atomic_flag block_cache_lock = ATOMIC_FLAG_INIT;

static void block_cache_acquire(void) {
  while (atomic_flag_test_and_set_explicit(&block_cache_lock,
                                           memory_order_acquire)) {
  }
}

static void block_cache_release(void) {
  atomic_flag_clear_explicit(&block_cache_lock, memory_order_release);
}

/* A cached block of `bytes` (rounded to huge pages), or NULL. */
static void *block_cache_take(size_t bytes) {
  void *found = NULL;
  block_cache_acquire();
  for (int i = 0; i < BLOCK_CACHE_SLOTS && found == NULL; i++) {
    if (block_cache[i].data != NULL && block_cache[i].bytes == bytes) {
      found = block_cache[i].data;
      block_cache[i].data = NULL;
    }
  }
  block_cache_release();
  return found;
}

/* Keeps a freed block if there is room; returns whether it was kept. */
static int block_cache_put(void *data, size_t bytes) {
  size_t total = bytes;
  int free_slot = -1;
  block_cache_acquire();
  for (int i = 0; i < BLOCK_CACHE_SLOTS; i++) {
    if (block_cache[i].data == NULL) free_slot = i;
    else total += block_cache[i].bytes;
  }
  int kept = free_slot >= 0 && total <= BLOCK_CACHE_MAX_BYTES;
  if (kept) {
    block_cache[free_slot].data = data;
    block_cache[free_slot].bytes = bytes;
  }
  block_cache_release();
  return kept;
}

static size_t round_up(size_t n, size_t align) {
  return (n + align - 1) & ~(align - 1);
}

static void *cpu_alloc_uninit(size_t nbytes) {
  size_t align = nbytes >= BLOCK_CACHE_MIN ? HUGE_PAGE_BYTES : 64;
  size_t rounded = round_up(nbytes, align);
  void *p = NULL;
  if (align == HUGE_PAGE_BYTES && (p = block_cache_take(rounded)) != NULL)
    return p;
  if (posix_memalign(&p, align, rounded) != 0) return NULL;
#ifdef MADV_HUGEPAGE
  if (align == HUGE_PAGE_BYTES) madvise(p, rounded, MADV_HUGEPAGE);
#endif
  return p;
}

static ember_storage_t *storage_new_uninit(size_t nbytes) {
  ember_storage_t *s = malloc(sizeof *s);
  if (s == NULL) return NULL;
  s->data = cpu_alloc_uninit(nbytes > 0 ? nbytes : 1);
  if (s->data == NULL) {
    free(s);
    return NULL;
  }
  atomic_init(&s->refs, 1);
  s->version = 0;
  s->nbytes = nbytes;
  s->device = &ember_cpu_device; /* its free() takes this memory too */
  s->reusable_block = nbytes >= BLOCK_CACHE_MIN;
  s->pinned_by = NULL;
  return s;
}

/* Big blocks from cpu_alloc_uninit are huge-page aligned and sized. */
static int is_cacheable(const ember_storage_t *s) {
  return s->reusable_block && s->device == &ember_cpu_device;
}

static void storage_release(ember_storage_t *s) {
  if (atomic_fetch_sub(&s->refs, 1) == 1) {
    if (is_cacheable(s) &&
        block_cache_put(s->data, round_up(s->nbytes, HUGE_PAGE_BYTES))) {
      free(s);
      return;
    }
    if (s->pinned_by != NULL) s->pinned_by->host_free(s->pinned_by, s->data);
    else s->device->free(s->device, s->data);
    free(s);
  }
}

static int64_t shape_numel(const int64_t *shape, int ndim) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  return n;
}

static int check_shape(const int64_t *shape, int ndim) {
  char buf[128];
  if (ndim < 0 || ndim > EMBER_MAX_DIMS) {
    return ember__tensor_fail(EMBER_EINVAL,
                              "a tensor has at most %d dimensions, not %d",
                              EMBER_MAX_DIMS, ndim);
  }
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) {
      return ember__tensor_fail(EMBER_EINVAL, "negative size in shape %s",
                                ember_shape_string(shape, ndim, buf,
                                                   sizeof buf));
    }
    if (shape[i] > 0 && n > (INT64_C(1) << 40) / shape[i]) {
      return ember__tensor_fail(EMBER_ENOMEM, "shape %s is too large",
                                ember_shape_string(shape, ndim, buf,
                                                   sizeof buf));
    }
    n *= shape[i];
  }
  return 0;
}

static ember_tensor_t *tensor_alloc(void) {
  ember_tensor_t *t = calloc(1, sizeof *t);
  if (t == NULL) ember__tensor_fail(EMBER_ENOMEM, "out of memory");
  else t->refs = 1;
  return t;
}

static ember_tensor_t *tensor_new(const int64_t *shape, int ndim,
                                  ember_dtype_t dtype,
                                  const ember_device_t *device, int zeroed) {
  if (check_shape(shape, ndim) < 0) return NULL;
  ember_tensor_t *t = tensor_alloc();
  if (t == NULL) return NULL;
  int64_t n = shape_numel(shape, ndim);
  size_t nbytes = (size_t)n * ember_dtype_size(dtype);
  t->storage = zeroed ? storage_new(nbytes, device != NULL ? device
                                                           : &ember_cpu_device)
                      : storage_new_uninit(nbytes);
  if (t->storage == NULL) {
    free(t);
    ember__tensor_fail(EMBER_ENOMEM, "out of memory allocating %lld elements",
                       (long long)n);
    return NULL;
  }
  t->dtype = dtype;
  t->ndim = ndim;
  int64_t stride = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    t->shape[i] = shape[i];
    t->strides[i] = stride;
    stride *= shape[i] > 0 ? shape[i] : 1;
  }
  return t;
}

ember_tensor_t *ember_tensor_new(const int64_t *shape, int ndim,
                                 ember_dtype_t dtype,
                                 const ember_device_t *device) {
  return tensor_new(shape, ndim, dtype, device, 1);
}

ember_tensor_t *ember_tensor_empty(const int64_t *shape, int ndim,
                                   ember_dtype_t dtype) {
  return tensor_new(shape, ndim, dtype, NULL, 0);
}

ember_tensor_t *ember_tensor_staged_on_host(const ember_tensor_t *t) {
  const ember_device_t *device = t->storage->device;
  if (device->host_alloc == NULL) {
    int was = ember_set_grad_enabled(0);
    ember_tensor_t *copy = ember_tensor_to_device(t, &ember_cpu_device,
                                                  t->dtype, 1);
    ember_set_grad_enabled(was);
    return copy;
  }
  int was = ember_set_grad_enabled(0);
  ember_tensor_t *src = ember_tensor_contiguous(t);
  ember_set_grad_enabled(was);
  if (src == NULL) return NULL;
  ember_tensor_t *out = tensor_alloc();
  size_t nbytes = (size_t)ember_tensor_numel(t) * ember_dtype_size(t->dtype);
  ember_storage_t *s = out != NULL ? malloc(sizeof *s) : NULL;
  void *data = s != NULL ? device->host_alloc(device, nbytes > 0 ? nbytes : 1)
                         : NULL;
  if (data == NULL) {
    free(s);
    free(out);
    ember_tensor_release(src);
    ember__tensor_fail(EMBER_ENOMEM, "out of page-locked memory staging %zu "
                       "bytes from %s", nbytes, device->name);
    return NULL;
  }
  atomic_init(&s->refs, 1);
  s->version = 0;
  s->data = data;
  s->nbytes = nbytes;
  s->device = &ember_cpu_device;
  s->reusable_block = 0;
  s->pinned_by = device;
  out->storage = s;
  out->dtype = t->dtype;
  out->ndim = t->ndim;
  int64_t stride = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    out->shape[i] = t->shape[i];
    out->strides[i] = stride;
    stride *= t->shape[i] > 0 ? t->shape[i] : 1;
  }
  int rc = nbytes > 0 ? device->to_host(device, data, ember_tensor_data(src),
                                        nbytes)
                      : 0;
  ember_tensor_release(src);
  if (rc < 0) {
    ember_tensor_release(out);
    return NULL;
  }
  return out;
}

ember_tensor_t *ember_tensor_view_of(const ember_tensor_t *t,
                                     const int64_t *shape,
                                     const int64_t *strides, int ndim,
                                     int64_t offset) {
  ember_tensor_t *v = tensor_alloc();
  if (v == NULL) return NULL;
  v->storage = t->storage;
  atomic_fetch_add(&v->storage->refs, 1);
  v->dtype = t->dtype;
  v->ndim = ndim;
  v->offset = offset;
  memcpy(v->shape, shape, sizeof(int64_t) * (size_t)ndim);
  memcpy(v->strides, strides, sizeof(int64_t) * (size_t)ndim);
  return v;
}

void ember_tensor_retain(ember_tensor_t *t) { t->refs++; }

void ember_tensor_release(ember_tensor_t *t) {
  if (t == NULL || --t->refs > 0) return;
  if (t->grad != NULL) ember_tensor_release(t->grad);
  if (t->grad_fn != NULL) ember_node_release(t->grad_fn);
  storage_release(t->storage);
  free(t);
}

int64_t ember_tensor_numel(const ember_tensor_t *t) {
  return shape_numel(t->shape, t->ndim);
}

int ember_tensor_is_contiguous(const ember_tensor_t *t) {
  int64_t expected = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] != 1 && t->strides[i] != expected) return 0;
    expected *= t->shape[i];
  }
  return 1;
}

void *ember_tensor_data(const ember_tensor_t *t) {
  return (char *)t->storage->data +
         t->offset * (int64_t)ember_dtype_size(t->dtype);
}

int ember_tensor_same_shape(const ember_tensor_t *a, const ember_tensor_t *b) {
  if (a->ndim != b->ndim) return 0;
  for (int i = 0; i < a->ndim; i++) {
    if (a->shape[i] != b->shape[i]) return 0;
  }
  return 1;
}

int ember_tensor_wrap_dim(int *dim, int ndim, int extra) {
  int range = ndim + (extra ? 1 : 0);
  int d = *dim < 0 ? *dim + range : *dim;
  if (d < 0 || d >= (range > 0 ? range : 1)) {
    return ember__tensor_fail(EMBER_EINVAL,
                              "dimension %d out of range for a tensor of %d "
                              "dimension%s",
                              *dim >= 0 ? *dim + 1 : *dim, ndim,
                              ndim == 1 ? "" : "s");
  }
  *dim = d;
  return 0;
}

/* ---- Element access (CPU) ------------------------------------------------- */

static int64_t flat_to_offset(const ember_tensor_t *t, int64_t flat) {
  int64_t offset = t->offset;
  for (int i = t->ndim - 1; i >= 0; i--) {
    int64_t size = t->shape[i];
    offset += (flat % size) * t->strides[i];
    flat /= size;
  }
  return offset;
}

double ember__load_double(ember_dtype_t dtype, const void *p) {
  switch (dtype) {
#define EMBER_DTYPE_LOAD(name, ctype, lname, size, isfloat)                    \
  case EMBER_##name:                                                           \
    return (double)*(const ctype *)p;
    EMBER_DTYPE_MAP(EMBER_DTYPE_LOAD)
#undef EMBER_DTYPE_LOAD
  default:
    return 0;
  }
}

void ember__store_double(ember_dtype_t dtype, void *p, double v) {
  switch (dtype) {
  case EMBER_BOOL: *(uint8_t *)p = v != 0; break;
  case EMBER_UINT8: *(uint8_t *)p = (uint8_t)(int64_t)v; break;
  case EMBER_INT32: *(int32_t *)p = (int32_t)v; break;
  case EMBER_INT64: *(int64_t *)p = (int64_t)v; break;
  case EMBER_FLOAT32: *(float *)p = (float)v; break;
  case EMBER_FLOAT64: *(double *)p = v; break;
  default: break;
  }
}

static void *element_address(const ember_tensor_t *t, int64_t flat) {
  return (char *)t->storage->data +
         flat_to_offset(t, flat) * (int64_t)ember_dtype_size(t->dtype);
}

/* One element of any device into `value` (8 bytes, enough for every
** dtype); a device's copy waits for the work queued before it. */
static const void *element_on_host(const ember_tensor_t *t, int64_t flat,
                                   void *value) {
  const ember_device_t *device = t->storage->device;
  if (device->is_host) return element_address(t, flat);
  if (device->to_host(device, value, element_address(t, flat),
                      ember_dtype_size(t->dtype)) < 0) {
    /* The message stays for ember_tensor_error(); callers that can report
    ** it (item) read through a host copy instead. */
    memset(value, 0, 8);
  }
  return value;
}

double ember_tensor_get(const ember_tensor_t *t, int64_t flat) {
  uint64_t value;
  return ember__load_double(t->dtype, element_on_host(t, flat, &value));
}

int64_t ember_tensor_get_int(const ember_tensor_t *t, int64_t flat) {
  uint64_t value;
  const void *p = element_on_host(t, flat, &value);
  if (t->dtype == EMBER_INT64) return *(const int64_t *)p;
  return (int64_t)ember__load_double(t->dtype, p);
}

int ember_tensor_set(ember_tensor_t *t, int64_t flat, double value) {
  const ember_device_t *device = t->storage->device;
  if (device->is_host) {
    ember__store_double(t->dtype, element_address(t, flat), value);
    return 0;
  }
  uint64_t bytes;
  ember__store_double(t->dtype, &bytes, value);
  return device->from_host(device, element_address(t, flat), &bytes,
                           ember_dtype_size(t->dtype));
}

/* ---- Creation ------------------------------------------------------------- */

ember_tensor_t *ember_tensor_full(const int64_t *shape, int ndim,
                                  ember_dtype_t dtype, double value) {
  ember_tensor_t *t = ember_tensor_new(shape, ndim, dtype, NULL);
  if (t != NULL && value != 0 && t->storage->device->fill(t, value) < 0) {
    ember_tensor_release(t);
    return NULL;
  }
  return t;
}

ember_tensor_t *ember_tensor_arange(double start, double end, double step,
                                    ember_dtype_t dtype) {
  if (step == 0 || isnan(start) || isnan(end) || isnan(step)) {
    ember__tensor_fail(EMBER_EINVAL, "arange: step must be non-zero and the "
                                     "bounds numbers");
    return NULL;
  }
  double count = ceil((end - start) / step);
  if (count > (double)(INT64_C(1) << 40)) {
    ember__tensor_fail(EMBER_EINVAL, "arange: %g elements are too many", count);
    return NULL;
  }
  int64_t n = count > 0 ? (int64_t)count : 0;
  ember_tensor_t *t = ember_tensor_new(&n, 1, dtype, NULL);
  if (t == NULL) return NULL;
  for (int64_t i = 0; i < n; i++) ember_tensor_set(t, i, start + (double)i * step);
  return t;
}

ember_tensor_t *ember_tensor_eye(int64_t n, ember_dtype_t dtype) {
  int64_t shape[2] = {n, n};
  ember_tensor_t *t = ember_tensor_new(shape, 2, dtype, NULL);
  if (t == NULL) return NULL;
  for (int64_t i = 0; i < n; i++) ember_tensor_set(t, i * n + i, 1);
  return t;
}

/* ---- Random numbers --------------------------------------------------------
** xoshiro256** seeded through splitmix64: small, fast and well tested. */

static _Thread_local uint64_t rng[4];
static _Thread_local uint64_t rng_seed;
static _Thread_local int rng_ready;
static _Thread_local int normal_cached;
static _Thread_local double normal_next;

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += UINT64_C(0x9e3779b97f4a7c15));
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

void ember_random_seed(uint64_t seed) {
  uint64_t x = seed;
  for (int i = 0; i < 4; i++) rng[i] = splitmix64(&x);
  rng_seed = seed;
  rng_ready = 1;
  normal_cached = 0;
}

uint64_t ember_random_initial_seed(void) {
  if (!rng_ready) ember_random_seed(UINT64_C(0x5eed) ^ (uint64_t)uv_hrtime());
  return rng_seed;
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t next_u64(void) {
  if (!rng_ready) ember_random_initial_seed();
  uint64_t result = rotl(rng[1] * 5, 7) * 9;
  uint64_t t = rng[1] << 17;
  rng[2] ^= rng[0];
  rng[3] ^= rng[1];
  rng[1] ^= rng[2];
  rng[0] ^= rng[3];
  rng[2] ^= t;
  rng[3] = rotl(rng[3], 45);
  return result;
}

double ember_random_uniform(void) {
  return (double)(next_u64() >> 11) * 0x1.0p-53;
}

/* Box-Muller, keeping the second value for the next call. */
double ember_random_normal(void) {
  if (normal_cached) {
    normal_cached = 0;
    return normal_next;
  }
  double u1 = ember_random_uniform(), u2 = ember_random_uniform();
  double r = sqrt(-2.0 * log(1.0 - u1));
  normal_next = r * sin(2.0 * M_PI * u2);
  normal_cached = 1;
  return r * cos(2.0 * M_PI * u2);
}

static int check_float(const ember_tensor_t *t, const char *what) {
  if (!ember_dtype_is_float(t->dtype)) {
    return ember__tensor_fail(EMBER_EINVAL, "%s needs a float tensor, not %s",
                              what, ember_dtype_name(t->dtype));
  }
  return 0;
}

static int check_random_in_place(ember_tensor_t *t, const char *what) {
  if (check_float(t, what) < 0) return EMBER_EINVAL;
  return ember__begin_in_place(t, what);
}

/* A CPU tensor shaped like t, filled by fill(), copied into t: for devices
** without a random kernel. */
static int fill_through_host(ember_tensor_t *t, int normal, double a,
                             double b);

static int random_fill(ember_tensor_t *t, int normal, double a, double b) {
  const ember_device_t *device = t->storage->device;
  if (device->random != NULL) {
    return device->random(t, normal, a, b, next_u64());
  }
  if (!device->is_host) return fill_through_host(t, normal, a, b);
  int64_t n = ember_tensor_numel(t);
  for (int64_t i = 0; i < n; i++) {
    ember_tensor_set(t, i, normal ? a + b * ember_random_normal()
                                  : a + (b - a) * ember_random_uniform());
  }
  return 0;
}

static int fill_through_host(ember_tensor_t *t, int normal, double a,
                             double b) {
  ember_tensor_t *host = ember_tensor_new(t->shape, t->ndim, t->dtype,
                                          &ember_cpu_device);
  if (host == NULL) return EMBER_ENOMEM;
  int rc = random_fill(host, normal, a, b);
  if (rc == 0) rc = ember_tensor_copy_(t, host);
  ember_tensor_release(host);
  return rc;
}

int ember_tensor_uniform_(ember_tensor_t *t, double lo, double hi) {
  if (check_random_in_place(t, "uniform_") < 0) return EMBER_EINVAL;
  return random_fill(t, 0, lo, hi);
}

int ember_tensor_normal_(ember_tensor_t *t, double mean, double std) {
  if (check_random_in_place(t, "normal_") < 0) return EMBER_EINVAL;
  return random_fill(t, 1, mean, std);
}

int ember__host_random(ember_tensor_t *t, int normal, double a, double b,
                       uint64_t seed) {
  int64_t n = ember_tensor_numel(t);
  for (int64_t i = 0; i < n; i++) {
    double v = normal ? a + b * ember_counter_normal(seed, (uint64_t)i)
                      : a + (b - a) * ember_counter_uniform(seed, (uint64_t)i);
    ember_tensor_set(t, i, v);
  }
  return 0;
}

/* One draw from weights w[0..k) (stride apart) whose sum is total, with u
** uniform in [0, 1). */
static int64_t draw_index(const ember_tensor_t *w, int64_t row, int64_t k,
                          const uint8_t *taken, double total, double u) {
  double target = u * total, acc = 0;
  int64_t last = -1;
  for (int64_t j = 0; j < k; j++) {
    if (taken != NULL && taken[j]) continue;
    double p = ember_tensor_get(w, row * k + j);
    if (p <= 0) continue;
    last = j;
    acc += p;
    if (target < acc) return j;
  }
  return last; /* rounding left target at the very end */
}

int ember__host_multinomial(ember_tensor_t *out, const ember_tensor_t *probs,
                            uint64_t seed) {
  int64_t rows = out->shape[0], n = out->shape[1];
  int64_t k = probs->shape[1];
  for (int64_t r = 0; r < rows; r++) {
    double total = 0;
    for (int64_t j = 0; j < k; j++) total += ember_tensor_get(probs, r * k + j);
    for (int64_t s = 0; s < n; s++) {
      double u = ember_counter_uniform(seed, (uint64_t)(r * n + s));
      ember_tensor_set(out, r * n + s,
                       (double)draw_index(probs, r, k, NULL, total, u));
    }
  }
  return 0;
}

static int check_multinomial_args(const ember_tensor_t *probs, int64_t n,
                                  int replacement) {
  if (probs->ndim != 1 && probs->ndim != 2) {
    return ember__tensor_fail(EMBER_EINVAL, "multinomial: probabilities must "
                              "be 1-D or 2-D, not %d-D", probs->ndim);
  }
  int64_t k = probs->shape[probs->ndim - 1];
  if (n < 1 || (!replacement && n > k)) {
    return ember__tensor_fail(EMBER_EINVAL, "multinomial: cannot draw %lld "
                              "samples from %lld categories%s", (long long)n,
                              (long long)k,
                              replacement ? "" : " without replacement");
  }
  if (!ember_dtype_is_float(probs->dtype)) {
    return ember__tensor_fail(EMBER_EINVAL, "multinomial: probabilities must "
                              "be a float tensor, not %s",
                              ember_dtype_name(probs->dtype));
  }
  return 0;
}

/* The rows' smallest weight, smallest sum and the sum of all, computed where
** the probabilities live and read back in one copy. */
static int check_weights_on_device(const ember_tensor_t *w2) {
  ember_tensor_t *parts[3] = {NULL, NULL, NULL};
  ember_tensor_t *sums = ember_tensor_reduce(EMBER_REDUCE_SUM, w2, 1, 0, NULL);
  if (sums != NULL) {
    parts[0] = ember_tensor_reduce(EMBER_REDUCE_MIN, w2, EMBER_ALL_DIMS, 0, NULL);
    parts[1] = ember_tensor_reduce(EMBER_REDUCE_MIN, sums, EMBER_ALL_DIMS, 0, NULL);
    parts[2] = ember_tensor_reduce(EMBER_REDUCE_SUM, sums, EMBER_ALL_DIMS, 0, NULL);
  }
  ember_tensor_t *all = parts[0] != NULL && parts[1] != NULL && parts[2] != NULL
                            ? ember_tensor_stack(parts, 3, 0) : NULL;
  ember_tensor_t *host = all != NULL
      ? ember_tensor_to_device(all, &ember_cpu_device, EMBER_FLOAT64, 0) : NULL;
  int rc = host != NULL ? 0 : EMBER_ENOMEM;
  if (rc == 0) {
    double lowest = ember_tensor_get(host, 0), row_sum = ember_tensor_get(host, 1);
    double total = ember_tensor_get(host, 2);
    if (!(lowest >= 0) || !isfinite(total)) {
      rc = ember__tensor_fail(EMBER_EINVAL, "multinomial: probabilities must "
                              "be finite and non-negative");
    } else if (!(row_sum > 0)) {
      rc = ember__tensor_fail(EMBER_EINVAL, "multinomial: the probabilities of "
                              "a row sum to zero");
    }
  }
  ember_tensor_release(host);
  ember_tensor_release(all);
  for (int i = 0; i < 3; i++) ember_tensor_release(parts[i]);
  ember_tensor_release(sums);
  return rc;
}

/* Draws on the probabilities' device, with replacement. */
static ember_tensor_t *multinomial_on_device(const ember_tensor_t *probs,
                                             int64_t n) {
  int64_t rows = probs->ndim == 2 ? probs->shape[0] : 1;
  int64_t k = probs->shape[probs->ndim - 1];
  int64_t shape2[2] = {rows, k}, out_shape[2] = {rows, n};
  if (rows == 0) {
    return ember_tensor_new(out_shape, probs->ndim == 2 ? 2 : 1, EMBER_INT64,
                            probs->storage->device);
  }
  int was = ember_set_grad_enabled(0);
  ember_tensor_t *w2 = ember_tensor_reshape(probs, shape2, 2, 0);
  ember_set_grad_enabled(was);
  ember_tensor_t *out = NULL;
  if (w2 != NULL && check_weights_on_device(w2) == 0) {
    out = ember_tensor_new(out_shape, 2, EMBER_INT64, probs->storage->device);
    if (out != NULL &&
        probs->storage->device->multinomial(out, w2, next_u64()) < 0) {
      ember_tensor_release(out);
      out = NULL;
    }
  }
  ember_tensor_release(w2);
  if (out != NULL && probs->ndim == 1) {
    ember_tensor_t *flat = ember_tensor_reshape(out, &n, 1, 0);
    ember_tensor_release(out);
    out = flat;
  }
  return out;
}

static ember_tensor_t *multinomial_on_host(const ember_tensor_t *probs,
                                           int64_t n, int replacement);

ember_tensor_t *ember_tensor_multinomial(const ember_tensor_t *probs,
                                         int64_t n, int replacement) {
  if (check_multinomial_args(probs, n, replacement) < 0) return NULL;
  const ember_device_t *device = probs->storage->device;
  if (device->is_host) return multinomial_on_host(probs, n, replacement);
  if (device->multinomial != NULL && replacement) {
    return multinomial_on_device(probs, n);
  }
  /* Drawn on the host, handed back on the device. */
  ember_tensor_t *host = ember_tensor_to_device(probs, &ember_cpu_device,
                                                probs->dtype, 0);
  ember_tensor_t *drawn = host != NULL
      ? multinomial_on_host(host, n, replacement) : NULL;
  ember_tensor_t *out = drawn != NULL
      ? ember_tensor_to_device(drawn, device, EMBER_INT64, 0) : NULL;
  ember_tensor_release(drawn);
  ember_tensor_release(host);
  return out;
}

static ember_tensor_t *multinomial_on_host(const ember_tensor_t *probs,
                                           int64_t n, int replacement) {
  int64_t rows = probs->ndim == 2 ? probs->shape[0] : 1;
  int64_t k = probs->shape[probs->ndim - 1];
  ember_tensor_t *w = ember_tensor_to(probs, EMBER_FLOAT64, 0);
  if (w == NULL) return NULL;
  int64_t shape[2] = {rows, n};
  ember_tensor_t *out = probs->ndim == 2
      ? ember_tensor_new(shape, 2, EMBER_INT64, NULL)
      : ember_tensor_new(&n, 1, EMBER_INT64, NULL);
  uint8_t *taken = replacement ? NULL : calloc((size_t)k, 1);
  if (out == NULL || (!replacement && taken == NULL)) goto fail;
  for (int64_t r = 0; r < rows; r++) {
    double total = 0;
    for (int64_t j = 0; j < k; j++) {
      double p = ember_tensor_get(w, r * k + j);
      if (!(p >= 0) || isinf(p)) {
        ember__tensor_fail(EMBER_EINVAL, "multinomial: probabilities must be "
                           "finite and non-negative, found %g", p);
        goto fail;
      }
      total += p;
    }
    if (taken != NULL) memset(taken, 0, (size_t)k);
    for (int64_t s = 0; s < n; s++) {
      int64_t j = total > 0
          ? draw_index(w, r, k, taken, total, ember_random_uniform()) : -1;
      if (j < 0) {
        ember__tensor_fail(EMBER_EINVAL, "multinomial: the probabilities of "
                           "row %lld sum to zero", (long long)r + 1);
        goto fail;
      }
      if (taken != NULL) {
        /* Summed afresh: subtracting loses small weights to rounding. */
        taken[j] = 1;
        total = 0;
        for (int64_t i = 0; i < k; i++) {
          if (!taken[i]) total += ember_tensor_get(w, r * k + i);
        }
      }
      ((int64_t *)ember_tensor_data(out))[r * n + s] = j;
    }
  }
  free(taken);
  ember_tensor_release(w);
  return out;
fail:
  free(taken);
  ember_tensor_release(w);
  ember_tensor_release(out);
  return NULL;
}

/* ---- Devices -------------------------------------------------------------- */

int ember__check_devices(const char *what, const ember_tensor_t *a,
                         const ember_tensor_t *b) {
  if (a == NULL || b == NULL ||
      ember_device_same(a->storage->device, b->storage->device)) {
    return 0;
  }
  return ember__tensor_fail(EMBER_EINVAL, "%s: expected all tensors on one "
                            "device, found %s and %s", what,
                            a->storage->device->name,
                            b->storage->device->name);
}
