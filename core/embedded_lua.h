/*
** The Lua library compiled into the ember executable (see
** cmake/embed_lua.cmake).
*/
#ifndef EMBER_EMBEDDED_LUA_H
#define EMBER_EMBEDDED_LUA_H

#include <stddef.h>

typedef struct {
  const char *module;    /* "ember.futures" */
  const char *chunkname; /* "@ember/futures.lua" */
  const char *source;
  size_t length;
} ember_embedded_lua_t;

/* Terminated by an entry whose module is NULL. */
extern const ember_embedded_lua_t ember_embedded_lua[];

#endif
