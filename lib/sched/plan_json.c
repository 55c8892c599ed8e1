/* Plan files: JSON that people can read and diff, and that reads back to exactly the plan that
 * was written (assignment and every number, bit for bit).
 *
 * The reader is a small strict recursive-descent parser for the JSON grammar (RFC 8259) that
 * checks the plan schema as it goes, so a message can name the line and the field. It is
 * bounded for untrusted input: nesting depth, number length, entry counts and text size all
 * have limits, and unknown keys are skipped (so newer writers' extra fields load) without
 * recursing deeper than the depth limit.
 *
 * Numbers never go through the locale's decimal point: the writer replaces whatever printf
 * used with '.', and the reader hands strtod plain digits and an exponent. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/internal.h"
#include "netmodel/links_internal.h"
#include "sched/sched_internal.h"

#define LH_PLAN_FORMAT "longhaul-plan"
#define LH_PLAN_VERSION 1
/* A plan of 65536 devices is about 4 MB of JSON; anything far beyond is not a plan. */
#define LH_PLAN_TEXT_MAX ((size_t)256 << 20)
/* Levels of arrays and objects; the schema needs 3, the rest is room for unknown fields. */
#define LH_PLAN_DEPTH_MAX 32
/* Characters of one number token; the writer needs at most 24. */
#define LH_PLAN_NUMBER_MAX 100
/* Bytes of a key or of a string value that is kept (longer ones cannot be a known value). */
#define LH_PLAN_STRING_MAX 64
/* Exponents are clamped while reading: far beyond any double, still inf or 0. */
#define LH_PLAN_EXPONENT_CLAMP 1000000L

/* ---- numbers ---------------------------------------------------------------------------- */

/* value = (negative ? -1 : 1) * digits * 10^exponent; digits without leading zeros, so
 * ndigits == 0 means zero. */
typedef struct {
  int negative;
  int ndigits;
  long exponent;
  char digits[LH_PLAN_NUMBER_MAX + 1];
} lh_json_decimal;

static int lh_json_digit(char c) { return c >= '0' && c <= '9'; }

/* Scans a JSON number at text (at most `length` bytes): -? (0 | [1-9][0-9]*) (. [0-9]+)?
 * ([eE] [+-]? [0-9]+)?. Returns the characters used, 0 if no number starts there; *too_long
 * is set when the token runs past LH_PLAN_NUMBER_MAX characters. */
static size_t lh_json_scan_number(const char *text, size_t length, lh_json_decimal *d, int *too_long) {
  const char *p = text, *end = text + length;
  long fraction_digits = 0, exponent = 0;
  *too_long = 0;
  d->negative = 0;
  d->ndigits = 0;
  if (p < end && *p == '-') {
    d->negative = 1;
    p++;
  }
  if (p == end || !lh_json_digit(*p))
    return 0;
  if (*p == '0') {
    p++;
  } else {
    for (; p < end && lh_json_digit(*p); p++)
      if (d->ndigits < LH_PLAN_NUMBER_MAX)
        d->digits[d->ndigits++] = *p;
  }
  if (p < end && *p == '.') {
    p++;
    if (p == end || !lh_json_digit(*p))
      return 0;
    for (; p < end && lh_json_digit(*p); p++, fraction_digits++)
      if (d->ndigits > 0 || *p != '0') /* leading zeros of 0.00x add nothing */
        if (d->ndigits < LH_PLAN_NUMBER_MAX)
          d->digits[d->ndigits++] = *p;
  }
  if (p < end && (*p == 'e' || *p == 'E')) {
    int negative = 0;
    p++;
    if (p < end && (*p == '+' || *p == '-'))
      negative = *p++ == '-';
    if (p == end || !lh_json_digit(*p))
      return 0;
    for (; p < end && lh_json_digit(*p); p++)
      if (exponent < LH_PLAN_EXPONENT_CLAMP)
        exponent = exponent * 10 + (*p - '0');
    if (negative)
      exponent = -exponent;
  }
  size_t used = (size_t)(p - text);
  if (used > LH_PLAN_NUMBER_MAX) {
    *too_long = 1;
    return used;
  }
  d->exponent = exponent - fraction_digits;
  /* Trailing zeros of the digits move into the exponent: 1500 is 15e2, whole-number tests
   * then only look at the sign of the exponent. */
  while (d->ndigits > 0 && d->digits[d->ndigits - 1] == '0') {
    d->ndigits--;
    d->exponent++;
  }
  if (d->ndigits == 0)
    d->exponent = 0;
  return used;
}

/* The nearest double (strtod rounds correctly); overflow gives +-inf. */
static double lh_json_decimal_to_double(const lh_json_decimal *d) {
  if (d->ndigits == 0)
    return d->negative ? -0.0 : 0.0;
  char text[LH_PLAN_NUMBER_MAX + 32];
  size_t n = 0;
  if (d->negative)
    text[n++] = '-';
  memcpy(text + n, d->digits, (size_t)d->ndigits);
  n += (size_t)d->ndigits;
  snprintf(text + n, sizeof text - n, "e%ld", d->exponent);
  return strtod(text, NULL);
}

/* 0: a whole number from 0 to max, in *value; 1: not a whole number; 2: negative or above max. */
static int lh_json_decimal_to_uint(const lh_json_decimal *d, uint64_t max, uint64_t *value) {
  if (d->ndigits == 0) {
    *value = 0;
    return 0;
  }
  if (d->exponent < 0)
    return 1;
  if (d->negative || d->ndigits + d->exponent > 20)
    return 2;
  uint64_t v = 0;
  for (long i = 0; i < d->ndigits + d->exponent; i++) {
    unsigned digit = i < d->ndigits ? (unsigned)(d->digits[i] - '0') : 0u;
    if (v > (UINT64_MAX - digit) / 10)
      return 2;
    v = v * 10 + digit;
  }
  if (v > max)
    return 2;
  *value = v;
  return 0;
}

/* ---- the lexer --------------------------------------------------------------------------- */

typedef struct {
  const char *source;
  const char *p, *end;
  int line;
  int depth;
} lh_json;

static lh_status lh_json_fail(const lh_json *js, int line, const char *fmt, ...) LH_PRINTF(3, 4);
static lh_status lh_json_fail(const lh_json *js, int line, const char *fmt, ...) {
  char what[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  return lh_error(LH_ERR_PARSE, "%s:%d: %s", js->source, line, what);
}

#define LH_SHOW_CAPACITY LH_QUOTE_CAPACITY

/* What stands at the cursor, for "found ...": the end of the text, a word or number, or one
 * character. */
static const char *lh_json_found(const lh_json *js, char *text, size_t capacity) {
  if (js->p == js->end)
    return "the end of the text";
  size_t n = 0;
  while (js->p + n < js->end && n < 41) {
    char c = js->p[n];
    int word = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || lh_json_digit(c) || c == '-' || c == '+' ||
               c == '.' || c == '_';
    if (!word)
      break;
    n++;
  }
  return lh_quote_text(js->p, n ? n : 1, text, capacity);
}

static void lh_json_space(lh_json *js) {
  while (js->p < js->end) {
    char c = *js->p;
    if (c == '\n')
      js->line++;
    else if (c != ' ' && c != '\t' && c != '\r')
      return;
    js->p++;
  }
}

/* Skips white space, then consumes `c` or fails saying what it was expecting. */
static lh_status lh_json_expect(lh_json *js, char c, const char *expected) {
  char shown[LH_SHOW_CAPACITY];
  lh_json_space(js);
  if (js->p < js->end && *js->p == c) {
    js->p++;
    return LH_SUCCESS;
  }
  return lh_json_fail(js, js->line, "expected %s, found %s", expected, lh_json_found(js, shown, sizeof shown));
}

/* Peeks after white space: the next character or 0 at the end. */
static char lh_json_peek(lh_json *js) {
  lh_json_space(js);
  return js->p < js->end ? *js->p : 0;
}

static int lh_json_hex4(const char *p, const char *end, unsigned *value) {
  unsigned v = 0;
  if (end - p < 4)
    return 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    unsigned digit;
    if (c >= '0' && c <= '9')
      digit = (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f')
      digit = (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F')
      digit = (unsigned)(c - 'A' + 10);
    else
      return 0;
    v = v * 16 + digit;
  }
  *value = v;
  return 1;
}

/* Reads a string (the cursor on its opening quote) with escapes decoded into out (capacity
 * bytes, NUL-terminated; NULL to just skip it). *length gets the decoded length, which may
 * exceed capacity - 1: the kept text is then cut short and cannot equal any known name. */
static lh_status lh_json_string(lh_json *js, const char *what, char *out, size_t capacity, size_t *length) {
  char shown[LH_SHOW_CAPACITY];
  size_t n = 0;
  int line = js->line;
  LH_CHECK(lh_json_expect(js, '"', what));
  for (;;) {
    if (js->p == js->end)
      return lh_json_fail(js, line, "expected the closing '\"' of a string that starts here, found the end of the text");
    unsigned char c = (unsigned char)*js->p;
    char bytes[4];
    size_t count = 1;
    if (c == '"') {
      js->p++;
      break;
    }
    if (c < 0x20)
      return lh_json_fail(js, js->line, "expected a control character inside a string to be escaped, found byte 0x%02x",
                          c);
    if (c != '\\') {
      bytes[0] = (char)c;
      js->p++;
    } else {
      char e = js->p + 1 < js->end ? js->p[1] : 0;
      const char *simple = strchr("\"\\/bfnrt", e);
      if (e && simple) {
        static const char decoded[] = "\"\\/\b\f\n\r\t";
        bytes[0] = decoded[simple - "\"\\/bfnrt"];
        js->p += 2;
      } else if (e == 'u') {
        unsigned u, low;
        if (!lh_json_hex4(js->p + 2, js->end, &u))
          return lh_json_fail(js, js->line, "expected 4 hex digits after \\u, found %s",
                              lh_quote_text(js->p, (size_t)(js->end - js->p < 6 ? js->end - js->p : 6), shown,
                                           sizeof shown));
        js->p += 6;
        if (u >= 0xdc00 && u <= 0xdfff)
          return lh_json_fail(js, js->line, "expected a high surrogate before \\u%04x, found none", u);
        if (u >= 0xd800 && u <= 0xdbff) {
          if (js->end - js->p < 6 || js->p[0] != '\\' || js->p[1] != 'u' || !lh_json_hex4(js->p + 2, js->end, &low) ||
              low < 0xdc00 || low > 0xdfff)
            return lh_json_fail(js, js->line, "expected a low surrogate \\uDC00-\\uDFFF after \\u%04x", u);
          js->p += 6;
          u = 0x10000 + ((u - 0xd800) << 10) + (low - 0xdc00);
        }
        /* UTF-8 */
        if (u < 0x80) {
          bytes[0] = (char)u;
        } else if (u < 0x800) {
          bytes[0] = (char)(0xc0 | (u >> 6));
          bytes[1] = (char)(0x80 | (u & 0x3f));
          count = 2;
        } else if (u < 0x10000) {
          bytes[0] = (char)(0xe0 | (u >> 12));
          bytes[1] = (char)(0x80 | ((u >> 6) & 0x3f));
          bytes[2] = (char)(0x80 | (u & 0x3f));
          count = 3;
        } else {
          bytes[0] = (char)(0xf0 | (u >> 18));
          bytes[1] = (char)(0x80 | ((u >> 12) & 0x3f));
          bytes[2] = (char)(0x80 | ((u >> 6) & 0x3f));
          bytes[3] = (char)(0x80 | (u & 0x3f));
          count = 4;
        }
      } else {
        return lh_json_fail(js, js->line, "expected an escape (\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX), found %s",
                            lh_quote_text(js->p, js->p + 1 < js->end ? 2 : 1, shown, sizeof shown));
      }
    }
    for (size_t i = 0; i < count; i++, n++)
      if (out && n + 1 < capacity)
        out[n] = bytes[i];
  }
  if (out)
    out[n < capacity ? n : capacity - 1] = '\0';
  if (length)
    *length = n;
  return LH_SUCCESS;
}

/* A number token at the cursor, with its text for messages. */
typedef struct {
  lh_json_decimal d;
  const char *text;
  size_t length;
  int line;
} lh_json_number;

static lh_status lh_json_read_number(lh_json *js, const char *what, lh_json_number *num) {
  char shown[LH_SHOW_CAPACITY];
  int too_long;
  lh_json_space(js);
  size_t used = lh_json_scan_number(js->p, (size_t)(js->end - js->p), &num->d, &too_long);
  if (!used)
    return lh_json_fail(js, js->line, "expected %s, found %s", what, lh_json_found(js, shown, sizeof shown));
  if (too_long)
    return lh_json_fail(js, js->line, "expected %s of at most %d characters, found %zu", what, LH_PLAN_NUMBER_MAX,
                        used);
  num->text = js->p;
  num->length = used;
  num->line = js->line;
  js->p += used;
  return LH_SUCCESS;
}

/* A whole number from min to max for the field `what` ("\"pp\"", "\"stage\" of assignment entry 3"). */
static lh_status lh_json_read_uint(lh_json *js, const char *what, uint64_t min, uint64_t max, uint64_t *value) {
  char shown[LH_SHOW_CAPACITY], expected[256];
  snprintf(expected, sizeof expected, "a whole number from %" PRIu64 " to %" PRIu64 " for %s", min, max, what);
  lh_json_number num;
  LH_CHECK(lh_json_read_number(js, expected, &num));
  int bad = lh_json_decimal_to_uint(&num.d, max, value);
  if (bad == 0 && *value < min)
    bad = 2;
  if (bad)
    return lh_json_fail(js, num.line, "expected %s, found %s%s", expected,
                        lh_quote_text(num.text, num.length, shown, sizeof shown),
                        bad == 1 ? " (not a whole number)" : " (out of range)");
  return LH_SUCCESS;
}

static lh_status lh_json_read_int(lh_json *js, const char *what, int min, int max, int *value) {
  uint64_t v;
  LH_CHECK(lh_json_read_uint(js, what, (uint64_t)min, (uint64_t)max, &v));
  *value = (int)v;
  return LH_SUCCESS;
}

/* A literal (true, false, null) at the cursor. */
static int lh_json_literal(lh_json *js, const char *word) {
  size_t n = strlen(word);
  lh_json_space(js);
  if ((size_t)(js->end - js->p) < n || memcmp(js->p, word, n) != 0)
    return 0;
  /* "nullx" is not null followed by junk that the next token check would misreport. */
  if ((size_t)(js->end - js->p) > n) {
    char c = js->p[n];
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || lh_json_digit(c) || c == '_')
      return 0;
  }
  js->p += n;
  return 1;
}

static lh_status lh_json_enter(lh_json *js) {
  if (++js->depth > LH_PLAN_DEPTH_MAX)
    return lh_json_fail(js, js->line, "expected at most %d levels of nested arrays and objects, found more",
                        LH_PLAN_DEPTH_MAX);
  return LH_SUCCESS;
}

/* Any JSON value, checked and dropped: what unknown keys hold. Recursion is bounded by the
 * depth limit. */
static lh_status lh_json_skip(lh_json *js) {
  char shown[LH_SHOW_CAPACITY];
  char c = lh_json_peek(js);
  if (c == '"')
    return lh_json_string(js, "a string", NULL, 0, NULL);
  if (c == '{' || c == '[') {
    char close = c == '{' ? '}' : ']';
    js->p++;
    LH_CHECK(lh_json_enter(js));
    if (lh_json_peek(js) == close) {
      js->p++;
      js->depth--;
      return LH_SUCCESS;
    }
    for (;;) {
      if (c == '{') {
        LH_CHECK(lh_json_string(js, "a key (a string in double quotes)", NULL, 0, NULL));
        LH_CHECK(lh_json_expect(js, ':', "':' after a key"));
      }
      LH_CHECK(lh_json_skip(js));
      char next = lh_json_peek(js);
      if (next == ',') {
        js->p++;
        continue;
      }
      if (next == close) {
        js->p++;
        js->depth--;
        return LH_SUCCESS;
      }
      return lh_json_fail(js, js->line, "expected ',' or '%c', found %s", close, lh_json_found(js, shown, sizeof shown));
    }
  }
  if (lh_json_literal(js, "true") || lh_json_literal(js, "false") || lh_json_literal(js, "null"))
    return LH_SUCCESS;
  lh_json_number num;
  return lh_json_read_number(js, "a value (object, array, string, number, true, false or null)", &num);
}

/* After an element of an array or a member of an object: 1 if another follows (',' eaten),
 * 0 at the closing bracket (eaten, depth restored). */
static lh_status lh_json_next(lh_json *js, char close, int *more) {
  char shown[LH_SHOW_CAPACITY];
  char c = lh_json_peek(js);
  if (c == ',') {
    js->p++;
    *more = 1;
    return LH_SUCCESS;
  }
  if (c == close) {
    js->p++;
    js->depth--;
    *more = 0;
    return LH_SUCCESS;
  }
  return lh_json_fail(js, js->line, "expected ',' or '%c', found %s", close, lh_json_found(js, shown, sizeof shown));
}

/* Opens an array or object: 1 in *more if it has elements, 0 if it was empty (and is closed). */
static lh_status lh_json_open(lh_json *js, char open, const char *expected, int *more) {
  LH_CHECK(lh_json_expect(js, open, expected));
  LH_CHECK(lh_json_enter(js));
  char close = open == '{' ? '}' : ']';
  if (lh_json_peek(js) == close) {
    js->p++;
    js->depth--;
    *more = 0;
  } else {
    *more = 1;
  }
  return LH_SUCCESS;
}

/* ---- the plan schema --------------------------------------------------------------------- */

enum {
  K_FORMAT, K_VERSION, K_DEVICES, K_PP, K_DP, K_OBJECTIVE, K_COST, K_DP_COST, K_PP_COST, K_LOWER_BOUND, K_GAP,
  K_SOLVE_SECONDS, K_SEED, K_RESTARTS, K_BUDGET_HIT, K_STAGES, K_ASSIGNMENT, K_KEYS
};
static const char *const lh_plan_keys[K_KEYS] = {
  "format", "version", "devices", "pp", "dp", "objective", "cost", "dp_cost", "pp_cost", "lower_bound", "gap",
  "solve_seconds", "seed", "restarts", "budget_hit", "stages", "assignment"};
/* The optional floating-point fields, in the order of lh_plan_keys from K_COST. */
#define LH_PLAN_REALS (K_SOLVE_SECONDS - K_COST + 1)

typedef struct {
  int line;
  int device, stage, replica;
} lh_plan_entry;

typedef struct {
  lh_json js;
  int key_line[K_KEYS]; /* line where each key was seen; 0: absent */
  int end_line;         /* line of the plan object's closing brace */
  int version, devices, pp, dp;
  lh_sched_objective objective;
  double real[LH_PLAN_REALS];
  int real_set[LH_PLAN_REALS];
  uint64_t seed;
  int restarts, budget_hit;
  lh_plan_entry *entries;
  int entry_count, entry_capacity;
  /* "stages", flattened: stage_device[i] for i in [stage_start[s], stage_start[s + 1]). */
  int *stage_device, *stage_line;
  int stage_value_count, stage_value_capacity, stage_line_capacity;
  int *stage_start; /* stage_lists + 1 entries */
  int stage_lists, stage_list_capacity;
} lh_plan_parser;

/* array with room for `needed` elements (grown by doubling), or NULL with the detail set;
 * the caller keeps the old array until this succeeds. */
static void *lh_grow(void *array, int *capacity, int needed, size_t element, const char *what) {
  if (needed <= *capacity)
    return array;
  int grown = *capacity ? *capacity * 2 : 64;
  while (grown < needed)
    grown *= 2;
  void *bigger = realloc(array, (size_t)grown * element);
  if (!bigger) {
    lh_error(LH_ERR_OUT_OF_MEMORY, "could not allocate %zu bytes for %s", (size_t)grown * element, what);
    return NULL;
  }
  *capacity = grown;
  return bigger;
}

/* Grows ps->field (an int or entry array) or returns LH_ERR_OUT_OF_MEMORY. */
#define LH_GROW(field, capacity, needed, what)                                             \
  do {                                                                                     \
    void *lh_grown_ = lh_grow((field), &(capacity), (needed), sizeof *(field), (what));    \
    if (!lh_grown_)                                                                        \
      return LH_ERR_OUT_OF_MEMORY;                                                         \
    (field) = lh_grown_;                                                                   \
  } while (0)

static lh_status lh_plan_parse_entry(lh_plan_parser *ps, int index) {
  lh_json *js = &ps->js;
  static const char *const fields[3] = {"device", "stage", "replica"};
  int value[3] = {-1, -1, -1}, line[3] = {0, 0, 0};
  int entry_line, more;
  lh_json_space(js);
  entry_line = js->line;
  char expected[96];
  snprintf(expected, sizeof expected, "'{' to start assignment entry %d", index);
  LH_CHECK(lh_json_open(js, '{', expected, &more));
  while (more) {
    char key[LH_PLAN_STRING_MAX];
    size_t length;
    lh_json_space(js);
    int key_line = js->line;
    LH_CHECK(lh_json_string(js, "a key (a string in double quotes)", key, sizeof key, &length));
    LH_CHECK(lh_json_expect(js, ':', "':' after a key"));
    int k = -1;
    for (int i = 0; i < 3; i++)
      if (length == strlen(fields[i]) && !strcmp(key, fields[i]))
        k = i;
    if (k < 0) {
      LH_CHECK(lh_json_skip(js));
    } else {
      if (line[k])
        return lh_json_fail(js, key_line, "expected one \"%s\" in assignment entry %d, found a second (the first is on "
                            "line %d)", fields[k], index, line[k]);
      char what[96];
      snprintf(what, sizeof what, "\"%s\" of assignment entry %d", fields[k], index);
      LH_CHECK(lh_json_read_int(js, what, 0, LH_LINKS_MAX_DEVICES - 1, &value[k]));
      line[k] = key_line;
    }
    LH_CHECK(lh_json_next(js, '}', &more));
  }
  for (int k = 0; k < 3; k++)
    if (!line[k])
      return lh_json_fail(js, entry_line, "expected \"%s\" in assignment entry %d, found none", fields[k], index);
  if (ps->entry_count >= LH_LINKS_MAX_DEVICES)
    return lh_json_fail(js, entry_line, "expected at most %d assignment entries, found more", LH_LINKS_MAX_DEVICES);
  LH_GROW(ps->entries, ps->entry_capacity, ps->entry_count + 1, "plan assignment entries");
  ps->entries[ps->entry_count++] = (lh_plan_entry){entry_line, value[0], value[1], value[2]};
  return LH_SUCCESS;
}

static lh_status lh_plan_parse_assignment(lh_plan_parser *ps) {
  int more, index = 0;
  LH_CHECK(lh_json_open(&ps->js, '[', "'[' to start the \"assignment\" list", &more));
  while (more) {
    LH_CHECK(lh_plan_parse_entry(ps, index++));
    LH_CHECK(lh_json_next(&ps->js, ']', &more));
  }
  return LH_SUCCESS;
}

static lh_status lh_plan_parse_stages(lh_plan_parser *ps) {
  lh_json *js = &ps->js;
  int more;
  LH_CHECK(lh_json_open(js, '[', "'[' to start the \"stages\" list of lists", &more));
  LH_GROW(ps->stage_start, ps->stage_list_capacity, 1, "plan stages");
  ps->stage_start[0] = 0;
  while (more) {
    int s = ps->stage_lists, inner;
    if (s >= LH_LINKS_MAX_DEVICES)
      return lh_json_fail(js, js->line, "expected at most %d lists in \"stages\", found more", LH_LINKS_MAX_DEVICES);
    char expected[96];
    snprintf(expected, sizeof expected, "'[' to start the device list of stage %d in \"stages\"", s);
    LH_CHECK(lh_json_open(js, '[', expected, &inner));
    while (inner) {
      if (ps->stage_value_count >= LH_LINKS_MAX_DEVICES)
        return lh_json_fail(js, js->line, "expected at most %d devices in \"stages\", found more", LH_LINKS_MAX_DEVICES);
      LH_GROW(ps->stage_device, ps->stage_value_capacity, ps->stage_value_count + 1, "plan stages");
      LH_GROW(ps->stage_line, ps->stage_line_capacity, ps->stage_value_count + 1, "plan stages");
      char what[96];
      snprintf(what, sizeof what, "a device of stage %d in \"stages\"", s);
      lh_json_space(js);
      ps->stage_line[ps->stage_value_count] = js->line;
      LH_CHECK(lh_json_read_int(js, what, 0, LH_LINKS_MAX_DEVICES - 1, &ps->stage_device[ps->stage_value_count]));
      ps->stage_value_count++;
      LH_CHECK(lh_json_next(js, ']', &inner));
    }
    LH_GROW(ps->stage_start, ps->stage_list_capacity, s + 2, "plan stages");
    ps->stage_start[s + 1] = ps->stage_value_count;
    ps->stage_lists++;
    LH_CHECK(lh_json_next(js, ']', &more));
  }
  return LH_SUCCESS;
}

static lh_status lh_plan_parse_value(lh_plan_parser *ps, int k) {
  lh_json *js = &ps->js;
  char text[LH_PLAN_STRING_MAX], shown[LH_SHOW_CAPACITY];
  size_t length;
  switch (k) {
  case K_FORMAT:
    LH_CHECK(lh_json_string(js, "a string for \"format\"", text, sizeof text, &length));
    if (length != strlen(LH_PLAN_FORMAT) || strcmp(text, LH_PLAN_FORMAT) != 0)
      return lh_json_fail(js, js->line, "expected \"format\": \"%s\", found %s: this is not a Longhaul plan",
                          LH_PLAN_FORMAT, lh_quote_text(text, length < sizeof text ? length : sizeof text - 1, shown,
                                                        sizeof shown));
    return LH_SUCCESS;
  case K_VERSION: {
    uint64_t v;
    LH_CHECK(lh_json_read_uint(js, "\"version\"", 0, UINT64_MAX, &v));
    if (v != LH_PLAN_VERSION)
      return lh_json_fail(js, js->line, "expected \"version\": %d, found %" PRIu64 "%s", LH_PLAN_VERSION, v,
                          v > LH_PLAN_VERSION ? ": this reader knows version 1 only" : "");
    ps->version = (int)v;
    return LH_SUCCESS;
  }
  case K_DEVICES:
    return lh_json_read_int(js, "\"devices\"", 1, LH_LINKS_MAX_DEVICES, &ps->devices);
  case K_PP:
    return lh_json_read_int(js, "\"pp\"", 1, LH_LINKS_MAX_DEVICES, &ps->pp);
  case K_DP:
    return lh_json_read_int(js, "\"dp\"", 1, LH_LINKS_MAX_DEVICES, &ps->dp);
  case K_OBJECTIVE: {
    LH_CHECK(lh_json_string(js, "a string for \"objective\"", text, sizeof text, &length));
    /* The length must be the name's: an escaped NUL would otherwise end the comparison early. */
    int known = length < sizeof text && strlen(text) == length &&
                lh_sched_objective_parse(text, &ps->objective) == LH_SUCCESS;
    lh_error_clear();
    if (!known)
      return lh_json_fail(js, js->line, "expected \"objective\" to be \"pipelined\" or \"dtfm\", found %s",
                          lh_quote_text(text, length < sizeof text ? length : sizeof text - 1, shown, sizeof shown));
    return LH_SUCCESS;
  }
  case K_SEED:
    if (lh_json_literal(js, "null"))
      return LH_SUCCESS;
    return lh_json_read_uint(js, "\"seed\"", 0, UINT64_MAX, &ps->seed);
  case K_RESTARTS:
    if (lh_json_literal(js, "null"))
      return LH_SUCCESS;
    return lh_json_read_int(js, "\"restarts\"", 0, INT_MAX, &ps->restarts);
  case K_BUDGET_HIT:
    if (lh_json_literal(js, "true"))
      ps->budget_hit = 1;
    else if (lh_json_literal(js, "false") || lh_json_literal(js, "null"))
      ps->budget_hit = 0;
    else
      return lh_json_read_int(js, "\"budget_hit\" (or true or false)", 0, 1, &ps->budget_hit);
    return LH_SUCCESS;
  case K_STAGES:
    return lh_plan_parse_stages(ps);
  case K_ASSIGNMENT:
    return lh_plan_parse_assignment(ps);
  default: { /* the optional reals; null (a value the writer could not express) leaves 0 */
    int r = k - K_COST;
    if (lh_json_literal(js, "null"))
      return LH_SUCCESS;
    char what[96];
    lh_json_number num;
    snprintf(what, sizeof what, "a number (or null) for \"%s\"", lh_plan_keys[k]);
    LH_CHECK(lh_json_read_number(js, what, &num));
    double value = lh_json_decimal_to_double(&num.d);
    if (!isfinite(value))
      return lh_json_fail(js, num.line, "expected %s, found %s, beyond the range of a double", what,
                          lh_quote_text(num.text, num.length, shown, sizeof shown));
    ps->real[r] = value;
    ps->real_set[r] = 1;
    return LH_SUCCESS;
  }
  }
}

static lh_status lh_plan_parse_object(lh_plan_parser *ps) {
  lh_json *js = &ps->js;
  char shown[LH_SHOW_CAPACITY];
  int more;
  LH_CHECK(lh_json_open(js, '{', "'{' to start the plan object", &more));
  while (more) {
    char key[LH_PLAN_STRING_MAX];
    size_t length;
    lh_json_space(js);
    int key_line = js->line;
    LH_CHECK(lh_json_string(js, "a key (a string in double quotes)", key, sizeof key, &length));
    LH_CHECK(lh_json_expect(js, ':', "':' after a key"));
    int k = -1;
    for (int i = 0; i < K_KEYS && length < sizeof key; i++)
      if (length == strlen(lh_plan_keys[i]) && !strcmp(key, lh_plan_keys[i]))
        k = i;
    if (k < 0) {
      LH_CHECK(lh_json_skip(js)); /* a newer writer's field */
    } else {
      if (ps->key_line[k])
        return lh_json_fail(js, key_line, "expected one \"%s\", found a second (the first is on line %d)",
                            lh_plan_keys[k], ps->key_line[k]);
      ps->key_line[k] = key_line;
      LH_CHECK(lh_plan_parse_value(ps, k));
    }
    LH_CHECK(lh_json_next(js, '}', &more));
  }
  ps->end_line = js->line;
  if (lh_json_peek(js) != 0)
    return lh_json_fail(js, js->line, "expected the end of the text after the plan object, found %s",
                        lh_json_found(js, shown, sizeof shown));
  return LH_SUCCESS;
}

/* Everything that needs more than one field: presence, sizes, the bijection, "stages". */
static lh_status lh_plan_parse_check(lh_plan_parser *ps, int *grid) {
  lh_json *js = &ps->js;
  static const int required[] = {K_FORMAT, K_VERSION, K_DEVICES, K_PP, K_DP, K_ASSIGNMENT};
  for (size_t i = 0; i < sizeof required / sizeof required[0]; i++)
    if (!ps->key_line[required[i]])
      return lh_json_fail(js, ps->end_line, "expected a \"%s\" key in the plan object (which ends here), found none",
                          lh_plan_keys[required[i]]);
  int n = ps->devices;
  if ((long long)ps->pp * ps->dp != n)
    return lh_json_fail(js, ps->key_line[K_DEVICES], "expected \"devices\" to equal pp x dp = %d x %d = %lld, found %d",
                        ps->pp, ps->dp, (long long)ps->pp * ps->dp, n);
  /* grid[cell] = entry index, and entry_of_device reuses the upper half. */
  int *entry_of_device = grid + n;
  for (int i = 0; i < 2 * n; i++)
    grid[i] = -1;
  for (int i = 0; i < ps->entry_count; i++) {
    const lh_plan_entry *e = &ps->entries[i];
    if (e->device >= n)
      return lh_json_fail(js, e->line, "expected \"device\" of assignment entry %d to be below %d (devices), found %d",
                          i, n, e->device);
    if (e->stage >= ps->pp)
      return lh_json_fail(js, e->line, "expected \"stage\" of assignment entry %d to be below %d (pp), found %d", i,
                          ps->pp, e->stage);
    if (e->replica >= ps->dp)
      return lh_json_fail(js, e->line, "expected \"replica\" of assignment entry %d to be below %d (dp), found %d", i,
                          ps->dp, e->replica);
    if (entry_of_device[e->device] >= 0)
      return lh_json_fail(js, e->line, "expected device %d once in \"assignment\", found it again (first on line %d)",
                          e->device, ps->entries[entry_of_device[e->device]].line);
    int cell = e->stage * ps->dp + e->replica;
    if (grid[cell] >= 0) {
      const lh_plan_entry *first = &ps->entries[grid[cell]];
      return lh_json_fail(js, e->line,
                          "expected stage %d, replica %d once in \"assignment\", found it held by device %d (line %d) "
                          "and device %d",
                          e->stage, e->replica, first->device, first->line, e->device);
    }
    entry_of_device[e->device] = i;
    grid[cell] = i;
  }
  if (ps->entry_count != n) {
    int missing = 0;
    while (missing < n && entry_of_device[missing] >= 0)
      missing++;
    return lh_json_fail(js, ps->key_line[K_ASSIGNMENT],
                        "expected %d entries in \"assignment\" (one per device), found %d: device %d has none", n,
                        ps->entry_count, missing);
  }
  for (int cell = 0; cell < n; cell++)
    grid[cell] = ps->entries[grid[cell]].device;
  if (ps->key_line[K_STAGES]) {
    if (ps->stage_lists != ps->pp)
      return lh_json_fail(js, ps->key_line[K_STAGES], "expected %d lists in \"stages\" (pp), found %d", ps->pp,
                          ps->stage_lists);
    for (int s = 0; s < ps->pp; s++) {
      int start = ps->stage_start[s], count = ps->stage_start[s + 1] - start;
      if (count != ps->dp)
        return lh_json_fail(js, ps->key_line[K_STAGES], "expected %d devices (dp) in stage %d of \"stages\", found %d",
                            ps->dp, s, count);
      for (int r = 0; r < ps->dp; r++)
        if (ps->stage_device[start + r] != grid[s * ps->dp + r])
          return lh_json_fail(js, ps->stage_line[start + r],
                              "expected \"stages\" to agree with \"assignment\": stage %d, replica %d is device %d "
                              "there, device %d here",
                              s, r, grid[s * ps->dp + r], ps->stage_device[start + r]);
    }
  }
  return LH_SUCCESS;
}

lh_status lh_plan_parse(const char *text, size_t length, const char *source_name, lh_plan **plan) {
  lh_error_clear();
  if (!plan)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_plan_parse: plan must not be NULL");
  *plan = NULL;
  if (!text && length)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_plan_parse: text is NULL but length is %zu", length);
  lh_plan_parser ps;
  memset(&ps, 0, sizeof ps);
  ps.js.source = source_name ? source_name : "<text>";
  ps.js.p = text;
  ps.js.end = text ? text + length : text;
  ps.js.line = 1;
  ps.objective = LH_SCHED_PIPELINED;
  if (length > LH_PLAN_TEXT_MAX)
    return lh_json_fail(&ps.js, 1, "expected a plan of at most %zu bytes, found %zu bytes", LH_PLAN_TEXT_MAX, length);
  int *grid = NULL;
  lh_plan *p = NULL;
  lh_status st = lh_plan_parse_object(&ps);
  if (st == LH_SUCCESS) {
    grid = lh_malloc(2 * (size_t)ps.devices * sizeof *grid, "a plan's grid while reading");
    st = grid ? lh_plan_parse_check(&ps, grid) : LH_ERR_OUT_OF_MEMORY;
  }
  if (st == LH_SUCCESS)
    st = lh_plan_alloc(ps.devices, ps.pp, ps.dp, &p);
  if (st == LH_SUCCESS) {
    memcpy(p->device_at, grid, (size_t)ps.devices * sizeof *grid);
    st = lh_plan_index_from_grid(p, ps.js.source);
  }
  if (st == LH_SUCCESS) {
    lh_plan_info *info = &p->info;
    info->objective = ps.objective;
    double *reals[LH_PLAN_REALS] = {&info->cost, &info->dp_cost, &info->pp_cost, &info->lower_bound, &info->gap,
                                    &info->solve_seconds};
    for (int r = 0; r < LH_PLAN_REALS; r++)
      if (ps.real_set[r])
        *reals[r] = ps.real[r];
    info->seed = ps.seed;
    info->restarts = ps.restarts;
    info->budget_hit = ps.budget_hit;
    *plan = p;
    p = NULL;
  }
  lh_plan_free(p);
  free(grid);
  free(ps.entries);
  free(ps.stage_device);
  free(ps.stage_line);
  free(ps.stage_start);
  return st;
}

lh_status lh_plan_read_file(const char *path, lh_plan **plan) {
  lh_error_clear();
  if (!plan)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_plan_read_file: plan must not be NULL");
  *plan = NULL;
  if (!path)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_plan_read_file: path must not be NULL");
  char *text;
  size_t length;
  LH_CHECK(lh_read_text_file(path, "lh_plan_read_file", LH_PLAN_TEXT_MAX, &text, &length));
  lh_status st = lh_plan_parse(text, length, path, plan);
  free(text);
  return st;
}

/* ---- writer ------------------------------------------------------------------------------ */

/* A double as JSON text that reads back to the same bits: the shortest of 15, 16 or 17
 * significant digits (17 always suffices), the locale's decimal point replaced by '.'.
 * JSON has no inf or nan: those are written as null (the reader then leaves the field 0). */
static void lh_json_format_double(double value, char *text, size_t capacity) {
  if (!isfinite(value)) {
    snprintf(text, capacity, "null");
    return;
  }
  for (int digits = 15; digits <= 17; digits++) {
    char raw[64];
    size_t n = 0;
    int in_point = 0;
    snprintf(raw, sizeof raw, "%.*g", digits, value);
    for (const char *c = raw; *c && n + 1 < capacity; c++) {
      if (lh_json_digit(*c) || *c == '-' || *c == '+' || *c == 'e') {
        text[n++] = *c;
        in_point = 0;
      } else if (!in_point) { /* the decimal point, however many bytes the locale makes it */
        text[n++] = '.';
        in_point = 1;
      }
    }
    text[n] = '\0';
    lh_json_decimal d;
    int too_long;
    size_t used = lh_json_scan_number(text, n, &d, &too_long);
    if (used == n && !too_long && lh_json_decimal_to_double(&d) == value &&
        signbit(lh_json_decimal_to_double(&d)) == signbit(value))
      return;
  }
}

lh_status lh_plan_write_stream(const lh_plan *plan, FILE *stream) {
  lh_error_clear();
  if (!plan || !stream)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_plan_write_stream: %s must not be NULL", !plan ? "plan" : "stream");
  const lh_plan_info *info = &plan->info;
  const char *objective;
  LH_CHECK(lh_sched_objective_name(info->objective, &objective));
  const double reals[LH_PLAN_REALS] = {info->cost, info->dp_cost, info->pp_cost, info->lower_bound, info->gap,
                                       info->solve_seconds};
  fprintf(stream, "{\n  \"format\": \"%s\",\n  \"version\": %d,\n", LH_PLAN_FORMAT, LH_PLAN_VERSION);
  fprintf(stream, "  \"devices\": %d,\n  \"pp\": %d,\n  \"dp\": %d,\n  \"objective\": \"%s\",\n", plan->devices,
          plan->pp, plan->dp, objective);
  for (int r = 0; r < LH_PLAN_REALS; r++) {
    char number[64];
    lh_json_format_double(reals[r], number, sizeof number);
    fprintf(stream, "  \"%s\": %s,\n", lh_plan_keys[K_COST + r], number);
  }
  fprintf(stream, "  \"seed\": %" PRIu64 ",\n  \"restarts\": %d,\n  \"budget_hit\": %s,\n", info->seed,
          info->restarts, info->budget_hit ? "true" : "false");
  /* Informational: the devices of each stage in replica order, what a person wants to see. */
  fprintf(stream, "  \"stages\": [\n");
  for (int s = 0; s < plan->pp; s++) {
    fprintf(stream, "    [");
    for (int r = 0; r < plan->dp; r++)
      fprintf(stream, "%s%d", r ? ", " : "", plan->device_at[s * plan->dp + r]);
    fprintf(stream, "]%s\n", s + 1 < plan->pp ? "," : "");
  }
  fprintf(stream, "  ],\n  \"assignment\": [\n");
  for (int d = 0; d < plan->devices; d++)
    fprintf(stream, "    {\"device\": %d, \"stage\": %d, \"replica\": %d}%s\n", d, plan->stage[d], plan->replica[d],
            d + 1 < plan->devices ? "," : "");
  fprintf(stream, "  ]\n}\n");
  /* fprintf errors are sticky in the stream: one check after flushing covers them all. */
  if (fflush(stream) != 0 || ferror(stream))
    return lh_error(LH_ERR_IO, "lh_plan_write_stream: writing failed: %s", strerror(errno));
  return LH_SUCCESS;
}

/* lh_write_text_file's writer. */
static lh_status lh_plan_write_stream_object(const void *object, FILE *stream) {
  return lh_plan_write_stream(object, stream);
}

lh_status lh_plan_write_file(const lh_plan *plan, const char *path) {
  lh_error_clear();
  if (!plan || !path)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_plan_write_file: %s must not be NULL", !plan ? "plan" : "path");
  return lh_write_text_file(path, "lh_plan_write_file", lh_plan_write_stream_object, plan);
}
