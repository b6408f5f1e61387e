/*
** The ember executable: a Lua 5.4 state with ember.core built in and the Lua
** library embedded; the command line itself is handled by ember.cli (Lua).
*/
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef EMBER_HAVE_READLINE
#include <readline/history.h>
#include <readline/readline.h>
#endif

#include "embedded_lua.h"

int luaopen_ember_core(lua_State *L);

/* package.searchers entry: modules of the embedded library. */
static int embedded_searcher(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  for (const ember_embedded_lua_t *e = ember_embedded_lua; e->module; e++) {
    if (strcmp(e->module, name) != 0)
      continue;
    if (luaL_loadbuffer(L, e->source, e->length, e->chunkname) != LUA_OK)
      return luaL_error(L, "error loading embedded module '%s':\n\t%s", name,
                        lua_tostring(L, -1));
    lua_pushstring(L, e->chunkname + 1);
    return 2;
  }
  lua_pushfstring(L, "no embedded module '%s'", name);
  return 1;
}

/* readline(prompt): a line without its newline, or nil at end of input. */
static int native_readline(lua_State *L) {
  const char *prompt = luaL_optstring(L, 1, "");
#ifdef EMBER_HAVE_READLINE
  if (isatty(STDIN_FILENO)) {
    char *line = readline(prompt);
    if (line == NULL)
      return 0;
    if (line[0] != '\0')
      add_history(line);
    lua_pushstring(L, line);
    free(line);
    return 1;
  }
#endif
  luaL_Buffer b;
  char chunk[512];
  size_t length;
  int got_any = 0;
  fputs(prompt, stdout);
  fflush(stdout);
  luaL_buffinit(L, &b);
  while (fgets(chunk, sizeof(chunk), stdin) != NULL) {
    got_any = 1;
    length = strlen(chunk);
    if (length > 0 && chunk[length - 1] == '\n') {
      luaL_addlstring(&b, chunk, length - 1);
      break;
    }
    luaL_addlstring(&b, chunk, length);
  }
  if (!got_any)
    return 0;
  luaL_pushresult(&b);
  return 1;
}

static int native_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

static int luaopen_cli_native(lua_State *L) {
  static const luaL_Reg funcs[] = {{"readline", native_readline},
                                   {"isatty", native_isatty},
                                   {NULL, NULL}};
  luaL_newlib(L, funcs);
  lua_pushboolean(L,
#ifdef EMBER_HAVE_READLINE
                  1
#else
                  0
#endif
  );
  lua_setfield(L, -2, "has_readline");
  return 1;
}

static void preload(lua_State *L, const char *name, lua_CFunction open) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, open);
  lua_setfield(L, -2, name);
  lua_pop(L, 1);
}

static void install_embedded_searcher(lua_State *L) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "searchers");
  /* After the preload searcher, before the path searchers. */
  for (lua_Integer i = (lua_Integer)luaL_len(L, -1); i >= 2; i--) {
    lua_rawgeti(L, -1, i);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pushcfunction(L, embedded_searcher);
  lua_rawseti(L, -2, 2);
  lua_pop(L, 2);
}

static int message_handler(lua_State *L) {
  const char *message = lua_tostring(L, 1);
  if (message == NULL)
    message = luaL_tolstring(L, 1, NULL);
  luaL_traceback(L, L, message, 1);
  return 1;
}

/* Protected main: returns the exit status as an integer. */
static int protected_main(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = lua_touserdata(L, 2);

  luaL_openlibs(L);
  preload(L, "ember.core", luaopen_ember_core);
  preload(L, "ember.cli_native", luaopen_cli_native);
  install_embedded_searcher(L);

  lua_getglobal(L, "require");
  lua_pushliteral(L, "ember.cli");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "main");
  lua_createtable(L, argc, 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i);
  }
  lua_call(L, 1, 1);
  return 1;
}

/*
** Received tensors are malloc'ed at their size (1 MiB and up). glibc raises
** its mmap threshold past such a block once one is freed, so later ones come
** from the heap, where freed blocks in the middle stay resident: a busy
** worker's RSS then wanders by +-20% with nothing leaked. A fixed threshold
** gives every large block its own mapping, returned to the system when
** freed. A GLIBC_TUNABLES or MALLOC_MMAP_THRESHOLD_ setting wins.
*/
#define MMAP_THRESHOLD_BYTES (256 * 1024)

static void fix_mmap_threshold(void) {
  const char *tunables = getenv("GLIBC_TUNABLES");
  if (getenv("MALLOC_MMAP_THRESHOLD_") != NULL ||
      (tunables != NULL && strstr(tunables, "mmap_threshold") != NULL))
    return;
  mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
}

int main(int argc, char **argv) {
  lua_State *L;
  int status, code;

  fix_mmap_threshold();
  L = luaL_newstate();

  if (L == NULL) {
    fprintf(stderr, "ember: cannot create a Lua state: not enough memory\n");
    return 1;
  }
  lua_pushcfunction(L, message_handler);
  lua_pushcfunction(L, protected_main);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  status = lua_pcall(L, 2, 1, 1);
  if (status != LUA_OK) {
    fprintf(stderr, "ember: %s\n", lua_tostring(L, -1));
    code = 1;
  } else {
    code = (int)luaL_optinteger(L, -1, 0);
  }
  lua_close(L);
  return code;
}
