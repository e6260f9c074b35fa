/*
 * C accelerator for the totemcrypto-2.4 style envelope (spec/totem-wire.md section 6):
 * framing checks + HMAC in one call per datagram.
 *
 * Why this file exists: Python's hmac module is already backed by OpenSSL, so a C path
 * only pays off if it removes Python-level work per datagram.  It does three things the
 * pure path cannot do cheaply:
 *   - the HMAC key schedule (hash of an over-long key, ipad/opad blocks) is computed once
 *     per envelope and kept as two raw hash states that are copied per datagram
 *     (the one-shot HMAC entry points redo that work, and OpenSSL 3 adds an algorithm
 *     fetch on top);
 *   - length checks, marker checks, HMAC, constant-time comparison and the reserved-byte
 *     check happen in one foreign call, with no intermediate Python objects;
 *   - sealing writes header + body + digest into one caller-provided buffer.
 *
 * The hash primitives come from libcrypto (OpenSSL 3), which ships with every Debian
 * Python (libssl3).  Its development headers (libssl-dev) may be missing on a fresh
 * machine, so the few prototypes used are declared here and the hash contexts are
 * treated as opaque storage of a fixed, generous size.  The low-level digest calls are
 * used because they run the CPU's SHA/AVX code directly without a provider lookup.
 *
 * Nothing here allocates; all state lives in a cc_state the caller owns.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---- libcrypto, declared locally (stable exported ABI of libcrypto.so.3) ---- */
extern int MD5_Init(void *c);
extern int MD5_Update(void *c, const void *data, size_t len);
extern int MD5_Final(unsigned char *md, void *c);
extern int SHA1_Init(void *c);
extern int SHA1_Update(void *c, const void *data, size_t len);
extern int SHA1_Final(unsigned char *md, void *c);
extern int SHA256_Init(void *c);
extern int SHA256_Update(void *c, const void *data, size_t len);
extern int SHA256_Final(unsigned char *md, void *c);
extern int SHA384_Init(void *c);
extern int SHA384_Update(void *c, const void *data, size_t len);
extern int SHA384_Final(unsigned char *md, void *c);
extern int SHA512_Init(void *c);
extern int SHA512_Update(void *c, const void *data, size_t len);
extern int SHA512_Final(unsigned char *md, void *c);
extern int CRYPTO_memcmp(const void *a, const void *b, size_t len);

/*
 * Largest context is SHA512_CTX (216 bytes on LP64); MD5_CTX 92, SHA_CTX 96,
 * SHA256_CTX 112.  The contexts hold no pointers, so copying the whole storage is a
 * valid way to clone a hash state.
 */
#define CC_CTX_BYTES 256
#define CC_DIGEST_MAX 64
#define CC_BLOCK_MAX 128
#define CC_HEADER 4
#define CC_MARKER 0xFE

enum cc_hash { CC_HASH_NONE = 0, CC_HASH_MD5 = 1, CC_HASH_SHA1 = 2, CC_HASH_SHA256 = 3,
               CC_HASH_SHA384 = 4, CC_HASH_SHA512 = 5 };

/* Negative results of cc_open / cc_seal / cc_init; Python maps them to reason strings. */
enum cc_err {
    CC_ERR_SHORT = -1,          /* shorter than header + digest + minimal body */
    CC_ERR_BAD_MARKER = -2,     /* byte 0 or 1 is not 0xFE: not an envelope */
    CC_ERR_BAD_LENGTH = -3,     /* body length not a multiple of the cipher block */
    CC_ERR_INVALID_DIGEST = -4, /* HMAC mismatch */
    CC_ERR_BAD_RESERVED = -5,   /* authenticated, but bytes 2/3 are not zero */
    CC_ERR_NO_SPACE = -6,       /* cc_seal: output buffer too small */
    CC_ERR_BAD_ARG = -7         /* cc_init: unknown hash id or bad parameters */
};

typedef int (*cc_init_fn)(void *);
typedef int (*cc_update_fn)(void *, const void *, size_t);
typedef int (*cc_final_fn)(unsigned char *, void *);

struct cc_algo {
    cc_init_fn init;
    cc_update_fn update;
    cc_final_fn final;
    size_t block;
    size_t digest;
};

static const struct cc_algo cc_algos[] = {
    [CC_HASH_NONE] = { 0, 0, 0, 0, 0 },
    [CC_HASH_MD5] = { MD5_Init, MD5_Update, MD5_Final, 64, 16 },
    [CC_HASH_SHA1] = { SHA1_Init, SHA1_Update, SHA1_Final, 64, 20 },
    [CC_HASH_SHA256] = { SHA256_Init, SHA256_Update, SHA256_Final, 64, 32 },
    [CC_HASH_SHA384] = { SHA384_Init, SHA384_Update, SHA384_Final, 128, 48 },
    [CC_HASH_SHA512] = { SHA512_Init, SHA512_Update, SHA512_Final, 128, 64 },
};

typedef struct {
    int hash;          /* enum cc_hash */
    size_t digest;     /* digest length, 0 without a hash */
    size_t min_body;   /* smallest acceptable body (plaintext, or salt + one block) */
    size_t align;      /* body length must be a multiple of this past the salt (1 = any) */
    size_t salt;       /* salt bytes in front of the ciphertext (0 without a cipher) */
    _Alignas(16) unsigned char inner[CC_CTX_BYTES]; /* hash state after key ^ ipad */
    _Alignas(16) unsigned char outer[CC_CTX_BYTES]; /* hash state after key ^ opad */
} cc_state;

static size_t cc_state_size(void) { return sizeof(cc_state); }

/* Wipe without the compiler being allowed to drop the stores. */
static void cc_wipe(void *p, size_t n)
{
    volatile unsigned char *v = (volatile unsigned char *)p;
    while (n--)
        *v++ = 0;
}

/*
 * Prepare the per-envelope state: HMAC key schedule (RFC 2104: keys longer than the
 * block are hashed first, then zero-padded to the block and xored with 0x36 / 0x5c).
 */
static int cc_init(cc_state *st, int hash, const char *key, size_t keylen,
                   size_t min_body, size_t align, size_t salt)
{
    unsigned char k0[CC_BLOCK_MAX];
    unsigned char pad[CC_BLOCK_MAX];
    const struct cc_algo *a;
    size_t i;

    memset(st, 0, sizeof(*st));
    if (hash < CC_HASH_NONE || hash > CC_HASH_SHA512 || align == 0 || min_body == 0)
        return CC_ERR_BAD_ARG;
    st->hash = hash;
    st->min_body = min_body;
    st->align = align;
    st->salt = salt;
    if (hash == CC_HASH_NONE)
        return 0;

    a = &cc_algos[hash];
    st->digest = a->digest;
    memset(k0, 0, sizeof(k0));
    if (keylen > a->block) {
        _Alignas(16) unsigned char ctx[CC_CTX_BYTES];
        a->init(ctx);
        a->update(ctx, key, keylen);
        a->final(k0, ctx);
        cc_wipe(ctx, sizeof(ctx));
    } else if (keylen > 0) {
        memcpy(k0, key, keylen);
    }
    for (i = 0; i < a->block; i++)
        pad[i] = k0[i] ^ 0x36;
    a->init(st->inner);
    a->update(st->inner, pad, a->block);
    for (i = 0; i < a->block; i++)
        pad[i] = k0[i] ^ 0x5c;
    a->init(st->outer);
    a->update(st->outer, pad, a->block);
    cc_wipe(k0, sizeof(k0));
    cc_wipe(pad, sizeof(pad));
    return 0;
}

/* HMAC of data[0..n) from the precomputed states into out (st->digest bytes). */
static void cc_mac(const cc_state *st, const unsigned char *data, size_t n, unsigned char *out)
{
    const struct cc_algo *a = &cc_algos[st->hash];
    _Alignas(16) unsigned char ctx[CC_CTX_BYTES];
    unsigned char inner_digest[CC_DIGEST_MAX];

    memcpy(ctx, st->inner, sizeof(ctx));
    a->update(ctx, data, n);
    a->final(inner_digest, ctx);
    memcpy(ctx, st->outer, sizeof(ctx));
    a->update(ctx, inner_digest, a->digest);
    a->final(out, ctx);
}

/*
 * Compare without an early exit, so timing does not reveal the matching prefix length.
 * libcrypto's CRYPTO_memcmp is written (in assembly on x86) so that no compiler can turn
 * it back into an early-exit loop, which a plain C loop cannot promise.
 */
static int cc_equal(const unsigned char *x, const unsigned char *y, size_t n)
{
    return CRYPTO_memcmp(x, y, n) == 0;
}

/*
 * Seal: out = FE FE 00 00 | body | HMAC(everything before it).  body is the plaintext
 * (no cipher) or salt + ciphertext (the caller encrypts).  Returns the datagram length.
 */
static long cc_seal(const cc_state *st, const char *body, size_t n, char *out, size_t cap)
{
    unsigned char *o = (unsigned char *)out;
    size_t total = CC_HEADER + n + st->digest;

    if (total > cap || total > (size_t)0x7fffffff)
        return CC_ERR_NO_SPACE;
    o[0] = CC_MARKER;
    o[1] = CC_MARKER;
    o[2] = 0;
    o[3] = 0;
    memcpy(o + CC_HEADER, body, n);
    if (st->digest)
        cc_mac(st, o, CC_HEADER + n, o + CC_HEADER + n);
    return (long)total;
}

/*
 * Open: check a received datagram.  Only the length and the two marker bytes are looked
 * at before the HMAC has been verified; the reserved bytes and the body are trusted only
 * afterwards.  Returns the body length (the body starts at offset 4) or a cc_err.
 */
static long cc_open(const cc_state *st, const char *dgram, size_t n)
{
    const unsigned char *d = (const unsigned char *)dgram;
    unsigned char expect[CC_DIGEST_MAX];
    size_t body;

    if (n < CC_HEADER + st->digest + st->min_body || n > (size_t)0x7fffffff)
        return CC_ERR_SHORT;
    if (d[0] != CC_MARKER || d[1] != CC_MARKER)
        return CC_ERR_BAD_MARKER;
    body = n - CC_HEADER - st->digest;
    if ((body - st->salt) % st->align != 0)
        return CC_ERR_BAD_LENGTH;
    if (st->digest) {
        cc_mac(st, d, n - st->digest, expect);
        if (!cc_equal(expect, d + n - st->digest, st->digest))
            return CC_ERR_INVALID_DIGEST;
    }
    if (d[2] != 0 || d[3] != 0)
        return CC_ERR_BAD_RESERVED;
    return (long)body;
}
