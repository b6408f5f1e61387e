/*
** The RRef protocol between simulated workers: each has an ember_rrefs_t
** whose control frames go into one queue; deliver() hands them over in order,
** as the transport would.
*/
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "error.h"
#include "rref.h"

#define WORKERS 3
#define MAX_FRAMES 64

typedef struct {
  int from, to, kind;
  char body[64];
  size_t len;
} sent_t;

typedef struct {
  ember_rrefs_t *r[WORKERS];
  int ids[WORKERS];
  int lost[WORKERS];
  sent_t queue[MAX_FRAMES];
  int head, tail;
  ember_rref_id_t released[16];
  int released_count;
  int lost_on_send[WORKERS]; /* a send to it reports the loss at once */
  int drop[64]; /* sends of each kind still to lose on the wire */
  int dropped;
  uint64_t clock_ms; /* advanced by settle() */
} world_t;

static world_t world;

static int send_cb(void *user, int peer, int kind, ember_wire_msg_t *msg) {
  int from = *(int *)user;
  sent_t *s;
  if (world.lost_on_send[peer] && !world.lost[peer]) {
    /* As the transport does when connecting fails at once: the loss is
    ** reported from inside the send. */
    world.lost[peer] = 1;
    ember_rrefs_peer_lost(world.r[from], peer);
  }
  if (world.lost[peer]) {
    ember_wire_msg_free(msg);
    return EMBER_EPEERLOST;
  }
  if (kind >= 0 && kind < 64 && world.drop[kind] > 0) {
    /* Lost on the wire, as the transport's fault injection does it. */
    world.drop[kind]--;
    world.dropped++;
    ember_wire_msg_free(msg);
    return 0;
  }
  CHECK(world.tail < MAX_FRAMES);
  CHECK(msg->body_len <= sizeof(s->body));
  s = &world.queue[world.tail++];
  s->from = from;
  s->to = peer;
  s->kind = kind;
  memcpy(s->body, msg->body, msg->body_len);
  s->len = msg->body_len;
  ember_wire_msg_free(msg);
  return 0;
}

static void released_cb(void *user, ember_rref_id_t rref) {
  (void)user;
  CHECK(world.released_count < 16);
  world.released[world.released_count++] = rref;
}

static void setup(void) {
  memset(&world, 0, sizeof(world));
  for (int i = 0; i < WORKERS; i++) {
    ember_rrefs_ops_t ops = {&world.ids[i], send_cb, released_cb, NULL};
    world.ids[i] = i;
    world.r[i] = ember_rrefs_new(i, &ops);
    CHECK(world.r[i] != NULL);
  }
}

static void teardown(void) {
  for (int i = 0; i < WORKERS; i++)
    ember_rrefs_free(world.r[i]);
  CHECK_EQ(ember_future_live_count(), 0);
}

/* Delivers every queued frame (and those they cause); returns how many. */
static int deliver(void) {
  int n = 0;
  while (world.head < world.tail) {
    sent_t *s = &world.queue[world.head++];
    if (!world.lost[s->to])
      CHECK_EQ(ember_rrefs_on_frame(world.r[s->to], s->from, s->kind, s->body,
                                    s->len), 0);
    n++;
  }
  world.head = world.tail = 0;
  return n;
}

/* Queues a control frame [a] or [a, b] from `from` to `to`. */
static void push_frame(int from, int to, int kind, uint64_t a, uint64_t b,
                       int count) {
  msgpack_sbuffer buf;
  msgpack_packer pk;
  sent_t *s = &world.queue[world.tail++];
  msgpack_sbuffer_init(&buf);
  msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
  msgpack_pack_array(&pk, (size_t)count);
  msgpack_pack_uint64(&pk, a);
  if (count > 1)
    msgpack_pack_uint64(&pk, b);
  CHECK(buf.size <= sizeof(s->body));
  s->from = from;
  s->to = to;
  s->kind = kind;
  memcpy(s->body, buf.data, buf.size);
  s->len = buf.size;
  msgpack_sbuffer_destroy(&buf);
}

static ember_rrefs_stats_t stats_of(int w) {
  ember_rrefs_stats_t st;
  ember_rrefs_stats(world.r[w], &st);
  return st;
}

static void test_ids_name_their_creator(void) {
  setup();
  ember_rref_id_t a = ember_rrefs_new_id(world.r[2]);
  ember_rref_id_t b = ember_rrefs_new_id(world.r[2]);
  CHECK(a != b);
  CHECK_EQ(ember_rref_creator(a), 2);
  CHECK_EQ(ember_rref_creator(ember_rrefs_new_id(world.r[0])), 0);
  teardown();
}

/* remote(): worker 1 asks worker 0 to create a value. */
static ember_rref_id_t remote_from_1(void) {
  ember_rref_id_t rref = ember_rrefs_new_id(world.r[1]);
  CHECK_EQ(ember_rrefs_user_new(world.r[1], rref, rref, 0, 1), 0);
  CHECK_EQ(ember_rrefs_user_state(world.r[1], rref), 0);
  CHECK_EQ(stats_of(1).pending, 1);
  CHECK_EQ(deliver(), 0); /* the creation request carries it, not a FORK */
  CHECK_EQ(ember_rrefs_owner_add_fork(world.r[0], rref, rref, 1), 0);
  ember_rrefs_user_confirm(world.r[1], rref);
  CHECK_EQ(ember_rrefs_user_state(world.r[1], rref), 1);
  CHECK_EQ(stats_of(1).pending, 0);
  return rref;
}

static void test_remote_then_release_frees_the_value(void) {
  setup();
  ember_rref_id_t rref = remote_from_1();
  CHECK_EQ(stats_of(0).owners, 1);
  CHECK_EQ(stats_of(1).users, 1);
  ember_rrefs_user_release(world.r[1], rref);
  CHECK_EQ(stats_of(1).users, 0);
  CHECK_EQ(stats_of(1).pending, 1); /* the DELETE awaits its ACK */
  CHECK_EQ(deliver(), 2);           /* DELETE, DELETE_ACK */
  CHECK_EQ(world.released_count, 1);
  CHECK(world.released[0] == rref);
  CHECK_EQ(stats_of(0).owners, 0);
  CHECK_EQ(stats_of(1).pending, 0);
  CHECK_EQ(ember_rrefs_user_state(world.r[1], rref), -1);
  teardown();
}

static void test_release_before_confirmation_waits_for_it(void) {
  setup();
  ember_rref_id_t rref = ember_rrefs_new_id(world.r[1]);
  CHECK_EQ(ember_rrefs_user_new(world.r[1], rref, rref, 0, 1), 0);
  ember_rrefs_user_release(world.r[1], rref);
  CHECK_EQ(deliver(), 0); /* no DELETE before the owner has the fork */
  CHECK_EQ(ember_rrefs_owner_add_fork(world.r[0], rref, rref, 1), 0);
  ember_rrefs_user_confirm(world.r[1], rref);
  CHECK_EQ(deliver(), 2);
  CHECK_EQ(world.released_count, 1);
  teardown();
}

/* User 1 passes its RRef to user 2 and drops its own at once: the owner must
** not release the value before 2's fork is registered. */
static void test_user_to_user_keeps_the_value_alive(void) {
  setup();
  ember_rref_id_t rref = remote_from_1();
  uint64_t child = ember_rrefs_new_id(world.r[1]);
  CHECK_EQ(ember_rrefs_user_add_child(world.r[1], rref, child, 2), 0);
  ember_rrefs_user_release(world.r[1], rref);
  CHECK_EQ(deliver(), 0); /* held back by the pending child */
  CHECK_EQ(ember_rrefs_user_new(world.r[2], rref, child, 0, 1), 0);
  CHECK_EQ(ember_rrefs_user_state(world.r[2], child), 0);
  deliver(); /* FORK, CONFIRM, CHILD_ACCEPT, DELETE of 1's, its ACK */
  CHECK_EQ(ember_rrefs_user_state(world.r[2], child), 1);
  CHECK_EQ(world.released_count, 0);
  CHECK_EQ(ember_rrefs_owner_forks(world.r[0], rref), 1);
  CHECK_EQ(stats_of(1).users, 0);
  CHECK_EQ(stats_of(1).pending, 0);
  ember_rrefs_user_release(world.r[2], child);
  deliver();
  CHECK_EQ(world.released_count, 1);
  teardown();
}

static void test_owner_shares_with_early_registration(void) {
  setup();
  ember_rref_id_t rref = ember_rrefs_new_id(world.r[0]);
  uint64_t fork = ember_rrefs_new_id(world.r[0]);
  CHECK_EQ(ember_rrefs_owner_add_fork(world.r[0], rref, fork, 2), 0);
  CHECK_EQ(ember_rrefs_user_new(world.r[2], rref, fork, 0, 0), 0);
  CHECK_EQ(ember_rrefs_user_state(world.r[2], fork), 1);
  CHECK_EQ(deliver(), 0);
  ember_rrefs_user_release(world.r[2], fork);
  CHECK_EQ(deliver(), 2);
  CHECK_EQ(world.released_count, 1);
  teardown();
}

static void test_user_sends_back_to_the_owner(void) {
  setup();
  ember_rref_id_t rref = remote_from_1();
  uint64_t child = ember_rrefs_new_id(world.r[1]);
  CHECK_EQ(ember_rrefs_user_add_child(world.r[1], rref, child, 0), 0);
  ember_rrefs_user_release(world.r[1], rref);
  CHECK_EQ(deliver(), 0);
  ember_rrefs_owner_received(world.r[0], child, 1);
  deliver(); /* CHILD_ACCEPT, then 1's DELETE and its ACK */
  CHECK_EQ(world.released_count, 1);
  CHECK_EQ(stats_of(1).pending, 0);
  teardown();
}

static void test_cancelled_forks_are_undone(void) {
  setup();
  ember_rref_id_t rref = remote_from_1();
  uint64_t child = ember_rrefs_new_id(world.r[1]);
  CHECK_EQ(ember_rrefs_user_add_child(world.r[1], rref, child, 2), 0);
  CHECK_EQ(stats_of(1).pending, 1);
  ember_rrefs_cancel_fork(world.r[1], rref, child);
  CHECK_EQ(stats_of(1).pending, 0);
  /* The owner's early fork is taken back the same way. */
  CHECK_EQ(ember_rrefs_owner_add_fork(world.r[0], rref, 99, 2), 0);
  CHECK_EQ(ember_rrefs_owner_forks(world.r[0], rref), 2);
  ember_rrefs_cancel_fork(world.r[0], rref, 99);
  CHECK_EQ(ember_rrefs_owner_forks(world.r[0], rref), 1);
  teardown();
}

static void test_repeated_messages_are_harmless(void) {
  setup();
  ember_rref_id_t rref = remote_from_1();
  /* A FORK that arrives twice registers once and confirms twice. */
  CHECK_EQ(ember_rrefs_owner_add_fork(world.r[0], rref, rref, 1), 0);
  CHECK_EQ(ember_rrefs_owner_forks(world.r[0], rref), 1);
  CHECK(ember_rrefs_user_new(world.r[1], rref, rref, 0, 1) == EMBER_EINVAL);
  ember_rrefs_user_release(world.r[1], rref);
  ember_rrefs_user_release(world.r[1], rref);
  CHECK_EQ(deliver(), 2);
  /* A DELETE of a fork the owner no longer has is still acknowledged. */
  push_frame(1, 0, EMBER_MSG_RREF_DELETE, rref, rref, 2);
  CHECK_EQ(deliver(), 2);
  CHECK_EQ(world.released_count, 1);
  teardown();
}

static void test_control_messages_from_the_wrong_peer_are_ignored(void) {
  setup();
  ember_rref_id_t rref = remote_from_1();
  uint64_t child = ember_rrefs_new_id(world.r[1]);
  /* Worker 2 cannot delete worker 1's fork... */
  push_frame(2, 0, EMBER_MSG_RREF_DELETE, rref, rref, 2);
  deliver();
  CHECK_EQ(ember_rrefs_owner_forks(world.r[0], rref), 1);
  CHECK_EQ(world.released_count, 0);
  /* ...nor accept a child that went to someone else. */
  CHECK_EQ(ember_rrefs_user_add_child(world.r[1], rref, child, 0), 0);
  push_frame(2, 1, EMBER_MSG_RREF_CHILD_ACCEPT, child, 0, 1);
  deliver();
  CHECK_EQ(stats_of(1).pending, 1);
  /* ...nor confirm a fork it does not own. */
  ember_rref_id_t other = ember_rrefs_new_id(world.r[1]);
  CHECK_EQ(ember_rrefs_user_new(world.r[1], other, other, 0, 1), 0);
  push_frame(2, 1, EMBER_MSG_RREF_CONFIRM, other, 0, 1);
  deliver();
  CHECK_EQ(ember_rrefs_user_state(world.r[1], other), 0);
  teardown();
}

/* The owner dies while a fork of its value is on its way to a third worker:
** the sender stops waiting for the child to be accepted. */
static void test_owner_lost_with_a_child_in_flight(void) {
  setup();
  ember_rref_id_t rref = remote_from_1();
  uint64_t child = ember_rrefs_new_id(world.r[1]);
  CHECK_EQ(ember_rrefs_user_add_child(world.r[1], rref, child, 2), 0);
  ember_rrefs_user_release(world.r[1], rref);
  world.lost[0] = 1;
  ember_rrefs_peer_lost(world.r[1], 0);
  CHECK_EQ(stats_of(1).pending, 0);
  CHECK_EQ(stats_of(1).users, 0);
  teardown();
}

/* A send that reports its peer lost from inside must not free a record
** twice or count it out twice. */
static void test_a_loss_reported_inside_a_send(void) {
  setup();
  ember_rref_id_t rref = remote_from_1();
  uint64_t child = ember_rrefs_new_id(world.r[1]);
  CHECK_EQ(ember_rrefs_user_add_child(world.r[1], rref, child, 2), 0);
  world.lost_on_send[0] = 1; /* worker 2 cannot reach the owner */
  CHECK_EQ(ember_rrefs_user_new(world.r[2], rref, child, 0, 1), 0);
  CHECK_EQ(stats_of(2).users, 0);
  CHECK_EQ(stats_of(2).pending, 0);
  CHECK_EQ(ember_rrefs_user_state(world.r[2], child), -1);
  teardown();
}

static int released_all_in_callback;

static void release_all_cb(ember_future_t *future, void *arg) {
  if (future != NULL) {
    ember_rrefs_release_all(arg);
    released_all_in_callback = 1;
  }
}

/* A settle waiter that runs code (as a resumed shutdown does) only runs once
** the update that settled things is complete. */
static void test_settle_waiters_run_after_the_update(void) {
  setup();
  ember_rref_id_t a = remote_from_1();
  ember_rref_id_t b = ember_rrefs_new_id(world.r[1]);
  ember_future_t *settled;
  CHECK_EQ(ember_rrefs_user_new(world.r[1], b, b, 0, 0), 0); /* confirmed */
  ember_rrefs_user_release(world.r[1], a); /* a DELETE awaits its ACK */
  settled = ember_rrefs_settled(world.r[1]);
  released_all_in_callback = 0;
  CHECK_EQ(ember_future_add_callback(settled, release_all_cb, world.r[1]), 0);
  world.head = world.tail = 0; /* the owner dies before answering */
  world.lost[0] = 1;
  ember_rrefs_peer_lost(world.r[1], 0);
  CHECK_EQ(released_all_in_callback, 1);
  CHECK_EQ(stats_of(1).pending, 0);
  CHECK_EQ(stats_of(1).users, 0);
  ember_future_release(settled);
  teardown();
}

/* Releasing a confirmed fork and confirming a released one keep the settle
** future pending while the DELETE is out. */
static void test_no_transient_settling(void) {
  setup();
  ember_rref_id_t rref = ember_rrefs_new_id(world.r[1]);
  ember_future_t *settled;
  CHECK_EQ(ember_rrefs_user_new(world.r[1], rref, rref, 0, 1), 0);
  ember_rrefs_user_release(world.r[1], rref);
  settled = ember_rrefs_settled(world.r[1]);
  ember_rrefs_owner_add_fork(world.r[0], rref, rref, 1);
  ember_rrefs_user_confirm(world.r[1], rref); /* sends the DELETE */
  CHECK(ember_future_state(settled) == EMBER_FUTURE_PENDING);
  deliver();
  CHECK(ember_future_state(settled) != EMBER_FUTURE_PENDING);
  ember_future_release(settled);
  teardown();
}

static void test_a_lost_peer_drops_its_forks_and_ours(void) {
  setup();
  ember_rref_id_t rref = remote_from_1(); /* owned by 0, held by 1 */
  ember_rref_id_t mine = ember_rrefs_new_id(world.r[1]);
  /* And 0 holds one of 1's values. */
  CHECK_EQ(ember_rrefs_user_new(world.r[0], mine, mine, 1, 0), 0);
  CHECK_EQ(ember_rrefs_owner_add_fork(world.r[1], mine, mine, 0), 0);
  ember_rrefs_user_confirm(world.r[0], mine);
  world.lost[1] = 1;
  ember_rrefs_peer_lost(world.r[0], 1);
  CHECK_EQ(world.released_count, 1); /* 1's fork of our value */
  CHECK_EQ(stats_of(0).owners, 0);
  CHECK_EQ(stats_of(0).users, 0);   /* our fork of 1's value */
  CHECK_EQ(ember_rrefs_user_state(world.r[0], mine), -1);
  CHECK(rref != mine);
  /* Nothing new may be shared with it or held of it. */
  CHECK(ember_rrefs_owner_add_fork(world.r[0], rref, 77, 1) == EMBER_EPEERLOST);
  CHECK(strstr(ember_wire_error(), "worker 1 is gone") != NULL);
  CHECK(ember_rrefs_user_new(world.r[0], 5, 6, 1, 1) == EMBER_EPEERLOST);
  CHECK_EQ(stats_of(0).owners, 0);
  teardown();
}

static void test_a_lost_peer_releases_pending_children(void) {
  setup();
  ember_rref_id_t rref = remote_from_1();
  uint64_t child = ember_rrefs_new_id(world.r[1]);
  ember_future_t *settled;
  CHECK_EQ(ember_rrefs_user_add_child(world.r[1], rref, child, 2), 0);
  ember_rrefs_user_release(world.r[1], rref);
  settled = ember_rrefs_settled(world.r[1]);
  CHECK(ember_future_state(settled) == EMBER_FUTURE_PENDING);
  world.lost[2] = 1;
  ember_rrefs_peer_lost(world.r[1], 2);
  deliver(); /* 1's fork can go now: DELETE, ACK */
  CHECK(ember_future_state(settled) != EMBER_FUTURE_PENDING);
  CHECK_EQ(world.released_count, 1);
  ember_future_release(settled);
  teardown();
}

static void test_sends_to_a_lost_owner_do_not_wait(void) {
  setup();
  ember_rref_id_t rref = remote_from_1();
  world.lost[0] = 1;
  ember_rrefs_user_release(world.r[1], rref);
  CHECK_EQ(stats_of(1).pending, 0);
  CHECK_EQ(stats_of(1).users, 0);
  teardown();
}

static void test_settled_and_release_all(void) {
  setup();
  ember_rref_id_t rref = ember_rrefs_new_id(world.r[1]);
  ember_future_t *settled;
  CHECK_EQ(ember_rrefs_user_new(world.r[1], rref, rref, 0, 1), 0);
  settled = ember_rrefs_settled(world.r[1]);
  CHECK(ember_future_state(settled) == EMBER_FUTURE_PENDING);
  ember_rrefs_owner_add_fork(world.r[0], rref, rref, 1);
  ember_rrefs_user_confirm(world.r[1], rref);
  CHECK(ember_future_state(settled) != EMBER_FUTURE_PENDING);
  ember_future_release(settled);
  CHECK_EQ(stats_of(1).users, 1);
  ember_rrefs_release_all(world.r[1]);
  CHECK_EQ(deliver(), 2);
  CHECK_EQ(stats_of(1).users, 0);
  CHECK_EQ(world.released_count, 1);
  teardown();
}

static void test_malformed_messages_are_refused(void) {
  setup();
  /* fixarray of 1 where FORK needs 2; a string id; trailing bytes. */
  const char one[] = {(char)0x91, 0x05};
  const char text[] = {(char)0x92, (char)0xa1, 'x', 0x01};
  const char trailing[] = {(char)0x91, 0x05, 0x00};
  CHECK(ember_rrefs_on_frame(world.r[0], 1, 30, one, sizeof(one)) ==
        EMBER_EINVAL);
  CHECK(strstr(ember_wire_error(), "array of 2 ids") != NULL);
  CHECK(ember_rrefs_on_frame(world.r[0], 1, 30, text, sizeof(text)) ==
        EMBER_EINVAL);
  CHECK(strstr(ember_wire_error(), "positive integer") != NULL);
  CHECK(ember_rrefs_on_frame(world.r[0], 1, 31, trailing, sizeof(trailing)) ==
        EMBER_EINVAL);
  CHECK(ember_rrefs_on_frame(world.r[0], 1, 31, one, 1) == EMBER_EINVAL);
  CHECK(ember_rrefs_on_frame(world.r[0], 1, 10, one, sizeof(one)) ==
        EMBER_EINVAL);
  CHECK_EQ(deliver(), 0);
  teardown();
}

/* --- Lost messages are sent again ---------------------------------------- */

static uint64_t pending_everywhere(void) {
  uint64_t n = 0;
  for (int i = 0; i < WORKERS; i++)
    n += stats_of(i).pending;
  return n;
}

/* Delivers, then lets EMBER_RREF_RESEND_MS pass and resends, until nothing
** awaits an answer; returns the rounds it took (fails after 20). */
static int settle(void) {
  int rounds = 0;
  deliver();
  while (pending_everywhere() > 0) {
    CHECK(++rounds <= 20);
    world.clock_ms += EMBER_RREF_RESEND_MS;
    for (int i = 0; i < WORKERS; i++)
      ember_rrefs_resend(world.r[i], world.clock_ms);
    deliver();
  }
  return rounds;
}

static void lose_first_of_every_kind(void) {
  world.drop[EMBER_MSG_RREF_FORK] = 1;
  world.drop[EMBER_MSG_RREF_CONFIRM] = 1;
  world.drop[EMBER_MSG_RREF_DELETE] = 1;
  world.drop[EMBER_MSG_RREF_DELETE_ACK] = 1;
  world.drop[EMBER_MSG_RREF_CHILD_ACCEPT] = 1;
  world.drop[EMBER_MSG_RREF_CHILD_ACCEPT_ACK] = 1;
}

static void check_nothing_left(void) {
  for (int i = 0; i < WORKERS; i++) {
    ember_rrefs_stats_t st = stats_of(i);
    CHECK_EQ(st.pending, 0);
    CHECK_EQ(st.users, 0);
    CHECK_EQ(st.owners, 0);
    CHECK_EQ(st.forks, 0);
  }
}

/* A resend waits EMBER_RREF_RESEND_MS for the answer first. */
static void test_resend_waits_for_the_answer(void) {
  setup();
  ember_rref_id_t rref = remote_from_1();
  uint64_t child = ember_rrefs_new_id(world.r[1]);
  CHECK_EQ(ember_rrefs_user_add_child(world.r[1], rref, child, 2), 0);
  world.drop[EMBER_MSG_RREF_FORK] = 1;
  CHECK_EQ(ember_rrefs_user_new(world.r[2], rref, child, 0, 1), 0);
  CHECK_EQ(world.dropped, 1);
  CHECK_EQ(ember_rrefs_resend(world.r[2], EMBER_RREF_RESEND_MS - 1), 0);
  CHECK_EQ(deliver(), 0);
  CHECK_EQ(ember_rrefs_resend(world.r[2], EMBER_RREF_RESEND_MS), 1);
  CHECK_EQ(stats_of(2).resent, 1);
  deliver(); /* FORK, CONFIRM, CHILD_ACCEPT, its ACK */
  CHECK_EQ(ember_rrefs_user_state(world.r[2], child), 1);
  CHECK_EQ(pending_everywhere(), 0);
  /* Nothing waits: nothing is sent again. */
  CHECK_EQ(ember_rrefs_resend(world.r[2], 10 * EMBER_RREF_RESEND_MS), 0);
  CHECK_EQ(ember_rrefs_resend(world.r[1], 10 * EMBER_RREF_RESEND_MS), 0);
  teardown();
}

/* User 1 passes its RRef to user 2 and both drop theirs, with the first
** message of every kind lost: the protocol still settles and frees it. */
static void test_user_to_user_survives_lost_messages(void) {
  setup();
  ember_rref_id_t rref = remote_from_1();
  uint64_t child = ember_rrefs_new_id(world.r[1]);
  lose_first_of_every_kind();
  CHECK_EQ(ember_rrefs_user_add_child(world.r[1], rref, child, 2), 0);
  ember_rrefs_user_release(world.r[1], rref);
  CHECK_EQ(ember_rrefs_user_new(world.r[2], rref, child, 0, 1), 0);
  CHECK(settle() >= 1);
  CHECK_EQ(ember_rrefs_user_state(world.r[2], child), 1);
  CHECK_EQ(world.released_count, 0); /* 2's fork keeps it */
  CHECK_EQ(ember_rrefs_owner_forks(world.r[0], rref), 1);
  ember_rrefs_user_release(world.r[2], child);
  settle();
  CHECK_EQ(world.released_count, 1);
  CHECK(world.released[0] == rref);
  /* FORK, CONFIRM, CHILD_ACCEPT, its ACK, DELETE, DELETE_ACK: each once. */
  CHECK_EQ(world.dropped, 6);
  CHECK(stats_of(1).resent + stats_of(2).resent >= 4);
  check_nothing_left();
  teardown();
}

/* The owner's own CHILD_ACCEPT (its RRef came back to it) is resent too. */
static void test_owner_accept_survives_lost_messages(void) {
  setup();
  ember_rref_id_t rref = remote_from_1();
  uint64_t child = ember_rrefs_new_id(world.r[1]);
  lose_first_of_every_kind();
  CHECK_EQ(ember_rrefs_user_add_child(world.r[1], rref, child, 0), 0);
  ember_rrefs_user_release(world.r[1], rref);
  ember_rrefs_owner_received(world.r[0], child, 1);
  settle();
  CHECK_EQ(world.released_count, 1);
  CHECK(stats_of(0).resent >= 1);
  check_nothing_left();
  teardown();
}

/* A CHILD_ACCEPT owed to a peer that is lost is not kept. */
static void test_accepts_to_a_lost_peer_are_dropped(void) {
  setup();
  ember_rref_id_t rref = remote_from_1();
  uint64_t child = ember_rrefs_new_id(world.r[1]);
  world.drop[EMBER_MSG_RREF_CHILD_ACCEPT] = 1;
  CHECK_EQ(ember_rrefs_user_add_child(world.r[1], rref, child, 0), 0);
  ember_rrefs_owner_received(world.r[0], child, 1);
  CHECK_EQ(stats_of(0).pending, 1);
  world.lost[1] = 1;
  ember_rrefs_peer_lost(world.r[0], 1);
  CHECK_EQ(stats_of(0).pending, 0);
  CHECK_EQ(ember_rrefs_resend(world.r[0], 10 * EMBER_RREF_RESEND_MS), 0);
  teardown();
}

CHECK_MAIN(CHECK_TEST(test_ids_name_their_creator),
           CHECK_TEST(test_remote_then_release_frees_the_value),
           CHECK_TEST(test_release_before_confirmation_waits_for_it),
           CHECK_TEST(test_user_to_user_keeps_the_value_alive),
           CHECK_TEST(test_owner_shares_with_early_registration),
           CHECK_TEST(test_user_sends_back_to_the_owner),
           CHECK_TEST(test_cancelled_forks_are_undone),
           CHECK_TEST(test_repeated_messages_are_harmless),
           CHECK_TEST(test_a_lost_peer_drops_its_forks_and_ours),
           CHECK_TEST(test_a_lost_peer_releases_pending_children),
           CHECK_TEST(test_sends_to_a_lost_owner_do_not_wait),
           CHECK_TEST(test_settled_and_release_all),
           CHECK_TEST(test_malformed_messages_are_refused),
           CHECK_TEST(test_control_messages_from_the_wrong_peer_are_ignored),
           CHECK_TEST(test_owner_lost_with_a_child_in_flight),
           CHECK_TEST(test_a_loss_reported_inside_a_send),
           CHECK_TEST(test_settle_waiters_run_after_the_update),
           CHECK_TEST(test_no_transient_settling),
           CHECK_TEST(test_resend_waits_for_the_answer),
           CHECK_TEST(test_user_to_user_survives_lost_messages),
           CHECK_TEST(test_owner_accept_survives_lost_messages),
           CHECK_TEST(test_accepts_to_a_lost_peer_are_dropped))
