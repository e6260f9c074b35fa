/*
 * C accelerator for the corosync 3.1.7 totem wire codec (corosync-py).  See codec.h
 * for the Python/C boundary.  Loads and stores go through memcpy so unaligned packed
 * fields are safe on every architecture; the byte order of multi-byte fields is
 * normalised here so Python only ever sees plain numbers.
 */
#include <string.h>

#include "codec.h"

#define CC_MAGIC 0xC070u
#define CC_MAGIC_SWAPPED 0x70C0u
#define CC_VERSION 3u
#define CC_TYPE_MAX 5u

/* ------------------------------------------------------------------ loads / stores */

static inline uint16_t ld16(const unsigned char *p, int swapped)
{
    uint16_t v = (uint16_t)(p[0] | (p[1] << 8));
    return swapped ? (uint16_t)((v >> 8) | (v << 8)) : v;
}

static inline uint32_t ld32(const unsigned char *p, int swapped)
{
    uint32_t v = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16)
                 | ((uint32_t)p[3] << 24);
    return swapped ? __builtin_bswap32(v) : v;
}

static inline uint64_t ld64(const unsigned char *p, int swapped)
{
    uint64_t lo = ld32(p, 0), hi = ld32(p + 4, 0);
    uint64_t v = lo | (hi << 32);
    return swapped ? __builtin_bswap64(v) : v;
}

static inline void st16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static inline void st32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static inline void st64(unsigned char *p, uint64_t v)
{
    st32(p, (uint32_t)v);
    st32(p + 4, (uint32_t)(v >> 32));
}

/* Common header: magic, version, type, encapsulated, nodeid, target_nodeid. */
static inline void st_header(unsigned char *p, uint8_t type, uint8_t encap, uint32_t nodeid,
                             uint32_t target)
{
    st16(p, CC_MAGIC);
    p[2] = CC_VERSION;
    p[3] = type;
    p[4] = encap;
    st32(p + 5, nodeid);
    st32(p + 9, target);
}

int ccodec_abi_version(void)
{
    return CC_ABI_VERSION;
}

/* ------------------------------------------------------------------ header */

int64_t cc_peek_header(const char *cbuf, size_t len)
{
    const unsigned char *buf = (const unsigned char *)cbuf;
    int swapped;
    uint16_t magic;

    if (len < CC_HEADER_SIZE)
        return -CC_E_TRUNCATED;
    magic = ld16(buf, 0);
    if (magic == CC_MAGIC)
        swapped = 0;
    else if (magic == CC_MAGIC_SWAPPED)
        swapped = 1;
    else
        return -CC_E_BAD_MAGIC;
    if (buf[2] != CC_VERSION)
        return -CC_E_BAD_VERSION;
    if (buf[3] > CC_TYPE_MAX)
        return -CC_E_BAD_TYPE;
    return ((int64_t)ld32(buf + 5, swapped) << 9) | ((int64_t)swapped << 8) | buf[3];
}

/* ------------------------------------------------------------------ ORF token */

int cc_decode_orf(const char *cbuf, size_t len, int swapped, int64_t *out)
{
    const unsigned char *buf = (const unsigned char *)cbuf;
    const unsigned char *item;
    int32_t entries;
    int i, n;

    if (len < CC_ORF_SIZE)
        return -CC_E_TRUNCATED;
    entries = (int32_t)ld32(buf + 53, swapped);
    if (entries < 0 || entries > CC_RTR_MAX)
        return -CC_E_BAD_COUNT;
    if (len < (size_t)CC_ORF_SIZE + (size_t)CC_RTR_ITEM_SIZE * (size_t)entries)
        return -CC_E_TRUNCATED;

    out[0] = ld32(buf + 5, swapped);   /* nodeid */
    out[1] = ld32(buf + 9, swapped);   /* target_nodeid */
    out[2] = ld32(buf + 13, swapped);  /* seq */
    out[3] = ld32(buf + 17, swapped);  /* token_seq */
    out[4] = ld32(buf + 21, swapped);  /* aru */
    out[5] = ld32(buf + 25, swapped);  /* aru_addr */
    out[6] = ld32(buf + 29, swapped);  /* ring_id.rep */
    out[7] = (int64_t)ld64(buf + 33, swapped); /* ring_id.seq (u64: Python masks) */
    out[8] = ld32(buf + 41, swapped);  /* backlog */
    out[9] = ld32(buf + 45, swapped);  /* fcc */
    out[10] = (int32_t)ld32(buf + 49, swapped); /* retrans_flg, signed */
    out[11] = entries;
    n = CC_ORF_FIELDS;
    item = buf + CC_ORF_SIZE;
    for (i = 0; i < entries; i++, item += CC_RTR_ITEM_SIZE) {
        out[n++] = ld32(item, swapped);
        out[n++] = (int64_t)ld64(item + 4, swapped);
        out[n++] = ld32(item + 12, swapped);
    }
    return n;
}

int cc_encode_orf(char *cout, uint32_t nodeid, uint32_t target, uint32_t seq,
                  uint32_t token_seq, uint32_t aru, uint32_t aru_addr, uint32_t rep,
                  uint64_t ring_seq, uint32_t backlog, uint32_t fcc, int32_t retrans_flg,
                  const uint64_t *rtr, int n_rtr)
{
    unsigned char *out = (unsigned char *)cout;
    unsigned char *item;
    int i;

    if (n_rtr < 0 || n_rtr > CC_RTR_MAX)
        return -CC_E_BAD_COUNT;
    /* rtr entries carry u32 rep and u32 item seq in u64 slots: refuse overflow. */
    for (i = 0; i < n_rtr; i++) {
        if (rtr[3 * i] > 0xFFFFFFFFu || rtr[3 * i + 2] > 0xFFFFFFFFu)
            return -CC_E_RANGE;
    }
    st_header(out, 0, 0, nodeid, target);
    st32(out + 13, seq);
    st32(out + 17, token_seq);
    st32(out + 21, aru);
    st32(out + 25, aru_addr);
    st32(out + 29, rep);
    st64(out + 33, ring_seq);
    st32(out + 41, backlog);
    st32(out + 45, fcc);
    st32(out + 49, (uint32_t)retrans_flg);
    st32(out + 53, (uint32_t)n_rtr);
    item = out + CC_ORF_SIZE;
    for (i = 0; i < n_rtr; i++, item += CC_RTR_ITEM_SIZE) {
        st32(item, (uint32_t)rtr[3 * i]);
        st64(item + 4, rtr[3 * i + 1]);
        st32(item + 12, (uint32_t)rtr[3 * i + 2]);
    }
    return CC_ORF_SIZE + CC_RTR_ITEM_SIZE * n_rtr;
}

/* ------------------------------------------------------------------ MCAST */

int cc_decode_mcast(const char *cbuf, size_t len, int swapped, int64_t *out)
{
    const unsigned char *buf = (const unsigned char *)cbuf;

    if (len < CC_MCAST_SIZE)
        return -CC_E_TRUNCATED;
    out[0] = buf[4];                             /* encapsulated */
    out[1] = ld32(buf + 5, swapped);             /* nodeid */
    out[2] = ld32(buf + 9, swapped);             /* target_nodeid */
    out[3] = ld32(buf + 13, swapped);            /* system_from */
    out[4] = ld32(buf + 17, swapped);            /* seq */
    out[5] = (int32_t)ld32(buf + 21, swapped);   /* this_seqno, signed */
    out[6] = ld32(buf + 25, swapped);            /* ring_id.rep */
    out[7] = (int64_t)ld64(buf + 29, swapped);   /* ring_id.seq */
    out[8] = ld32(buf + 37, swapped);            /* node_id */
    out[9] = (int32_t)ld32(buf + 41, swapped);   /* guarantee, signed */
    return CC_MCAST_FIELDS;
}

int cc_encode_mcast_header(char *cout, uint8_t encapsulated, uint32_t nodeid, uint32_t target,
                           uint32_t system_from, uint32_t seq, int32_t this_seqno,
                           uint32_t rep, uint64_t ring_seq, uint32_t node_id,
                           int32_t guarantee)
{
    unsigned char *out = (unsigned char *)cout;

    st_header(out, 1, encapsulated, nodeid, target);
    st32(out + 13, system_from);
    st32(out + 17, seq);
    st32(out + 21, (uint32_t)this_seqno);
    st32(out + 25, rep);
    st64(out + 29, ring_seq);
    st32(out + 37, node_id);
    st32(out + 41, (uint32_t)guarantee);
    return CC_MCAST_SIZE;
}

/* ------------------------------------------------------------------ totempg */

int64_t cc_decode_pg(const char *cbuf, size_t len, int swapped, int64_t *lens, size_t lens_cap)
{
    const unsigned char *buf = (const unsigned char *)cbuf;
    size_t count, lens_end, total, i;
    int64_t r;

    if (len < CC_PG_HEADER_SIZE)
        return -CC_E_PG_TRUNCATED;
    count = ld16(buf + 6, swapped);
    lens_end = CC_PG_HEADER_SIZE + 2 * count;
    if (len < lens_end)
        return -CC_E_PG_TRUNCATED;
    if (lens_cap < count)  /* caller bug; cannot happen when sized per codec.h */
        return -CC_E_PG_TRUNCATED;
    total = lens_end;
    for (i = 0; i < count; i++) {
        uint16_t l = ld16(buf + CC_PG_HEADER_SIZE + 2 * i, swapped);
        lens[i] = l;
        total += l;
    }
    if (total != len)
        return -CC_E_PG_BAD_LENGTH;
    r = (int64_t)count | ((int64_t)buf[5] << 16) | ((int64_t)buf[4] << 24);
    if (ld16(buf, 0) != 0 || ld16(buf + 2, 0) != 0)
        r |= (int64_t)1 << 32;
    return r;
}

int cc_encode_pg_header(char *cout, uint8_t fragmented, uint8_t continuation,
                        const uint32_t *lens, size_t count)
{
    unsigned char *out = (unsigned char *)cout;
    size_t i;

    if (count > 0xFFFFu)
        return -CC_E_RANGE;
    for (i = 0; i < count; i++) {
        if (lens[i] > 0xFFFFu)
            return -CC_E_RANGE;
    }
    st16(out, 0);
    st16(out + 2, 0);
    out[4] = fragmented;
    out[5] = continuation;
    st16(out + 6, (uint16_t)count);
    for (i = 0; i < count; i++)
        st16(out + CC_PG_HEADER_SIZE + 2 * i, (uint16_t)lens[i]);
    return (int)(CC_PG_HEADER_SIZE + 2 * count);
}
