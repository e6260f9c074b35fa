/*
 * C accelerator for the corosync 3.1.7 totem wire codec (corosync-py).
 *
 * Boundary design: cffi cannot build Python objects, so every decoder validates the
 * whole datagram and writes the decoded *numbers* into a caller-supplied int64_t array
 * (one cffi call + one ffi.unpack on the Python side, which then builds the attrs
 * object).  Encoders write into a caller-supplied buffer and return the length.
 * Nothing here allocates, and every length/count is checked against the buffer before
 * a single byte beyond the fixed part is read.
 *
 * Layouts: shared/spec/totem-wire.md sections 2 and 4.  All structures are packed.
 */
#ifndef COROSYNC_PY_CODEC_H
#define COROSYNC_PY_CODEC_H

#include <stddef.h>
#include <stdint.h>

#define CC_ABI_VERSION 1

/* Error codes (returned negated).  Python maps them to WireError reasons. */
#define CC_E_TRUNCATED 1      /* "truncated" */
#define CC_E_BAD_MAGIC 2      /* "bad_magic" */
#define CC_E_BAD_VERSION 3    /* "bad_version" */
#define CC_E_BAD_TYPE 4       /* "bad_type" */
#define CC_E_BAD_COUNT 5      /* "bad_count" */
#define CC_E_PG_TRUNCATED 6   /* "pg_truncated" */
#define CC_E_PG_BAD_LENGTH 7  /* "pg_bad_length" */
#define CC_E_RANGE 8          /* encode: a value does not fit its field */

#define CC_HEADER_SIZE 13
#define CC_ORF_SIZE 57
#define CC_RTR_ITEM_SIZE 16
#define CC_RTR_MAX 30
#define CC_ORF_MAX_SIZE (CC_ORF_SIZE + CC_RTR_ITEM_SIZE * CC_RTR_MAX)
#define CC_MCAST_SIZE 45
#define CC_PG_HEADER_SIZE 8

/* Number of int64 slots written by the decoders. */
#define CC_ORF_FIELDS 12     /* + 3 per rtr entry */
#define CC_MCAST_FIELDS 10

int ccodec_abi_version(void);

/* >= 0: (nodeid << 9) | (swapped << 8) | type;  < 0: -CC_E_*. */
int64_t cc_peek_header(const char *buf, size_t len);

/* out: nodeid, target, seq, token_seq, aru, aru_addr, ring rep, ring seq, backlog, fcc,
 * retrans_flg (signed), n_rtr, then per entry: rep, seq, item seq.
 * Returns the number of slots written, or -CC_E_*.  out must hold CC_ORF_FIELDS + 3*30. */
int cc_decode_orf(const char *buf, size_t len, int swapped, int64_t *out);

/* out: encapsulated, nodeid, target, system_from, seq, this_seqno (signed), ring rep,
 * ring seq, node_id, guarantee (signed).  The payload starts at CC_MCAST_SIZE. */
int cc_decode_mcast(const char *buf, size_t len, int swapped, int64_t *out);

/* Validate a totempg packet.  The common case fits the return value, so Python needs no
 * output array at all:  >= 0: count | continuation << 16 | fragmented << 24, plus bit 32
 * when version or type is non-zero (Python then reads them itself; real nodes always send
 * 0).  The count piece lengths are written to lens[] (caller sizes it (len - 8) / 2, more
 * pieces cannot fit in len bytes and are refused before anything is written); Python only
 * reads them when count > 1 — a single piece always spans to the end.  < 0: -CC_E_*. */
int64_t cc_decode_pg(const char *buf, size_t len, int swapped, int64_t *lens, size_t lens_cap);

/* Little-endian encoders; out must hold CC_ORF_MAX_SIZE / CC_MCAST_SIZE bytes.
 * rtr: n_rtr triples (rep, ring seq, item seq).  Return bytes written or -CC_E_*. */
int cc_encode_orf(char *out, uint32_t nodeid, uint32_t target, uint32_t seq,
                  uint32_t token_seq, uint32_t aru, uint32_t aru_addr, uint32_t rep,
                  uint64_t ring_seq, uint32_t backlog, uint32_t fcc, int32_t retrans_flg,
                  const uint64_t *rtr, int n_rtr);

int cc_encode_mcast_header(char *out, uint8_t encapsulated, uint32_t nodeid, uint32_t target,
                           uint32_t system_from, uint32_t seq, int32_t this_seqno,
                           uint32_t rep, uint64_t ring_seq, uint32_t node_id,
                           int32_t guarantee);

/* totempg header + lengths for count pieces; out must hold 8 + 2*count bytes. */
int cc_encode_pg_header(char *out, uint8_t fragmented, uint8_t continuation,
                        const uint32_t *lens, size_t count);

#endif
