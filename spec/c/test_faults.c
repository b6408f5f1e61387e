/*
** Fault injection rules: parsing specs, drop counts, delays, and the
** messages a malformed spec gives.
*/
#include <string.h>

#include "check.h"
#include "error.h"
#include "faults.h"
#include "wire.h"

static void test_empty_spec_means_no_faults(void) {
  ember_faults_t *f = (ember_faults_t *)1;
  char why[600];
  uint32_t ms = 7;
  ember_faults_stats_t stats;
  CHECK(ember_faults_parse(NULL, &f, why, sizeof(why)) == 0);
  CHECK(f == NULL);
  CHECK(ember_faults_parse("", &f, why, sizeof(why)) == 0);
  CHECK(f == NULL);
  CHECK(ember_faults_next(NULL, EMBER_MSG_REQUEST, &ms) == EMBER_FAULT_SEND);
  CHECK_EQ(ms, 0);
  ember_faults_stats(NULL, &stats);
  CHECK_EQ(stats.dropped + stats.delayed, 0);
  ember_faults_free(NULL);
}

static void test_drop_first_n_of_a_kind(void) {
  ember_faults_t *f;
  char why[600];
  uint32_t ms;
  ember_faults_stats_t stats;
  CHECK(ember_faults_parse("drop:rref_fork:2,drop:request:1", &f, why,
                           sizeof(why)) == 0);
  CHECK(f != NULL);
  /* Other kinds are never touched. */
  CHECK(ember_faults_next(f, EMBER_MSG_RESPONSE, &ms) == EMBER_FAULT_SEND);
  CHECK(ember_faults_next(f, EMBER_MSG_RREF_FORK, &ms) == EMBER_FAULT_DROP);
  CHECK(ember_faults_next(f, EMBER_MSG_REQUEST, &ms) == EMBER_FAULT_DROP);
  CHECK(ember_faults_next(f, EMBER_MSG_RREF_FORK, &ms) == EMBER_FAULT_DROP);
  CHECK(ember_faults_next(f, EMBER_MSG_RREF_FORK, &ms) == EMBER_FAULT_SEND);
  CHECK(ember_faults_next(f, EMBER_MSG_REQUEST, &ms) == EMBER_FAULT_SEND);
  CHECK(ember_faults_next(f, EMBER_MSG_REQUEST, &ms) == EMBER_FAULT_SEND);
  ember_faults_stats(f, &stats);
  CHECK_EQ(stats.dropped, 3);
  CHECK_EQ(stats.delayed, 0);
  ember_faults_free(f);
}

static void test_delay_every_send(void) {
  ember_faults_t *f;
  char why[600];
  uint32_t ms = 0;
  ember_faults_stats_t stats;
  CHECK(ember_faults_parse("delay:response:50, drop:response:1,delay:21:7",
                           &f, why, sizeof(why)) == 0);
  /* A drop comes before the delay of the same kind. */
  CHECK(ember_faults_next(f, EMBER_MSG_RESPONSE, &ms) == EMBER_FAULT_DROP);
  for (int i = 0; i < 3; i++) {
    CHECK(ember_faults_next(f, EMBER_MSG_RESPONSE, &ms) == EMBER_FAULT_DELAY);
    CHECK_EQ(ms, 50);
  }
  /* Kinds by number. */
  CHECK(ember_faults_next(f, EMBER_MSG_GOODBYE, &ms) == EMBER_FAULT_DELAY);
  CHECK_EQ(ms, 7);
  CHECK(ember_faults_next(f, EMBER_MSG_ERROR, &ms) == EMBER_FAULT_SEND);
  CHECK_EQ(ms, 0);
  ember_faults_stats(f, &stats);
  CHECK_EQ(stats.dropped, 1);
  CHECK_EQ(stats.delayed, 4);
  ember_faults_free(f);
}

static void test_every_kind_name_parses(void) {
  static const char *names[] = {
      "request",      "response",        "error",
      "heartbeat",    "goodbye",         "goodbye_ack",
      "rref_fork",    "rref_confirm",    "rref_delete",
      "rref_delete_ack", "rref_child_accept", "rref_child_accept_ack"};
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
    ember_faults_t *f;
    char spec[64], why[600];
    uint32_t ms;
    int kind = -1;
    snprintf(spec, sizeof(spec), "drop:%s:1", names[i]);
    CHECK(ember_faults_parse(spec, &f, why, sizeof(why)) == 0);
    for (int k = 1; k <= EMBER_MSG_KIND_MAX; k++) {
      const char *name = ember_faults_kind_name(k);
      if (name != NULL && strcmp(name, names[i]) == 0)
        kind = k;
    }
    CHECK(kind > 0);
    CHECK(ember_faults_next(f, kind, &ms) == EMBER_FAULT_DROP);
    ember_faults_free(f);
  }
  CHECK(strcmp(ember_faults_kind_name(EMBER_MSG_RREF_CHILD_ACCEPT_ACK),
               "rref_child_accept_ack") == 0);
  CHECK(ember_faults_kind_name(EMBER_MSG_HELLO) == NULL);
}

static void check_bad(const char *spec, const char *rule, const char *what) {
  ember_faults_t *f = (ember_faults_t *)1;
  char why[600];
  char quoted[128];
  CHECK(ember_faults_parse(spec, &f, why, sizeof(why)) == EMBER_EINVAL);
  CHECK(f == NULL);
  snprintf(quoted, sizeof(quoted), "'%s'", rule);
  if (strstr(why, quoted) == NULL || strstr(why, what) == NULL ||
      strstr(why, "rref_child_accept") == NULL) {
    fprintf(stderr, "unexpected message for '%s': %s\n", spec, why);
    CHECK(0);
  }
}

static void test_malformed_specs_name_the_rule(void) {
  check_bad("drop:request:1,drop:bogus:1", "drop:bogus:1",
            "unknown message kind");
  check_bad("lose:request:1", "lose:request:1", "'drop' or 'delay'");
  check_bad("drop:request", "drop:request", "ACTION:KIND:VALUE");
  check_bad("drop:request:x", "drop:request:x", "whole number");
  check_bad("delay:response:-5", "delay:response:-5", "milliseconds");
  check_bad("delay:response:9999999", "delay:response:9999999", "at most");
  check_bad("drop:0:1", "drop:0:1", "unknown message kind");
  check_bad("drop:64:1", "drop:64:1", "unknown message kind");
  check_bad("drop:request:1,", "", "ACTION:KIND:VALUE");
  check_bad("drop:request:1:2", "drop:request:1:2", "whole number");
}

CHECK_MAIN(CHECK_TEST(test_empty_spec_means_no_faults),
           CHECK_TEST(test_drop_first_n_of_a_kind),
           CHECK_TEST(test_delay_every_send),
           CHECK_TEST(test_every_kind_name_parses),
           CHECK_TEST(test_malformed_specs_name_the_rule))
