/*
** Fault injection rules: parsing a spec and deciding, send by send, whether
** a frame goes, is dropped or is held back. See faults.h.
*/
#include "faults.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "wire.h"

#define KIND_COUNT (EMBER_MSG_KIND_MAX + 1)
/* The longest delay a rule may ask for: an hour is a typo, not a test. */
#define MAX_DELAY_MS 600000u

typedef struct {
  uint64_t drop_left; /* sends still to drop */
  uint32_t delay_ms;  /* 0: none */
} rule_t;

struct ember_faults_s {
  rule_t kinds[KIND_COUNT];
  ember_faults_stats_t stats;
};

static const struct {
  const char *name;
  int kind;
} kind_names[] = {
    {"request", EMBER_MSG_REQUEST},
    {"response", EMBER_MSG_RESPONSE},
    {"error", EMBER_MSG_ERROR},
    {"heartbeat", EMBER_MSG_HEARTBEAT},
    {"goodbye", EMBER_MSG_GOODBYE},
    {"goodbye_ack", EMBER_MSG_GOODBYE_ACK},
    {"rref_fork", EMBER_MSG_RREF_FORK},
    {"rref_confirm", EMBER_MSG_RREF_CONFIRM},
    {"rref_delete", EMBER_MSG_RREF_DELETE},
    {"rref_delete_ack", EMBER_MSG_RREF_DELETE_ACK},
    {"rref_child_accept", EMBER_MSG_RREF_CHILD_ACCEPT},
    {"rref_child_accept_ack", EMBER_MSG_RREF_CHILD_ACCEPT_ACK},
};

#define KIND_NAME_COUNT (sizeof(kind_names) / sizeof(kind_names[0]))

const char *ember_faults_kind_name(int kind) {
  for (size_t i = 0; i < KIND_NAME_COUNT; i++)
    if (kind_names[i].kind == kind)
      return kind_names[i].name;
  return NULL;
}

/* "request, response, ..." into buf. */
static void list_kinds(char *buf, size_t size) {
  size_t used = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < KIND_NAME_COUNT && used < size; i++) {
    int n = snprintf(buf + used, size - used, "%s%s", i > 0 ? ", " : "",
                     kind_names[i].name);
    if (n < 0)
      break;
    used += (size_t)n;
  }
}

/* Writes "bad fault rule 'RULE': WHAT; rules are ..." into why. */
static int bad_rule(char *why, size_t why_size, const char *rule,
                    size_t rule_len, const char *what) {
  char kinds[400];
  list_kinds(kinds, sizeof(kinds));
  if (why != NULL && why_size > 0)
    snprintf(why, why_size,
             "bad fault rule '%.*s': %s; rules are drop:KIND:N or "
             "delay:KIND:MS, separated by commas, and KIND is one of %s, or "
             "a kind number from 1 to %d",
             (int)(rule_len > 80 ? 80 : rule_len), rule, what, kinds,
             EMBER_MSG_KIND_MAX);
  return EMBER_EINVAL;
}

/* A whole decimal number in text[0..len); -1 when it is not one. */
static long long parse_number(const char *text, size_t len) {
  long long v = 0;
  if (len == 0 || len > 12)
    return -1;
  for (size_t i = 0; i < len; i++) {
    if (text[i] < '0' || text[i] > '9')
      return -1;
    v = v * 10 + (text[i] - '0');
  }
  return v;
}

static int parse_kind(const char *text, size_t len) {
  long long number;
  for (size_t i = 0; i < KIND_NAME_COUNT; i++)
    if (strlen(kind_names[i].name) == len &&
        memcmp(kind_names[i].name, text, len) == 0)
      return kind_names[i].kind;
  number = parse_number(text, len);
  return number >= 1 && number <= EMBER_MSG_KIND_MAX ? (int)number : -1;
}

/* Parses one rule (rule[0..len)) into f. */
static int parse_rule(ember_faults_t *f, const char *rule, size_t len,
                      char *why, size_t why_size) {
  const char *first = memchr(rule, ':', len), *second;
  size_t action_len, kind_len, value_len;
  long long value;
  int kind, drop;

  if (first == NULL)
    return bad_rule(why, why_size, rule, len, "expected ACTION:KIND:VALUE");
  action_len = (size_t)(first - rule);
  second = memchr(first + 1, ':', len - action_len - 1);
  if (second == NULL)
    return bad_rule(why, why_size, rule, len, "expected ACTION:KIND:VALUE");
  kind_len = (size_t)(second - first - 1);
  value_len = len - action_len - kind_len - 2;
  if (action_len == 4 && memcmp(rule, "drop", 4) == 0)
    drop = 1;
  else if (action_len == 5 && memcmp(rule, "delay", 5) == 0)
    drop = 0;
  else
    return bad_rule(why, why_size, rule, len,
                    "the action must be 'drop' or 'delay'");
  if ((kind = parse_kind(first + 1, kind_len)) < 0)
    return bad_rule(why, why_size, rule, len, "unknown message kind");
  value = parse_number(second + 1, value_len);
  if (value < 0)
    return bad_rule(why, why_size, rule, len,
                    drop ? "the count must be a whole number"
                         : "the delay must be a whole number of milliseconds");
  if (!drop && value > MAX_DELAY_MS)
    return bad_rule(why, why_size, rule, len,
                    "the delay must be at most 600000 ms");
  if (drop)
    f->kinds[kind].drop_left = (uint64_t)value;
  else
    f->kinds[kind].delay_ms = (uint32_t)value;
  return 0;
}

int ember_faults_parse(const char *spec, ember_faults_t **out, char *why,
                       size_t why_size) {
  ember_faults_t *f;
  const char *rule = spec;
  *out = NULL;
  if (why != NULL && why_size > 0)
    why[0] = '\0';
  if (spec == NULL || spec[0] == '\0')
    return 0;
  if ((f = calloc(1, sizeof(*f))) == NULL)
    return EMBER_ENOMEM;
  for (;;) {
    const char *end = strchr(rule, ',');
    size_t len = end != NULL ? (size_t)(end - rule) : strlen(rule);
    int err;
    /* Spaces around a rule are allowed ("drop:request:1, delay:error:5"). */
    while (len > 0 && rule[0] == ' ')
      rule++, len--;
    while (len > 0 && rule[len - 1] == ' ')
      len--;
    err = parse_rule(f, rule, len, why, why_size);
    if (err != 0) {
      free(f);
      return err;
    }
    if (end == NULL)
      break;
    rule = end + 1;
  }
  *out = f;
  return 0;
}

ember_fault_action_t ember_faults_next(ember_faults_t *f, int kind,
                                       uint32_t *delay_ms) {
  rule_t *rule;
  *delay_ms = 0;
  if (f == NULL || kind < 0 || kind >= KIND_COUNT)
    return EMBER_FAULT_SEND;
  rule = &f->kinds[kind];
  if (rule->drop_left > 0) {
    rule->drop_left--;
    f->stats.dropped++;
    return EMBER_FAULT_DROP;
  }
  if (rule->delay_ms > 0) {
    *delay_ms = rule->delay_ms;
    f->stats.delayed++;
    return EMBER_FAULT_DELAY;
  }
  return EMBER_FAULT_SEND;
}

void ember_faults_stats(const ember_faults_t *f, ember_faults_stats_t *stats) {
  if (f == NULL) {
    memset(stats, 0, sizeof(*stats));
    return;
  }
  *stats = f->stats;
}

void ember_faults_free(ember_faults_t *f) { free(f); }
