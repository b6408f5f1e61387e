/*
** Fault injection for the transport, as PyTorch's FaultyTensorPipeAgent does
** it: a spec names message kinds whose first sends are dropped (as if lost on
** the wire) or whose every send is held back for a while. It exists so that
** specs can check what survives a lossy or slow link on a kernel without
** `tc netem`.
**
** A spec is a comma-separated list of rules:
**   drop:KIND:N    drops the first N sends of KIND in this process
**   delay:KIND:MS  holds every send of KIND for MS milliseconds
** KIND is a name (request, response, error, heartbeat, goodbye, goodbye_ack,
** rref_fork, rref_confirm, rref_delete, rref_delete_ack, rref_child_accept,
** rref_child_accept_ack) or a kind's number (1 to 63). Example:
**   drop:rref_fork:2,drop:request:1,delay:response:50
**
** Pure C, no I/O. Thread: one thread at a time per ember_faults_t.
*/
#ifndef EMBER_FAULTS_H
#define EMBER_FAULTS_H

#include <stddef.h>
#include <stdint.h>

typedef struct ember_faults_s ember_faults_t;

typedef enum {
  EMBER_FAULT_SEND,  /* send it now */
  EMBER_FAULT_DROP,  /* discard it */
  EMBER_FAULT_DELAY  /* hold it for *delay_ms, then send it */
} ember_fault_action_t;

/*
** Parses `spec`. An empty spec (NULL or "") gives *out = NULL: no faults.
** On a malformed spec returns EMBER_EINVAL and writes into why[why_size] a
** message naming the bad rule and listing the kinds; EMBER_ENOMEM when out of
** memory. The caller owns *out (ember_faults_free).
*/
int ember_faults_parse(const char *spec, ember_faults_t **out, char *why,
                       size_t why_size);

/* What to do with the next send of frame kind `kind` (counts it). NULL
** faults always say SEND. *delay_ms is set for DELAY. */
ember_fault_action_t ember_faults_next(ember_faults_t *f, int kind,
                                       uint32_t *delay_ms);

typedef struct {
  uint64_t dropped; /* sends discarded so far */
  uint64_t delayed; /* sends held back so far */
} ember_faults_stats_t;

/* Zeros for NULL faults. */
void ember_faults_stats(const ember_faults_t *f, ember_faults_stats_t *stats);

/* The name of a frame kind for messages ("rref_fork"), or NULL if it has
** none. */
const char *ember_faults_kind_name(int kind);

void ember_faults_free(ember_faults_t *f);

#endif
