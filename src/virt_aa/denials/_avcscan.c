/*
 * Raw-key counting of auditd AVC records, in C: the per-record part of
 * scan.py's auditd path (its pure-Python `_Audit` chunk code is the
 * reference and the fallback; the tests feed both the same bytes and
 * require the same keys, counts and stamps).
 *
 * For every `apparmor="` in a chunk:
 *   - a plain AVC record (`...audit(S:N): apparmor="HEAD pid=DIGITS comm=X
 *     REST [fsuid=...]`) is counted under its raw key
 *     HEAD + " pid=" + REST (+ " fsuid=" when there was one), with the
 *     bytes before it (at most 36, same line, after the previous
 *     `apparmor="`) kept for its first and last occurrence;
 *   - anything else is handed back by offset, for the Python fallback.
 * Only byte comparisons within the chunk; every length is checked.  The
 * hash is seeded by the caller (os.urandom) so a hostile log cannot aim
 * at collisions.  The GIL is released while a chunk is scanned.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdint.h>
#include <string.h>

#define SEP "apparmor=\""
#define NSEP 10
#define WIN 36
#define HDR 256                 /* the longest auditd header (node=...) taken as usual */
#define WINDOW (64 << 10)       /* bytes found and counted at a time (they stay in the cache) */
#define TEMPLATES 65536         /* record templates numbered before the numbering restarts */

typedef struct {               /* one allocation: the probe that finds it reads its key */
    uint64_t hash;
    Py_ssize_t klen;
    Py_ssize_t count;
    unsigned char flen, llen;
    char first[WIN], last[WIN];
    char key[];
} Entry;

#define BATCH 16

typedef struct {
    Py_ssize_t koff, klen;     /* the key, in Table.scratch */
    uint64_t h;
    const char *win;           /* in the chunk being fed */
    Py_ssize_t wlen;
} Pending;

typedef struct {               /* one hash table of raw keys */
    Entry **entries;           /* insertion order */
    Py_ssize_t n, cap;
    Entry **slots;             /* open addressing, NULL = empty */
    Py_ssize_t nslots;         /* power of two */
    Py_ssize_t kbytes;         /* bytes held in keys */
} Map;

typedef struct {
    PyObject_HEAD
    Map avc;                   /* plain AVC records */
    Map dbus;                  /* dbus USER_AVC records (pid and peer_pid cut) */
    Map tpl;                   /* record templates (text around the name), numbered by take */
    char *tk;                  /* a template being made */
    Py_ssize_t tkcap;
    uint64_t seed;
    char *scratch;             /* the keys of the batch */
    Py_ssize_t scap, used;
    Pending batch[BATCH];
    Py_ssize_t nb;
    char *dkey;                /* a dbus key being made */
    Py_ssize_t dcap;
    Py_ssize_t *bad;           /* fallback offsets of the current chunk */
    Py_ssize_t nbad, badcap;
    Py_ssize_t *qf;            /* offsets of "queue-full" in the current chunk */
    Py_ssize_t nqf, qfcap;
    Py_ssize_t *seps;          /* offsets of `apparmor="` in the current chunk */
    Py_ssize_t nseps, sepscap;
    int busy;
    int nomem;
} Table;

static uint64_t
mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* The high and low halves of a * b, folded: one multiply mixes 16 bytes. */
static inline uint64_t
fold_mul(uint64_t a, uint64_t b)
{
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

/* Seeded (the caller's os.urandom): a hostile log cannot aim keys at one slot. */
static uint64_t
hash_bytes(const char *p, Py_ssize_t n, uint64_t seed)
{
    const uint64_t k1 = 0xa0761d6478bd642fULL, k2 = 0xe7037ed1a0b428dbULL;
    uint64_t h = seed ^ ((uint64_t)n * 0x9E3779B97F4A7C15ULL);
    while (n >= 16) {
        uint64_t a, b;
        memcpy(&a, p, 8);
        memcpy(&b, p + 8, 8);
        h = fold_mul(a ^ k1 ^ h, b ^ k2 ^ seed);
        p += 16;
        n -= 16;
    }
    uint64_t a = 0, b = 0;
    if (n > 8) {
        memcpy(&a, p, 8);
        memcpy(&b, p + 8, (size_t)(n - 8));
    } else {
        memcpy(&a, p, (size_t)n);
    }
    return mix(fold_mul(a ^ k1 ^ h, b ^ k2 ^ seed) ^ seed);
}

static int
grow_slots(Map *t)
{
    Py_ssize_t ns = t->nslots ? t->nslots * 2 : 1024;
    while (ns < 2 * t->n + 2)
        ns *= 2;
    Entry **s = calloc((size_t)ns, sizeof(Entry *));
    if (!s)
        return -1;
    for (Py_ssize_t i = 0; i < t->n; i++) {
        Entry *e = t->entries[i];
        Py_ssize_t j = (Py_ssize_t)(e->hash & (uint64_t)(ns - 1));
        while (s[j])
            j = (j + 1) & (ns - 1);
        s[j] = e;
    }
    free(t->slots);
    t->slots = s;
    t->nslots = ns;
    return 0;
}

/* The entry of key[0:klen] (hash h) in t; a new one (count 0, no windows) is added and
 * *added set when there is none.  NULL: no memory. */
static inline Entry *
lookup(Map *t, const char *key, Py_ssize_t klen, uint64_t h, int *added)
{
    *added = 0;
    if ((t->n + 1) * 2 >= t->nslots && grow_slots(t) < 0)
        return NULL;
    Py_ssize_t mask = t->nslots - 1;
    Py_ssize_t j = (Py_ssize_t)(h & (uint64_t)mask);
    Entry *e;
    while ((e = t->slots[j]) != NULL) {
        if (e->hash == h && e->klen == klen && memcmp(e->key, key, (size_t)klen) == 0)
            return e;
        j = (j + 1) & mask;
    }
    if (t->n == t->cap) {
        Py_ssize_t nc = t->cap ? t->cap * 2 : 1024;
        Entry **ne = realloc(t->entries, (size_t)nc * sizeof(Entry *));
        if (!ne)
            return NULL;
        t->entries = ne;
        t->cap = nc;
    }
    e = malloc(sizeof(Entry) + (size_t)klen);
    if (!e)
        return NULL;
    e->hash = h;
    e->klen = klen;
    e->count = 0;
    e->flen = e->llen = 0;
    memcpy(e->key, key, (size_t)klen);
    t->entries[t->n++] = e;
    t->slots[j] = e;
    t->kbytes += klen;
    *added = 1;
    return e;
}

/* Count one record under key[0:klen] (hash h); win[0:wlen] is its stamp window. */
static int
count_key(Map *t, const char *key, Py_ssize_t klen, uint64_t h, const char *win,
          Py_ssize_t wlen)
{
    int added;
    Entry *e = lookup(t, key, klen, h, &added);
    if (!e)
        return -1;
    if (added) {
        memcpy(e->first, win, (size_t)wlen);
        e->flen = (unsigned char)wlen;
    }
    e->count++;
    memcpy(e->last, win, (size_t)wlen);
    e->llen = (unsigned char)wlen;
    return 0;
}

/* The number of key[0:klen] in t (its insertion index), added if new; -1: no memory. */
static Py_ssize_t
number(Map *t, const char *key, Py_ssize_t klen, uint64_t h)
{
    int added;
    Entry *e = lookup(t, key, klen, h, &added);
    if (!e)
        return -1;
    if (added)
        e->count = t->n - 1;
    return e->count;
}

static int
push(Py_ssize_t **arr, Py_ssize_t *n, Py_ssize_t *cap, Py_ssize_t off)
{
    if (*n == *cap) {
        Py_ssize_t nc = *cap ? *cap * 2 : 256;
        Py_ssize_t *na = realloc(*arr, (size_t)nc * sizeof(Py_ssize_t));
        if (!na)
            return -1;
        *arr = na;
        *cap = nc;
    }
    (*arr)[(*n)++] = off;
    return 0;
}

/* Plain scalar search: the needles are short and the texts mostly a few hundred bytes,
 * where memmem's set-up costs more than it saves. */
static const char *
find_scalar(const char *hay, Py_ssize_t n, const char *needle, Py_ssize_t nn)
{
    const char *end = hay + n - nn + 1;
    const char *p = hay;
    while (p < end) {
        p = memchr(p, needle[0], (size_t)(end - p));
        if (!p)
            return NULL;
        if (memcmp(p + 1, needle + 1, (size_t)(nn - 1)) == 0)
            return p;
        p++;
    }
    return NULL;
}

#ifdef __SSE2__
#include <emmintrin.h>

/* needle[0:nn] (nn >= 2) in hay[0:n]: 16 candidate positions at a time where both its first
 * and its last byte match, each confirmed with memcmp. */
static const char *
find(const char *hay, Py_ssize_t n, const char *needle, Py_ssize_t nn)
{
    const __m128i first = _mm_set1_epi8(needle[0]), last = _mm_set1_epi8(needle[nn - 1]);
    Py_ssize_t i = 0;
    for (; i + nn - 1 + 16 <= n; i += 16) {
        __m128i a = _mm_loadu_si128((const __m128i *)(hay + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(hay + i + nn - 1));
        unsigned m = (unsigned)_mm_movemask_epi8(
            _mm_and_si128(_mm_cmpeq_epi8(a, first), _mm_cmpeq_epi8(b, last)));
        while (m) {
            int k = __builtin_ctz(m);
            if (memcmp(hay + i + k + 1, needle + 1, (size_t)(nn - 2)) == 0)
                return hay + i + k;
            m &= m - 1;
        }
    }
    return n - i >= nn ? find_scalar(hay + i, n - i, needle, nn) : NULL;
}

#else
static const char *
find(const char *hay, Py_ssize_t n, const char *needle, Py_ssize_t nn)
{
    return n >= nn ? find_scalar(hay, n, needle, nn) : NULL;
}

#endif

/* Count the batched records: hash all and prefetch their slots, then their first entries,
 * then probe in order (the table is far bigger than the caches: this hides the misses). */
static int
flush_batch(Table *t)
{
    Py_ssize_t nb = t->nb;
    t->nb = 0;
    if (!nb)
        return 0;
    Map *m = &t->avc;
    if ((m->n + nb) * 2 >= m->nslots && grow_slots(m) < 0)
        return -1;
    Py_ssize_t mask = m->nslots - 1;
    for (Py_ssize_t i = 0; i < nb; i++) {
        Pending *pd = &t->batch[i];
        pd->h = hash_bytes(t->scratch + pd->koff, pd->klen, t->seed);
        __builtin_prefetch(&m->slots[pd->h & (uint64_t)mask]);
    }
    for (Py_ssize_t i = 0; i < nb; i++) {
        Entry *e = m->slots[t->batch[i].h & (uint64_t)mask];
        if (e)
            __builtin_prefetch(e);
    }
    for (Py_ssize_t i = 0; i < nb; i++) {
        Pending *pd = &t->batch[i];
        if (count_key(m, t->scratch + pd->koff, pd->klen, pd->h, pd->win, pd->wlen) < 0)
            return -1;
    }
    t->used = 0;
    return 0;
}

/* One plain AVC record c[s:e] (after `apparmor="`): 1 counted, 0 not plain, -1 no memory. */
static int
plain(Table *t, const char *c, Py_ssize_t s, Py_ssize_t e, const char *win, Py_ssize_t wlen)
{
    const char *T = c + s;
    Py_ssize_t n = e - s;
    const char *p = find(T, n, " pid=", 5);
    if (!p)
        return 0;
    Py_ssize_t q = (p - T) + 5;
    while (q < n && T[q] >= '0' && T[q] <= '9')
        q++;
    if (n - q < 6 || memcmp(T + q, " comm=", 6) != 0)
        return 0;
    /* REST: after the first space that follows " comm" (split(b" ", 2)[-1]) */
    Py_ssize_t r0 = q + 1;
    const char *sp = memchr(T + r0, ' ', (size_t)(n - r0));
    Py_ssize_t rs = sp ? (sp - T) + 1 : r0;
    const char *f = find(T + rs, n - rs, " fsuid=", 7);
    Py_ssize_t rl = f ? f - (T + rs) : n - rs;
    Py_ssize_t hl = p - T;
    /* `MODE" operation="OP" parent=N ...`: the parent's pid varies like the pid: cut it */
    Py_ssize_t cut0 = 0, cut1 = 0, i = 0;
    while (i < hl && T[i] >= 'A' && T[i] <= 'Z')
        i++;
    if (i > 0 && hl - i > 13 && memcmp(T + i, "\" operation=\"", 13) == 0) {
        i += 13;
        Py_ssize_t o0 = i;
        while (i < hl && ((T[i] >= 'a' && T[i] <= 'z') || T[i] == '_'))
            i++;
        if (i > o0 && hl - i > 9 && memcmp(T + i, "\" parent=", 9) == 0) {
            Py_ssize_t d0 = i + 9, d = d0;
            while (d < hl && T[d] >= '0' && T[d] <= '9')
                d++;
            if (d > d0 && (d == hl || T[d] == ' ')) {
                cut0 = i + 1;
                cut1 = d;
            }
        }
    }
    Py_ssize_t klen = hl - (cut1 - cut0) + 5 + rl + (f ? 7 : 0);
    if (t->nb == BATCH && flush_batch(t) < 0)
        return -1;
    if (t->used + klen > t->scap) {
        Py_ssize_t cap = t->scap ? t->scap : 1 << 16;
        while (cap < t->used + klen)
            cap *= 2;
        char *ns = realloc(t->scratch, (size_t)cap);
        if (!ns)
            return -1;
        t->scratch = ns;
        t->scap = cap;
    }
    char *k = t->scratch + t->used;
    memcpy(k, T, (size_t)cut0);
    memcpy(k + cut0, T + cut1, (size_t)(hl - cut1));
    hl -= cut1 - cut0;
    memcpy(k + hl, " pid=", 5);
    memcpy(k + hl + 5, T + rs, (size_t)rl);
    if (f)
        memcpy(k + hl + 5 + rl, " fsuid=", 7);
    Pending *pd = &t->batch[t->nb++];
    pd->koff = t->used;
    pd->klen = klen;
    pd->win = win;
    pd->wlen = wlen;
    t->used += klen;
    return 1;
}

/* bytes.lstrip(DIGITS) of p[0:*n], in place */
static void
skip_digits(const char **p, Py_ssize_t *n)
{
    while (*n && **p >= '0' && **p <= '9') {
        (*p)++;
        (*n)--;
    }
}

/* A dbus USER_AVC record at c[oi] on the line starting at ls (scan.py `_fallback`'s dbus
 * branch): counted under HEAD " pid=" NUL A " peer_pid=" NUL B (the pid and peer_pid
 * values cut), its stamp text (at most WIN bytes, else 0: Python takes the line) kept.
 * 1 counted, 0 not such a record, -1 no memory. */
static int
dbus_line(Table *t, const char *c, Py_ssize_t len, Py_ssize_t ls, Py_ssize_t oi, Py_ssize_t k)
{
    static const char tag[] = "type=USER_AVC msg=audit(";
    if (oi - ls < 5 || memcmp(c + oi - 5, "msg='", 5) != 0)
        return 0;
    const char *lep = memchr(c + oi, '\n', (size_t)(len - oi));
    Py_ssize_t le = lep ? lep - c : len;
    if (k + 1 < t->nseps && t->seps[k + 1] < le)
        return 0;               /* another record on the line: Python parses it */
    if (!find(c + ls, oi - ls, tag, (Py_ssize_t)sizeof(tag) - 1))
        return 0;
    if (memchr(c + ls, 0x1d, (size_t)(oi - ls)))
        return 0;               /* ENRICHED's separator before msg=': Python parses it */
    Py_ssize_t a = -1;
    for (Py_ssize_t i = oi - 6; i >= ls; i--) {
        if (memcmp(c + i, "audit(", 6) == 0) {
            a = i + 6;
            break;
        }
    }
    if (a < 0)
        return 0;
    const char *colon = memchr(c + a, ':', (size_t)(oi - a));
    Py_ssize_t wl = (colon ? colon - c : oi) - a;
    if (wl > WIN)
        return 0;
    const char *r = c + oi + NSEP;
    Py_ssize_t rn = le - (oi + NSEP);
    const char *p = find(r, rn, " pid=", 5);
    if (!p)
        return 0;               /* cut before its pid: Python parses it */
    Py_ssize_t hl = p ? p - r : rn;
    const char *tail = p ? p + 5 : r + rn;
    Py_ssize_t tl = (r + rn) - tail;
    skip_digits(&tail, &tl);
    const char *q = find(tail, tl, " peer_pid=", 10);
    Py_ssize_t al = q ? q - tail : tl;
    const char *b = q ? q + 10 : tail + tl;
    Py_ssize_t bl = (tail + tl) - b;
    skip_digits(&b, &bl);
    Py_ssize_t klen = hl + (p ? 5 : 0) + 1 + al + (q ? 10 : 0) + 1 + bl;
    if (klen > t->dcap) {
        char *nk = realloc(t->dkey, (size_t)klen);
        if (!nk)
            return -1;
        t->dkey = nk;
        t->dcap = klen;
    }
    char *d = t->dkey;
    memcpy(d, r, (size_t)hl);
    d += hl;
    if (p) {
        memcpy(d, " pid=", 5);
        d += 5;
    }
    *d++ = '\0';
    memcpy(d, tail, (size_t)al);
    d += al;
    if (q) {
        memcpy(d, " peer_pid=", 10);
        d += 10;
    }
    *d++ = '\0';
    memcpy(d, b, (size_t)bl);
    return count_key(&t->dbus, t->dkey, klen, hash_bytes(t->dkey, klen, t->seed), c + a, wl) < 0
        ? -1 : 1;
}

/* The candidates of one block: bits m1 (`apparmor="`) and m2 (`queue-full`) of the
 * block at c[i] whose first and tenth bytes match; confirmed and pushed at `at`. */
static inline int
candidates(Table *t, const char *c, Py_ssize_t at, Py_ssize_t i, uint32_t m1, uint32_t m2)
{
    while (m1) {
        int b = __builtin_ctz(m1);
        if (memcmp(c + i + b + 1, SEP + 1, NSEP - 2) == 0 &&
                push(&t->seps, &t->nseps, &t->sepscap, at + i + b) < 0)
            return -1;
        m1 &= m1 - 1;
    }
    while (m2) {
        int b = __builtin_ctz(m2);
        if (memcmp(c + i + b + 1, "ueue-ful", 8) == 0 &&
                push(&t->qf, &t->nqf, &t->qfcap, at + i + b) < 0)
            return -1;
        m2 &= m2 - 1;
    }
    return 0;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX2_PATH 1
static int use_avx2;            /* set once at import: the CPU has AVX2 */

/* `prescan`'s vector loop, 32 bytes at a time: (newlines, bytes done), or -1 bytes done
 * when out of memory.  Built for AVX2 whatever the compiler's baseline; only called
 * when the CPU has it. */
__attribute__((target("avx2"))) static Py_ssize_t
prescan_avx2(Table *t, const char *c, Py_ssize_t at, Py_ssize_t len, Py_ssize_t *done)
{
    Py_ssize_t lines = 0, i = 0;
    const __m256i nl = _mm256_set1_epi8('\n'), a = _mm256_set1_epi8('a'),
                  quote = _mm256_set1_epi8('"'), q = _mm256_set1_epi8('q'),
                  l = _mm256_set1_epi8('l'), zero = _mm256_setzero_si256();
    while (i + 32 + NSEP - 1 <= len) {
        __m256i acc = zero;             /* per-byte newline counts, summed every 255 blocks */
        for (int k = 0; k < 255 && i + 32 + NSEP - 1 <= len; k++, i += 32) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(c + i));
            __m256i y = _mm256_loadu_si256((const __m256i *)(c + i + NSEP - 1));
            acc = _mm256_sub_epi8(acc, _mm256_cmpeq_epi8(x, nl));
            uint32_t m1 = (uint32_t)_mm256_movemask_epi8(
                _mm256_and_si256(_mm256_cmpeq_epi8(x, a), _mm256_cmpeq_epi8(y, quote)));
            uint32_t m2 = (uint32_t)_mm256_movemask_epi8(
                _mm256_and_si256(_mm256_cmpeq_epi8(x, q), _mm256_cmpeq_epi8(y, l)));
            if ((m1 | m2) && candidates(t, c, at, i, m1, m2) < 0) {
                *done = -1;
                return 0;
            }
        }
        __m256i sum = _mm256_sad_epu8(acc, zero);
        lines += _mm256_extract_epi64(sum, 0) + _mm256_extract_epi64(sum, 1)
            + _mm256_extract_epi64(sum, 2) + _mm256_extract_epi64(sum, 3);
    }
    *done = i;
    return lines;
}
#endif

/* One pass over c[at:at + len]: its newlines (returned; -1: out of memory), and the
 * offsets in c of every `apparmor="` (t->seps) and `queue-full` (t->qf).  Neither string
 * can overlap itself, so these are the occurrences a left-to-right search finds. */
static Py_ssize_t
prescan(Table *t, const char *c0, Py_ssize_t at, Py_ssize_t len)
{
    const char *c = c0 + at;
    Py_ssize_t lines = 0, i = 0;
#ifdef HAVE_AVX2_PATH
    if (use_avx2) {
        lines = prescan_avx2(t, c, at, len, &i);
        if (i < 0)
            return -1;
    }
#endif
#ifdef __SSE2__
    const __m128i nl = _mm_set1_epi8('\n'), a = _mm_set1_epi8('a'), quote = _mm_set1_epi8('"'),
                  q = _mm_set1_epi8('q'), l = _mm_set1_epi8('l'), zero = _mm_setzero_si128();
    while (i + 16 + NSEP - 1 <= len) {
        __m128i acc = zero;             /* per-byte newline counts, summed every 255 blocks */
        for (int k = 0; k < 255 && i + 16 + NSEP - 1 <= len; k++, i += 16) {
            __m128i x = _mm_loadu_si128((const __m128i *)(c + i));
            __m128i y = _mm_loadu_si128((const __m128i *)(c + i + NSEP - 1));
            acc = _mm_sub_epi8(acc, _mm_cmpeq_epi8(x, nl));
            uint32_t m1 = (uint32_t)_mm_movemask_epi8(
                _mm_and_si128(_mm_cmpeq_epi8(x, a), _mm_cmpeq_epi8(y, quote)));
            uint32_t m2 = (uint32_t)_mm_movemask_epi8(
                _mm_and_si128(_mm_cmpeq_epi8(x, q), _mm_cmpeq_epi8(y, l)));
            if ((m1 | m2) && candidates(t, c, at, i, m1, m2) < 0)
                return -1;
        }
        __m128i sum = _mm_sad_epu8(acc, zero);
        lines += _mm_cvtsi128_si32(sum) + _mm_extract_epi16(sum, 4);
    }
#endif
    for (Py_ssize_t j = i; j < len; j++) {
        lines += c[j] == '\n';
        if (j + NSEP <= len) {
            if (c[j] == 'a' && memcmp(c + j, SEP, NSEP) == 0 &&
                    push(&t->seps, &t->nseps, &t->sepscap, at + j) < 0)
                return -1;
            if (c[j] == 'q' && memcmp(c + j, "queue-full", 10) == 0 &&
                    push(&t->qf, &t->nqf, &t->qfcap, at + j) < 0)
                return -1;
        }
    }
    return lines;
}

static int stamp_ok(const char *a, Py_ssize_t n);

/* The line before c[oi] is exactly the parser's auditd header:
 * "[node=NODE ]type=TYPE msg=audit(SECONDS[.FRAC]:SERIAL): " (else Python parses it). */
static int
header(const char *c, Py_ssize_t oi)
{
    Py_ssize_t back = oi < HDR + 1 ? oi : HDR + 1;
    const char *lsp = memrchr(c + oi - back, '\n', (size_t)back);
    if (!lsp && oi > HDR)
        return 0;               /* a header longer than HDR: not the usual one */
    Py_ssize_t ls = lsp ? (lsp - c) + 1 : 0;
    const char *l = c + ls;
    Py_ssize_t n = oi - ls, i = 0;
    if (n >= 5 && memcmp(l, "node=", 5) == 0) {
        i = 5;
        while (i < n && l[i] != ' ' && !(l[i] >= '\t' && l[i] <= '\r')
               && !(l[i] >= 0x1c && l[i] <= 0x1f))     /* Python's str whitespace */
            i++;
        if (i == 5 || i >= n || l[i] != ' ')
            return 0;
        i++;
    }
    if (n - i < 5 || memcmp(l + i, "type=", 5) != 0)
        return 0;
    i += 5;
    Py_ssize_t t = i;
    if (i < n && l[i] >= '0' && l[i] <= '9') {
        while (i < n && l[i] >= '0' && l[i] <= '9')
            i++;
    } else {
        while (i < n && ((l[i] >= 'A' && l[i] <= 'Z') || l[i] == '_'))
            i++;
    }
    if (i == t || n - i < 11 || memcmp(l + i, " msg=audit(", 11) != 0)
        return 0;
    return stamp_ok(l + i + 11, n - i - 11) && n - i - 11 > 0 && l[n - 3] == ')';
}

/* The records of the window c[a:b] (whole lines) whose `apparmor="` prescan found:
 * counted, or handed back (t->bad).  *bad_ls: the start of the last line handed back.
 * 0, or -1 when out of memory. */
static int
records(Table *t, const char *c, Py_ssize_t len, Py_ssize_t a, Py_ssize_t b,
        Py_ssize_t *bad_ls)
{
    Py_ssize_t prev_end = a;
    int first = 1;              /* the window starts at a line start */
    for (Py_ssize_t k = 0; k < t->nseps; k++) {
        Py_ssize_t oi = t->seps[k];
        const char *o = c + oi;
        Py_ssize_t s = oi + NSEP;
        Py_ssize_t lim = k + 1 < t->nseps ? t->seps[k + 1] : b;
        const char *le = memchr(c + s, '\n', (size_t)(lim - s));
        Py_ssize_t e = le ? le - c : lim;
        int done = 0;
        int was_first = first;
        first = le != NULL;     /* the next one starts a line if this line ended */
        if (!was_first) {       /* a later apparmor=" on a line: text of the line's record */
            prev_end = s;
            continue;
        }
        if (oi - 3 >= prev_end && memcmp(o - 3, "): ", 3) == 0 && header(c, oi)) {
            Py_ssize_t ws = oi - WIN;
            if (ws < prev_end)
                ws = prev_end;
            const char *ls = memrchr(c + ws, '\n', (size_t)(oi - ws));
            if (ls)
                ws = (ls - c) + 1;
            int r = plain(t, c, s, e, c + ws, oi - ws);
            if (r < 0)
                return -1;
            done = r;
        }
        if (!done) {            /* the line's first other record decides for the line */
            const char *lsp = memrchr(c, '\n', (size_t)oi);
            Py_ssize_t ls = lsp ? (lsp - c) + 1 : 0;
            if (ls != *bad_ls) {
                *bad_ls = ls;
                int r = dbus_line(t, c, len, ls, oi, k);
                if (r < 0)
                    return -1;
                if (!r && push(&t->bad, &t->nbad, &t->badcap, oi) < 0)
                    return -1;
            }
        }
        prev_end = s;
    }
    return 0;
}

/* Scan c[0:len]; returns newlines, or -1 when out of memory.  In windows of whole lines
 * of about WINDOW bytes: found, then counted, while the window is still in the cache. */
static Py_ssize_t
scan(Table *t, const char *c, Py_ssize_t len)
{
    Py_ssize_t lines = 0, a = 0, bad_ls = -1;
    while (a < len) {
        Py_ssize_t b = len;
        if (len - a > WINDOW) {
            const char *nl = memchr(c + a + WINDOW - 1, '\n', (size_t)(len - (a + WINDOW - 1)));
            if (nl)
                b = (nl - c) + 1;
        }
        t->nseps = 0;
        Py_ssize_t n = prescan(t, c, a, b - a);
        if (n < 0 || records(t, c, len, a, b, &bad_ls) < 0)
            return -1;
        lines += n;
        a = b;
    }
    return flush_batch(t) < 0 ? -1 : lines;
}

static PyObject *
offsets(const Py_ssize_t *a, Py_ssize_t n)
{
    PyObject *out = PyList_New(n);
    if (!out)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyLong_FromSsize_t(a[i]);
        if (!v) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, v);
    }
    return out;
}

static PyObject *
Table_feed(Table *t, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (t->busy) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_RuntimeError, "Table.feed is not reentrant");
        return NULL;
    }
    if ((t->avc.n && !t->avc.slots && grow_slots(&t->avc) < 0) ||
            (t->dbus.n && !t->dbus.slots && grow_slots(&t->dbus) < 0)) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    t->busy = 1;
    t->nbad = t->nqf = 0;
    t->nb = t->used = 0;
    Py_ssize_t lines;
    Py_BEGIN_ALLOW_THREADS
    lines = scan(t, view.buf, view.len);
    Py_END_ALLOW_THREADS
    t->busy = 0;
    PyBuffer_Release(&view);
    if (lines < 0)
        return PyErr_NoMemory();
    PyObject *bad = offsets(t->bad, t->nbad);
    PyObject *qf = bad ? offsets(t->qf, t->nqf) : NULL;
    if (!qf) {
        Py_XDECREF(bad);
        return NULL;
    }
    return Py_BuildValue("(nNN)", lines, bad, qf);
}

/* a[0:n] is "DIGITS[.DIGITS]:DIGITS): " (what the parser takes for a stamp), or the
 * "DIGITS[.DIGITS]" alone that the dbus table keeps */
static int
stamp_ok(const char *a, Py_ssize_t n)
{
    Py_ssize_t i = 0, d = 0;
    while (i < n && a[i] >= '0' && a[i] <= '9')
        i++;
    if (i == 0)
        return 0;
    if (i < n && a[i] == '.') {
        d = ++i;
        while (i < n && a[i] >= '0' && a[i] <= '9')
            i++;
        if (i == d)
            return 0;
    }
    if (i == n)
        return 1;               /* a dbus record's stamp: the seconds alone */
    if (a[i++] != ':')
        return 0;
    d = i;
    while (i < n && a[i] >= '0' && a[i] <= '9')
        i++;
    return i > d && n - i == 3 && memcmp(a + i, "): ", 3) == 0;
}

/* float() of the text after the window's last "audit(" up to ':' (None if it is not one) */
static PyObject *
stamp(const char *w, Py_ssize_t n)
{
    if (n == 0)
        Py_RETURN_NONE;
    const char *a = NULL;
    for (Py_ssize_t i = n - 6; i >= 0; i--) {
        if (memcmp(w + i, "audit(", 6) == 0) {
            a = w + i + 6;
            break;
        }
    }
    if (!a)
        a = w;
    Py_ssize_t m = (w + n) - a;
    const char *colon = memchr(a, ':', (size_t)m);
    if (colon)
        m = colon - a;
    if (!stamp_ok(a, (w + n) - a))
        Py_RETURN_NONE;         /* not the parser's SECONDS[.FRAC]:SERIAL): */
    if (m > 0 && m < 32) {
        /* the usual "SECONDS.MILLIS": parsed here (float() gives the same value) */
        char tmp[32];
        Py_ssize_t i = 0;
        for (; i < m && ((a[i] >= '0' && a[i] <= '9') || a[i] == '.'); i++)
            tmp[i] = a[i];
        if (i == m) {
            tmp[m] = '\0';
            char *endp = NULL;
            double d = PyOS_string_to_double(tmp, &endp, NULL);
            if (d == -1.0 && PyErr_Occurred()) {
                PyErr_Clear();
                Py_RETURN_NONE;
            }
            if (endp != tmp + m)
                Py_RETURN_NONE;
            return PyFloat_FromDouble(d);
        }
    }
    PyObject *b = PyBytes_FromStringAndSize(a, m);
    if (!b)
        return NULL;
    PyObject *v = PyFloat_FromString(b);
    Py_DECREF(b);
    if (!v) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError))
            return NULL;
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return v;
}

/* item[at:at + 3] = the entry's count, first and last stamp (-1: an exception is set) */
static int
put_counts(PyObject *item, Py_ssize_t at, const Entry *e)
{
    PyObject *v;
    if (!(v = PyLong_FromSsize_t(e->count)))
        return -1;
    PyTuple_SET_ITEM(item, at, v);
    if (!(v = stamp(e->first, e->flen)))
        return -1;
    PyTuple_SET_ITEM(item, at + 1, v);
    if (e->count == 1 || (e->flen == e->llen && memcmp(e->first, e->last, e->flen) == 0)) {
        Py_INCREF(v);           /* the same window: the same stamp */
    } else if (!(v = stamp(e->last, e->llen))) {
        return -1;
    }
    PyTuple_SET_ITEM(item, at + 2, v);
    return 0;
}

static void
clear(Map *t)
{
    for (Py_ssize_t i = 0; i < t->n; i++)
        free(t->entries[i]);
    free(t->entries);
    free(t->slots);
    t->entries = NULL;
    t->slots = NULL;
    t->n = t->cap = t->nslots = t->kbytes = 0;
}

static int
hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* scan.py's `_split`: when the name is quoted (no inner quote, not empty) or upper-case
 * hex of even length, *name is it (str) and *tid the number of the record's template
 * (the text before name= NUL the text after comm=, numbered in t->tpl); else *name is None and *tid the raw key (bytes).  New references. */
static int
split(Table *tab, const char *key, Py_ssize_t klen, PyObject **tid, PyObject **name)
{
    *tid = *name = NULL;
    const char *pid = find(key, klen, " pid=", 5);
    Py_ssize_t hl = pid ? pid - key : klen;
    const char *rest = pid ? pid + 5 : key + klen;
    Py_ssize_t rl = (key + klen) - rest;
    const char *nsep = find(key, hl, " name=", 6);
    if (nsep) {
        const char *nm = nsep + 6;
        Py_ssize_t nl = (key + hl) - nm;
        if (nl > 2 && nm[0] == '"' && nm[nl - 1] == '"' && !memchr(nm + 1, '"', (size_t)(nl - 2))) {
            *name = PyUnicode_DecodeUTF8(nm + 1, nl - 2, "surrogateescape");
        } else if (nl > 0 && !(nl & 1)) {
            char *buf = malloc((size_t)(nl / 2) + 1);
            if (!buf) {
                PyErr_NoMemory();
                return -1;
            }
            Py_ssize_t i = 0;
            for (; i < nl; i += 2) {
                int hi = hexval(nm[i]), lo = hexval(nm[i + 1]);
                if (hi < 0 || lo < 0)
                    break;
                buf[i / 2] = (char)(hi << 4 | lo);
            }
            if (i == nl)
                *name = PyUnicode_DecodeUTF8(buf, nl / 2, "surrogateescape");
            free(buf);
            if (i != nl)
                goto raw;
        } else {
            goto raw;
        }
        if (!*name)
            return -1;
        Py_ssize_t pl = nsep - key, tl = pl + 1 + rl;
        if (tl > tab->tkcap) {
            char *nk = realloc(tab->tk, (size_t)tl);
            if (!nk) {
                Py_CLEAR(*name);
                PyErr_NoMemory();
                return -1;
            }
            tab->tk = nk;
            tab->tkcap = tl;
        }
        memcpy(tab->tk, key, (size_t)pl);
        tab->tk[pl] = '\0';
        memcpy(tab->tk + pl + 1, rest, (size_t)rl);
        Py_ssize_t id = number(&tab->tpl, tab->tk, tl, hash_bytes(tab->tk, tl, tab->seed));
        if (id < 0) {
            Py_CLEAR(*name);
            PyErr_NoMemory();
            return -1;
        }
        *tid = PyLong_FromSsize_t(id);
        if (!*tid) {
            Py_CLEAR(*name);
            return -1;
        }
        return 0;
    }
raw:
    *tid = PyBytes_FromStringAndSize(key, klen);
    if (!*tid)
        return -1;
    Py_INCREF(Py_None);
    *name = Py_None;
    return 0;
}

static PyObject *
Table_take(Table *tab, PyObject *arg)
{
    Py_ssize_t limit = PyLong_AsSsize_t(arg);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    if (tab->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Table is being fed");
        return NULL;
    }
    int restart = tab->tpl.n >= TEMPLATES;
    if (restart)
        clear(&tab->tpl);       /* bounded: the numbering starts again */
    Py_ssize_t t0 = tab->tpl.n;
    Map *t = &tab->avc;
    /* no lookups until the next feed, which rebuilds the slots for what is left */
    free(t->slots);
    t->slots = NULL;
    t->nslots = 0;
    Py_ssize_t m = limit < t->n ? (limit > 0 ? limit : 0) : t->n;
    PyObject *out = PyList_New(m), *fresh = NULL;
    if (!out)
        return NULL;
    for (Py_ssize_t i = 0; i < m; i++) {
        Entry *e = t->entries[t->n - 1];
        PyObject *item = PyTuple_New(5);
        if (!item)
            goto fail;
        PyList_SET_ITEM(out, i, item);
        PyObject *v, *w;
        if (split(tab, e->key, e->klen, &v, &w) < 0)
            goto fail;
        PyTuple_SET_ITEM(item, 0, v);
        PyTuple_SET_ITEM(item, 1, w);
        if (put_counts(item, 2, e) < 0)
            goto fail;
        t->kbytes -= e->klen;
        free(e);
        t->n--;
    }
    fresh = PyList_New(tab->tpl.n - t0);
    if (!fresh)
        goto fail;
    for (Py_ssize_t i = t0; i < tab->tpl.n; i++) {
        Entry *e = tab->tpl.entries[i];
        PyObject *v = PyBytes_FromStringAndSize(e->key, e->klen);
        if (!v)
            goto fail;
        PyList_SET_ITEM(fresh, i - t0, v);
    }
    if (!t->n && !tab->dbus.n) {
        clear(t);
#ifdef __GLIBC__
        malloc_trim(0);         /* give the freed keys back: resident memory is budgeted */
#endif
    }
    return Py_BuildValue("(NNO)", out, fresh, restart ? Py_True : Py_False);
fail:
    Py_DECREF(out);
    Py_XDECREF(fresh);
    clear(t);           /* a half-taken table is of no use: the scan fails */
    clear(&tab->tpl);
    return NULL;
}

/* take_dbus() -> [(raw key, count, first, last)] of the dbus records, oldest first (the
 * order scan.py's dict gives); empties that table. */
static PyObject *
Table_take_dbus(Table *tab, PyObject *Py_UNUSED(ignored))
{
    if (tab->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Table is being fed");
        return NULL;
    }
    Map *t = &tab->dbus;
    PyObject *out = PyList_New(t->n);
    if (!out)
        return NULL;
    for (Py_ssize_t i = 0; i < t->n; i++) {
        Entry *e = t->entries[i];
        PyObject *item = PyTuple_New(4), *v;
        if (!item)
            goto fail;
        PyList_SET_ITEM(out, i, item);
        if (!(v = PyBytes_FromStringAndSize(e->key, e->klen)))
            goto fail;
        PyTuple_SET_ITEM(item, 0, v);
        if (put_counts(item, 1, e) < 0)
            goto fail;
    }
    clear(t);
    return out;
fail:
    Py_DECREF(out);
    clear(t);
    return NULL;
}

static Py_ssize_t
Table_len(Table *t)
{
    return t->avc.n;
}

static PyObject *
Table_get_kbytes(Table *t, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(t->avc.kbytes);
}

static int
Table_init(Table *t, PyObject *args, PyObject *kw)
{
    Py_buffer seed;
    static char *names[] = {"seed", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*", names, &seed))
        return -1;
    if (seed.len != 8) {
        PyBuffer_Release(&seed);
        PyErr_SetString(PyExc_ValueError, "seed must be 8 bytes");
        return -1;
    }
    memcpy(&t->seed, seed.buf, 8);
    PyBuffer_Release(&seed);
    return 0;
}

static void
Table_dealloc(Table *t)
{
    clear(&t->avc);
    clear(&t->dbus);
    clear(&t->tpl);
    free(t->tk);
    free(t->dkey);
    free(t->scratch);
    free(t->bad);
    free(t->qf);
    free(t->seps);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyMethodDef Table_methods[] = {
    {"feed", (PyCFunction)Table_feed, METH_O,
     "feed(chunk) -> (newlines, offsets of records for the fallback, offsets of queue-full)"},
    {"take", (PyCFunction)Table_take, METH_O,
     "take(n) -> (up to n [(template number or raw key, name or None, count, first, "
     "last)], the newest first, removed from the table; the templates numbered in this "
     "call, in order; whether the numbering started again at 0)"},
    {"take_dbus", (PyCFunction)Table_take_dbus, METH_NOARGS,
     "take_dbus() -> [(raw key, count, first, last)] of the dbus records, oldest first"},
    {NULL, NULL, 0, NULL},
};

static PyObject *
Table_get_dbus_len(Table *t, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(t->dbus.n);
}

static PyGetSetDef Table_getset[] = {
    {"kbytes", (getter)Table_get_kbytes, NULL, "bytes held in raw keys", NULL},
    {"dbus_len", (getter)Table_get_dbus_len, NULL, "distinct dbus raw keys", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Table_seq = {
    .sq_length = (lenfunc)Table_len,
};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "virt_aa.denials._avcscan.Table",
    .tp_basicsize = sizeof(Table),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Raw keys of plain AVC records with counts and first/last stamps.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Table_init,
    .tp_dealloc = (destructor)Table_dealloc,
    .tp_methods = Table_methods,
    .tp_getset = Table_getset,
    .tp_as_sequence = &Table_seq,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_avcscan",
    "Raw-key counting of auditd AVC records (the fast path of virt_aa.denials.scan).",
    -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__avcscan(void)
{
    if (PyType_Ready(&TableType) < 0)
        return NULL;
#ifdef HAVE_AVX2_PATH
    __builtin_cpu_init();
    use_avx2 = __builtin_cpu_supports("avx2") && !getenv("VIRT_AA_NO_AVX2");
#endif
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
#ifdef HAVE_AVX2_PATH
    if (PyModule_AddIntConstant(m, "AVX2", use_avx2) < 0) {
#else
    if (PyModule_AddIntConstant(m, "AVX2", 0) < 0) {
#endif
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&TableType);
    if (PyModule_AddObject(m, "Table", (PyObject *)&TableType) < 0) {
        Py_DECREF(&TableType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
