/* The common shape of an interaction event, parsed in C (asmg/event_parse.py builds and calls it).

   A row is accepted (ok = 1) only when it is one JSON object whose every byte is printable ASCII or JSON
   whitespace, without backslash escapes, with integer user_id and item_id in [0, 2^63-1], a numeric ts, and
   optional v = 1, label 0/1/true/false/null, categories (null or a list of at most 256 integer ids) and
   event_id (null or a string of 1..256 characters); other keys may hold strings, numbers and literals. Every
   other row (duplicate known keys, nested unknown values, control records, escapes, odd numbers, anything
   truncated) gets ok = 0 and is left to the reference parser (asmg.events.parse_event). ts is returned as an
   integer, or as its token text (floats: Python converts them as json does); the caller checks its range.

   Every read is bounded by the row's length; every write by the caller's capacities. */

#include <stdint.h>
#include <string.h>

#define MAX_CATEGORIES 256
#define MAX_EVENT_ID 256
#define TS_TEXT 32       /* bytes per row of the float-ts text buffer (a token must fit with its NUL) */
#define MAX_NUMBER 32    /* longest number token accepted in an unknown key (Python limits long integers) */

enum { K_V = 1, K_USER = 2, K_ITEM = 4, K_TS = 8, K_LABEL = 16, K_CATS = 32, K_EVENT = 64 };

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} cursor;

static void ws(cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static int is_digit(const cursor *c) { return c->p < c->end && *c->p >= '0' && *c->p <= '9'; }

/* A string's body after its opening quote, up to and past the closing quote; its length in *len.
   0 for anything the fast path leaves alone: escapes, control characters, non-ASCII bytes, no closing quote. */
static int string_body(cursor *c, const uint8_t **start, int64_t *len) {
    *start = c->p;
    while (c->p < c->end) {
        uint8_t b = *c->p;
        if (b == '"') {
            *len = c->p - *start;
            c->p++;
            return 1;
        }
        if (b == '\\' || b < 0x20 || b >= 0x80) return 0;
        c->p++;
    }
    return 0;
}

/* A JSON integer token (no sign, no fraction, no exponent) in [0, 2^63-1]. */
static int uint_token(cursor *c, int64_t *out) {
    if (!is_digit(c)) return 0;
    if (*c->p == '0') {
        c->p++;
        if (is_digit(c)) return 0; /* a leading zero: invalid JSON */
        *out = 0;
    } else {
        uint64_t value = 0;
        int digits = 0;
        while (is_digit(c)) {
            if (++digits > 19) return 0;
            value = value * 10 + (uint64_t)(*c->p - '0');
            c->p++;
        }
        if (value > (uint64_t)INT64_MAX) return 0;
        *out = (int64_t)value;
    }
    return !(c->p < c->end && (*c->p == '.' || *c->p == 'e' || *c->p == 'E'));
}

/* A JSON number token of Python's grammar -?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?; *is_int when it has neither
   fraction nor exponent. */
static int number_token(cursor *c, int *is_int) {
    if (c->p < c->end && *c->p == '-') c->p++;
    if (!is_digit(c)) return 0;
    if (*c->p == '0') {
        c->p++;
    } else {
        while (is_digit(c)) c->p++;
    }
    *is_int = 1;
    if (c->p < c->end && *c->p == '.') {
        c->p++;
        if (!is_digit(c)) return 0;
        while (is_digit(c)) c->p++;
        *is_int = 0;
    }
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
        c->p++;
        if (c->p < c->end && (*c->p == '+' || *c->p == '-')) c->p++;
        if (!is_digit(c)) return 0;
        while (is_digit(c)) c->p++;
        *is_int = 0;
    }
    return 1;
}

static int literal_n(cursor *c, const char *word, size_t n) {
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0) return 0;
    c->p += n;
    return 1;
}
#define literal(c, word) literal_n(c, word, sizeof(word) - 1)

/* An unknown key's value: a plain string, a number of at most MAX_NUMBER characters, or a literal. */
static int skip_value(cursor *c) {
    const uint8_t *start;
    int64_t len;
    int is_int;
    if (c->p >= c->end) return 0;
    switch (*c->p) {
    case '"':
        c->p++;
        return string_body(c, &start, &len);
    case 't': return literal(c, "true");
    case 'f': return literal(c, "false");
    case 'n': return literal(c, "null");
    default:
        start = c->p;
        return number_token(c, &is_int) && c->p - start <= MAX_NUMBER;
    }
}

static int key_of(const uint8_t *s, int64_t n) {
#define IS(word) (memcmp(s, word, sizeof(word) - 1) == 0)
    switch (n) { /* by length first: one comparison for each key of the usual record */
    case 1: return IS("v") ? K_V : 0;
    case 2: return IS("ts") ? K_TS : 0;
    case 5: return IS("label") ? K_LABEL : 0;
    case 7:
        if (IS("user_id")) return K_USER;
        if (IS("item_id")) return K_ITEM;
        if (IS("control")) return -1; /* a control record: classify_record decides */
        return 0;
    case 8: return IS("event_id") ? K_EVENT : 0;
    case 10: return IS("categories") ? K_CATS : 0;
    default: return 0;
    }
#undef IS
}

typedef struct {
    int64_t user, item, ts, n_cats;
    int ts_float;
    int8_t label;
    const uint8_t *ts_text;
    int64_t ts_len;
} row;

/* The categories list; values appended at cats[*used..], at most cap in all. */
static int categories(cursor *c, row *r, int64_t *cats, int64_t *used, int64_t cap) {
    if (literal(c, "null")) return 1;
    if (c->p >= c->end || *c->p != '[') return 0;
    c->p++;
    ws(c);
    if (c->p < c->end && *c->p == ']') {
        c->p++;
        return 1;
    }
    for (;;) {
        int64_t value;
        if (!uint_token(c, &value) || r->n_cats >= MAX_CATEGORIES || *used >= cap) return 0;
        cats[(*used)++] = value;
        r->n_cats++;
        ws(c);
        if (c->p >= c->end) return 0;
        if (*c->p == ']') {
            c->p++;
            return 1;
        }
        if (*c->p != ',') return 0;
        c->p++;
        ws(c);
    }
}

static int known_value(cursor *c, int key, row *r, int64_t *cats, int64_t *used, int64_t cap) {
    const uint8_t *start;
    int64_t len, value;
    int is_int;
    switch (key) {
    case K_V:
        return uint_token(c, &value) && value == 1;
    case K_USER:
        return uint_token(c, &r->user);
    case K_ITEM:
        return uint_token(c, &r->item);
    case K_TS:
        if (c->p < c->end && *c->p == '-') return 0;
        start = c->p;
        if (!number_token(c, &is_int) || c->p - start >= TS_TEXT) return 0;
        r->ts_float = !is_int;
        r->ts_text = start;
        r->ts_len = c->p - start;
        if (is_int) {
            if (r->ts_len > 15) return 0; /* far above any valid ts: the reference refuses it */
            r->ts = 0;
            for (const uint8_t *q = start; q < c->p; q++) r->ts = r->ts * 10 + (*q - '0');
        }
        return 1;
    case K_LABEL:
        if (literal(c, "null") || literal(c, "true")) {
            r->label = 1;
            return 1;
        }
        if (literal(c, "false")) {
            r->label = 0;
            return 1;
        }
        if (!uint_token(c, &value) || value > 1) return 0;
        r->label = (int8_t)value;
        return 1;
    case K_CATS:
        return categories(c, r, cats, used, cap);
    case K_EVENT:
        if (literal(c, "null")) return 1;
        if (c->p >= c->end || *c->p != '"') return 0;
        c->p++;
        return string_body(c, &start, &len) && len >= 1 && len <= MAX_EVENT_ID;
    }
    return 0;
}

static int parse_row(cursor *c, row *r, int64_t *cats, int64_t *used, int64_t cap) {
    int seen = 0;
    ws(c);
    if (c->p >= c->end || *c->p != '{') return 0;
    c->p++;
    ws(c);
    for (;;) {
        const uint8_t *name;
        int64_t name_len;
        if (c->p >= c->end || *c->p != '"') return 0;
        c->p++;
        if (!string_body(c, &name, &name_len)) return 0;
        ws(c);
        if (c->p >= c->end || *c->p != ':') return 0;
        c->p++;
        ws(c);
        int key = key_of(name, name_len);
        if (key < 0 || (seen & key)) return 0; /* a control record, or a known key twice */
        seen |= key;
        if (!(key ? known_value(c, key, r, cats, used, cap) : skip_value(c))) return 0;
        ws(c);
        if (c->p >= c->end) return 0;
        if (*c->p == '}') {
            c->p++;
            break;
        }
        if (*c->p != ',') return 0;
        c->p++;
        ws(c);
    }
    ws(c);
    return c->p == c->end && (seen & (K_USER | K_ITEM | K_TS)) == (K_USER | K_ITEM | K_TS);
}

/* Parse n rows; row i is buf[starts[i] : starts[i] + lengths[i]]. Outputs per row: ok, user, item, ts (integer
   ts), ts_float (1: ts_text[i * 32 ...] holds the token, NUL-terminated), label, cat_lengths; categories of
   accepted rows in row order in cat_values (at most cat_capacity). Returns the number of category values, or
   -1 when an argument is out of range. */
int64_t asmg_parse_events(const uint8_t *buf, int64_t buf_len, const int64_t *starts, const int64_t *lengths,
                          int64_t n, uint8_t *ok, int64_t *user, int64_t *item, int64_t *ts, uint8_t *ts_float,
                          char *ts_text, int8_t *label, int64_t *cat_lengths, int64_t *cat_values,
                          int64_t cat_capacity) {
    int64_t used = 0;
    if (n < 0 || buf_len < 0 || cat_capacity < 0) return -1;
    for (int64_t i = 0; i < n; i++) {
        ok[i] = 0;
        user[i] = item[i] = ts[i] = cat_lengths[i] = 0;
        ts_float[i] = 0;
        label[i] = 1;
        ts_text[i * TS_TEXT] = 0;
        if (starts[i] < 0 || lengths[i] < 0 || starts[i] > buf_len || lengths[i] > buf_len - starts[i]) continue;
        cursor c = {buf + starts[i], buf + starts[i] + lengths[i]};
        row r = {0, 0, 0, 0, 0, 1, NULL, 0};
        int64_t before = used;
        if (!parse_row(&c, &r, cat_values, &used, cat_capacity)) {
            used = before;
            continue;
        }
        ok[i] = 1;
        user[i] = r.user;
        item[i] = r.item;
        ts[i] = r.ts;
        label[i] = r.label;
        cat_lengths[i] = r.n_cats;
        if (r.ts_float) {
            ts_float[i] = 1;
            memcpy(ts_text + i * TS_TEXT, r.ts_text, (size_t)r.ts_len);
            ts_text[i * TS_TEXT + r.ts_len] = 0;
        }
    }
    return used;
}
