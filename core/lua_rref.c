/*
** Lua bindings for remote references: agent:rref_*() methods over the
** agent's ember_rrefs_t (core/rref.c). Ids are Lua integers. The policy (RRef
** objects, values, proxies, shutdown) is in lua/ember/rref.lua.
*/
#include "agent.h"
#include "error.h"
#include "lua_common.h"
#include "rref.h"

static ember_rrefs_t *rrefs_at(lua_State *L) {
  return ember_agent_rrefs(ember__lua_agent_at(L, 1, 0));
}

static uint64_t check_id(lua_State *L, int index) {
  lua_Integer id = luaL_checkinteger(L, index);
  if (id <= 0)
    luaL_argerror(L, index, "an RRef id is a positive integer");
  return (uint64_t)id;
}

static int check_worker(lua_State *L, int index) {
  lua_Integer id = luaL_checkinteger(L, index);
  if (id < 0 || id > 0x7fffff)
    luaL_argerror(L, index, "not a worker id");
  return (int)id;
}

static int raise_wire_error(lua_State *L, int err) {
  return ember__lua_raise(L, err, "%s", ember_wire_error());
}

/* agent:rref_new_id() -> a fresh id */
static int rref_new_id(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)ember_rrefs_new_id(rrefs_at(L)));
  return 1;
}

/* agent:rref_add_fork(rref, fork, holder): the owner registers a fork. */
static int rref_add_fork(lua_State *L) {
  int err = ember_rrefs_owner_add_fork(rrefs_at(L), check_id(L, 2),
                                       check_id(L, 3), check_worker(L, 4));
  return err != 0 ? raise_wire_error(L, err) : 0;
}

/* agent:rref_owner_received(fork, parent) */
static int rref_owner_received(lua_State *L) {
  ember_rrefs_owner_received(rrefs_at(L), check_id(L, 2), check_worker(L, 3));
  return 0;
}

/* agent:rref_owner_forks(rref) -> count */
static int rref_owner_forks(lua_State *L) {
  lua_pushinteger(L, ember_rrefs_owner_forks(rrefs_at(L), check_id(L, 2)));
  return 1;
}

/* agent:rref_user_new(rref, fork, owner, parent) */
static int rref_user_new(lua_State *L) {
  int err = ember_rrefs_user_new(rrefs_at(L), check_id(L, 2), check_id(L, 3),
                                 check_worker(L, 4), check_worker(L, 5));
  return err != 0 ? raise_wire_error(L, err) : 0;
}

/* agent:rref_user_confirm(fork) */
static int rref_user_confirm(lua_State *L) {
  ember_rrefs_user_confirm(rrefs_at(L), check_id(L, 2));
  return 0;
}

/* agent:rref_user_state(fork) -> true (confirmed), false, or nil (gone) */
static int rref_user_state(lua_State *L) {
  int state = ember_rrefs_user_state(rrefs_at(L), check_id(L, 2));
  if (state < 0)
    lua_pushnil(L);
  else
    lua_pushboolean(L, state);
  return 1;
}

/* agent:rref_user_release(fork): from __gc, so a closed agent is no error. */
static int rref_user_release(lua_State *L) {
  ember_agent_t *agent = ember__lua_agent_at(L, 1, 1);
  if (agent != NULL)
    ember_rrefs_user_release(ember_agent_rrefs(agent), check_id(L, 2));
  return 0;
}

/* agent:rref_add_child(parent_fork, child_fork, to) */
static int rref_add_child(lua_State *L) {
  int err = ember_rrefs_user_add_child(rrefs_at(L), check_id(L, 2),
                                       check_id(L, 3), check_worker(L, 4));
  return err != 0 ? raise_wire_error(L, err) : 0;
}

/* agent:rref_cancel_fork(rref, fork) */
static int rref_cancel_fork(lua_State *L) {
  ember_agent_t *agent = ember__lua_agent_at(L, 1, 1);
  if (agent != NULL)
    ember_rrefs_cancel_fork(ember_agent_rrefs(agent), check_id(L, 2),
                            check_id(L, 3));
  return 0;
}

/* agent:rref_settled() -> future */
static int rref_settled(lua_State *L) {
  ember_future_t *future = ember_rrefs_settled(rrefs_at(L));
  if (future == NULL)
    return ember__lua_raise(L, EMBER_ENOMEM, "out of memory");
  ember__lua_push_future(L, future);
  return 1;
}

/* agent:rref_stats() -> {owners=, forks=, users=, pending=, resent=} */
static int rref_stats(lua_State *L) {
  ember_rrefs_stats_t stats;
  ember_rrefs_stats(rrefs_at(L), &stats);
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, (lua_Integer)stats.owners);
  lua_setfield(L, -2, "owners");
  lua_pushinteger(L, (lua_Integer)stats.forks);
  lua_setfield(L, -2, "forks");
  lua_pushinteger(L, (lua_Integer)stats.users);
  lua_setfield(L, -2, "users");
  lua_pushinteger(L, (lua_Integer)stats.pending);
  lua_setfield(L, -2, "pending");
  lua_pushinteger(L, (lua_Integer)stats.resent);
  lua_setfield(L, -2, "resent");
  return 1;
}

static void push_held(void *arg, ember_rref_id_t rref, uint64_t fork,
                      int owner) {
  lua_State *L = arg;
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, (lua_Integer)rref);
  lua_setfield(L, -2, "rref");
  lua_pushinteger(L, (lua_Integer)fork);
  lua_setfield(L, -2, "fork");
  lua_pushinteger(L, owner);
  lua_setfield(L, -2, "owner");
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
}

/* agent:rref_held() -> list of {rref=, fork=, owner=} not dropped by Lua */
static int rref_held(lua_State *L) {
  ember_rrefs_t *r = rrefs_at(L);
  ember_rrefs_stats_t stats;
  ember_rrefs_stats(r, &stats);
  luaL_checkstack(L, 4, NULL);
  lua_createtable(L, (int)(stats.users < 1024 ? stats.users : 1024), 0);
  ember_rrefs_each_held(r, push_held, L);
  return 1;
}

/* agent:rref_release_all() */
static int rref_release_all(lua_State *L) {
  ember_rrefs_release_all(rrefs_at(L));
  return 0;
}

const luaL_Reg ember__lua_rref_methods[] = {
    {"rref_new_id", rref_new_id},
    {"rref_add_fork", rref_add_fork},
    {"rref_owner_received", rref_owner_received},
    {"rref_owner_forks", rref_owner_forks},
    {"rref_user_new", rref_user_new},
    {"rref_user_confirm", rref_user_confirm},
    {"rref_user_state", rref_user_state},
    {"rref_user_release", rref_user_release},
    {"rref_add_child", rref_add_child},
    {"rref_cancel_fork", rref_cancel_fork},
    {"rref_settled", rref_settled},
    {"rref_stats", rref_stats},
    {"rref_held", rref_held},
    {"rref_release_all", rref_release_all},
    {NULL, NULL}};
