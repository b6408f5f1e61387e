/*
** libFuzzer target: the msgpack body decoders.
**
** Input: one byte that picks how many tensor payloads the frame carries (its
** low two bits: 0 to 3 byte payloads of 8, 24 and 64 bytes), then the body.
** Per input:
**
** 1. ember_wire_check_body (core/wire.c) with the default limits. It must
**    allocate nothing.
** 2. For a body it accepts, msgpack-c's unpacker must succeed on it,
**    consuming it whole, unless it nests deeper than msgpack-c's 32 levels
**    (then it must fail cleanly): the walk exists so that nothing it accepts
**    makes msgpack-c allocate from a forged count. What msgpack-c allocates
**    is measured and bounded by MSGPACK_C_PER_BYTE * n + 64 KiB: 24 bytes an
**    object, and its zone rounds a big array's chunk up to a power of two
**    (48n). ember's core no longer unpacks received bytes with msgpack-c
**    (the frame reader parses handshakes with the checked token reader), so
**    this is a check of the walk, not a bound ember relies on.
** 3. The real Lua decoding (ember__lua_wire_decode, core/lua_wire.c) in a Lua
**    state whose lua_Alloc counts bytes, with registered classes and a
**    function hook. A decoding error is fine; a crash is not. What the decode
**    allocates (Lua's bytes plus C's, with the collector stopped) must stay
**    within LUA_DECODE_PER_BYTE * n + 64 KiB.
**
** The bound for the Lua side (spec/fuzz/README.md has the measurements):
** every body byte makes at most one Lua object, and the costliest is an
** empty table (1 byte: 0x90 or 0x80) at 56 bytes, held in a 16-byte array
** slot of its parent, or a map entry (2 bytes) of two empty tables (112
** bytes) in a 24-byte hash node that power-of-two sizing may double (48
** bytes): 80 bytes a body byte. 96 leaves room for the stack and the string
** table. 8n does not hold for the Lua side, and cannot: a 1-byte nil in an
** array already takes a 16-byte slot.
**
** C allocations are counted with ASan's malloc hooks (the build always has
** ASan).
**
** EMBER_FUZZ_VERBOSE=1 prints each new worst ratio as it is found.
*/
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <msgpack.h>
#include <sanitizer/allocator_interface.h>
#include <stdint.h>

#include "fuzz_common.h"
#include "lua_common.h"
#include "tensor.h"
#include "wire.h"

#define SLACK (64u << 10)
#define MSGPACK_C_PER_BYTE 48
#define LUA_DECODE_PER_BYTE 96
#define MSGPACK_C_MAX_DEPTH 32 /* MSGPACK_EMBED_STACK_SIZE */
#define PAYLOADS 3
/* Ratios are tracked from this body size on (smaller ones are all slack). */
#define RATIO_MIN_BODY 256

int luaopen_ember_core(lua_State *L);
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ---- Counting allocations ------------------------------------------------ */

/* C bytes allocated while `counting` (ASan's hooks see every malloc) on
** this thread. Volatile: the compiler knows that malloc calls no user code
** and would drop a store to `counting` around it. */
static _Thread_local volatile struct {
  int counting;
  size_t bytes;
  size_t calls;
} c_alloc;

static void malloc_hook(const volatile void *ptr, size_t size) {
  (void)ptr;
  if (c_alloc.counting) {
    c_alloc.bytes += size;
    c_alloc.calls++;
  }
}

static void free_hook(const volatile void *ptr) {
  (void)ptr;
}

static void c_count_begin(void) {
  c_alloc.bytes = 0;
  c_alloc.calls = 0;
  c_alloc.counting = 1;
}

static size_t c_count_end(void) {
  c_alloc.counting = 0;
  return c_alloc.bytes;
}

/* Lua's bytes: `grown` sums every increase (so frees never hide a peak). */
static struct { size_t grown; } lua_bytes;

static void *counting_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  size_t old = ptr != NULL ? osize : 0;
  int counting = c_alloc.counting; /* counted here, not twice */
  c_alloc.counting = 0;
  void *p = realloc(ptr, nsize);
  c_alloc.counting = counting;
  if (p != NULL && nsize > old)
    lua_bytes.grown += nsize - old;
  return p;
}

/* ---- The Lua state, made once -------------------------------------------- */

static lua_State *L;
static ember_tensor_t *payloads[PAYLOADS];

static const char setup_chunk[] =
    "local core = ...\n"
    "core.wire_register_class('C', {})\n"
    "core.wire_register_class('U', {__unpack = function(s) return {s} end})\n"
    "core.wire_register_class('Point', {})\n"
    "core.wire_register_class('ember.RemoteError', {})\n"
    "core.wire_register_class('ember.RRef', {__unpack = function(s)\n"
    "  if type(s) ~= 'table' then error('bad RRef state') end\n"
    "  return {owner = s[1], id = s[2]}\n"
    "end})\n"
    "core.wire_set_hooks{function_load = function(ref)\n"
    "  if ref:find('^x') then error('no function ' .. ref) end\n"
    "  return print\n"
    "end}\n";

static void make_state(void) {
  L = lua_newstate(counting_alloc, NULL);
  FUZZ_ASSERT(L != NULL, "lua_newstate");
  luaL_openlibs(L);
  luaL_requiref(L, "ember.core", luaopen_ember_core, 0);
  FUZZ_ASSERT(luaL_loadstring(L, setup_chunk) == LUA_OK, "setup chunk");
  lua_insert(L, -2);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    FUZZ_ASSERT(0, "setup: %s", lua_tostring(L, -1));
  }
  lua_settop(L, 0);
  static const int64_t sizes[PAYLOADS] = {8, 24, 64};
  for (int i = 0; i < PAYLOADS; i++) {
    payloads[i] = ember_tensor_empty(&sizes[i], 1, EMBER_UINT8);
    FUZZ_ASSERT(payloads[i] != NULL, "payload %d", i);
    memset(payloads[i]->storage->data, 0x3f, (size_t)sizes[i]);
  }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  fuzz_quiet();
  __sanitizer_install_malloc_and_free_hooks(malloc_hook, free_hook);
  make_state();
  return 0;
}

/* ---- Worst ratios -------------------------------------------------------- */

static double worst_msgpack, worst_lua;

static int verbose(void) {
  const char *v = getenv("EMBER_FUZZ_VERBOSE");
  return v != NULL && v[0] == '1';
}

static void note_ratio(double *worst, const char *what, size_t bytes,
                       size_t n) {
  if (n < RATIO_MIN_BODY)
    return;
  double ratio = (double)bytes / (double)n;
  if (ratio <= *worst)
    return;
  *worst = ratio;
  if (verbose()) {
    fprintf(fuzz_report,
            "fuzz_body: %s: %zu bytes for a %zu-byte body "
            "(%.1f a byte)\n",
            what, bytes, n, ratio);
  }
}

/* ---- The checks ---------------------------------------------------------- */

static void check_msgpack_c(const char *body, size_t n) {
  ember_wire_limits_t shallow;
  ember_wire_default_limits(&shallow);
  shallow.max_depth = MSGPACK_C_MAX_DEPTH;
  int fits = ember_wire_check_body(body, n, &shallow) == 0;

  msgpack_unpacked unpacked;
  size_t offset = 0;
  msgpack_unpacked_init(&unpacked);
  c_count_begin();
  msgpack_unpack_return ret = msgpack_unpack_next(&unpacked, body, n, &offset);
  size_t bytes = c_count_end();
  msgpack_unpacked_destroy(&unpacked);

  if (fits) {
    FUZZ_ASSERT(ret == MSGPACK_UNPACK_SUCCESS && offset == n,
                "msgpack-c refused a %zu-byte body the walk accepted "
                "(returned %d at offset %zu)",
                n, (int)ret, offset);
  } else {
    /* Deeper than 32: msgpack-c refuses it, unless the deepest containers
    ** are empty (it does not stack those). */
    FUZZ_ASSERT(ret == MSGPACK_UNPACK_NOMEM_ERROR ||
                    (ret == MSGPACK_UNPACK_SUCCESS && offset == n),
                "a body deeper than %d levels: msgpack-c returned %d",
                MSGPACK_C_MAX_DEPTH, (int)ret);
  }
  FUZZ_ASSERT(bytes <= MSGPACK_C_PER_BYTE * n + SLACK,
              "msgpack-c allocated %zu bytes for a %zu-byte body", bytes, n);
  note_ratio(&worst_msgpack, "msgpack-c", bytes, n);
}

typedef struct {
  const char *body;
  size_t n;
  uint32_t count;
} decode_args_t;

static int decode_cb(lua_State *Ls) {
  const decode_args_t *a = lua_touserdata(Ls, 1);
  ember__lua_wire_decode(Ls, a->body, a->n, payloads, a->count, NULL);
  return 1;
}

static void check_lua_decode(const char *body, size_t n, uint32_t count) {
  decode_args_t args = {body, n, count};
  lua_gc(L, LUA_GCSTOP);
  lua_pushcfunction(L, decode_cb);
  lua_pushlightuserdata(L, &args);
  lua_bytes.grown = 0;
  c_count_begin();
  /* A decoding error is a fine answer. */
  if (lua_pcall(L, 1, 1, 0) != LUA_OK && verbose())
    fprintf(fuzz_report, "fuzz_body: %s\n", lua_tostring(L, -1));
  size_t c_bytes = c_count_end();
  size_t bytes = c_bytes + lua_bytes.grown;
  lua_settop(L, 0);
  lua_gc(L, LUA_GCRESTART);
  lua_gc(L, LUA_GCCOLLECT);
  FUZZ_ASSERT(bytes <= LUA_DECODE_PER_BYTE * n + SLACK,
              "decoding a %zu-byte body into Lua allocated %zu bytes", n,
              bytes);
  note_ratio(&worst_lua, "Lua decode", bytes, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  uint32_t count = data[0] & 3u;
  size_t n = size - 1;
  /* A copy of exactly n bytes, so ASan sees any read past the body. */
  char *body = malloc(n > 0 ? n : 1);
  FUZZ_ASSERT(body != NULL, "out of memory");
  memcpy(body, data + 1, n);

  ember_wire_limits_t limits;
  ember_wire_default_limits(&limits);
  c_count_begin();
  int accepted = ember_wire_check_body(body, n, &limits) == 0;
  FUZZ_ASSERT(c_count_end() == 0, "ember_wire_check_body allocated %zu times",
              c_alloc.calls);
  if (accepted) {
    check_msgpack_c(body, n);
    check_lua_decode(body, n, count);
  }
  free(body);
  return 0;
}
