/* The link file (see examples/links/README.md): a strict reader that says where and why a
 * file is wrong, and a writer whose output reads back to exactly the same doubles.
 *
 * Exactness: the file is in ms and Gbit/s, the API in s and bytes/s. Multiplying by 1e-3 or
 * 1.25e8 would round twice and break the round trip, so the reader moves the decimal point
 * in the text instead (12.5 ms is read as the decimal 12.5e-3 s, correctly rounded once by
 * strtod) and bandwidth is read as bits/s and divided by 8, which is exact in binary. The
 * writer does the inverse: the shortest digits that reproduce the SI value (or 8x it) with
 * the exponent moved back.
 *
 * Numbers never go through a locale-dependent decimal point: the reader hands strtod plain
 * digits and an exponent, and the writer takes only the digits of printf's %e output. */
#include <errno.h>
#include <float.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/internal.h"
#include "netmodel/links_internal.h"
#include <longhaul/links.h>

#define LH_LINKS_MAGIC "# longhaul links v1"
/* Longest number token accepted; the writer never needs more than 25. The bound keeps
 * decimal conversion in fixed buffers. */
#define LH_NUMBER_MAX_CHARS 100
/* The exponent is clamped here while reading: far beyond any double, so still inf or 0. */
#define LH_EXPONENT_CLAMP 1000000L
/* Room for any number the writer formats (at most 17 digits, a point, zeros, an exponent). */
#define LH_NUMBER_TEXT 64

/* ---- decimal numbers ------------------------------------------------------------------ */

/* value = (negative ? -1 : 1) * digits * 10^exponent, digits an integer without leading
 * zeros; ndigits == 0 means zero. */
typedef struct {
  int negative;
  int ndigits;
  long exponent;
  char digits[LH_NUMBER_MAX_CHARS + 1];
} lh_decimal;

static int lh_is_digit(char c) { return c >= '0' && c <= '9'; }

static void lh_decimal_push_digit(lh_decimal *d, char c) {
  if (d->ndigits == 0 && c == '0')
    return; /* a leading zero adds nothing */
  d->digits[d->ndigits++] = c;
}

/* Accepts [+-] digits [. digits] [e|E [+-] digits] (either side of the point may be empty,
 * not both) and nothing else: no inf, nan, hex, units or other trailing text. */
static int lh_decimal_parse(const char *text, size_t length, lh_decimal *d) {
  const char *p = text, *end = text + length;
  int mantissa_digits = 0;
  long fraction_digits = 0, exponent = 0;
  if (length > LH_NUMBER_MAX_CHARS)
    return 0;
  d->negative = 0;
  d->ndigits = 0;
  if (p < end && (*p == '+' || *p == '-'))
    d->negative = *p++ == '-';
  for (; p < end && lh_is_digit(*p); p++, mantissa_digits++)
    lh_decimal_push_digit(d, *p);
  if (p < end && *p == '.')
    for (p++; p < end && lh_is_digit(*p); p++, mantissa_digits++, fraction_digits++)
      lh_decimal_push_digit(d, *p);
  if (mantissa_digits == 0)
    return 0;
  if (p < end && (*p == 'e' || *p == 'E')) {
    int exponent_negative = 0;
    p++;
    if (p < end && (*p == '+' || *p == '-'))
      exponent_negative = *p++ == '-';
    if (p == end || !lh_is_digit(*p))
      return 0;
    for (; p < end && lh_is_digit(*p); p++)
      if (exponent < LH_EXPONENT_CLAMP)
        exponent = exponent * 10 + (*p - '0');
    if (exponent_negative)
      exponent = -exponent;
  }
  if (p != end)
    return 0;
  d->exponent = exponent - fraction_digits;
  return 1;
}

/* The double nearest to d * 10^shift, rounded once. Overflow gives +-inf. */
static double lh_decimal_to_double(const lh_decimal *d, int shift) {
  static const double exact_powers[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                        1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
  long exponent = d->exponent + shift;
  if (d->ndigits == 0)
    return d->negative ? -0.0 : 0.0;
#if FLT_EVAL_METHOD == 0
  /* Clinger's fast path: up to 15 digits and 10^22 are exact doubles, so one multiplication
   * or division is the correctly rounded result. Most numbers in link files take it. */
  if (d->ndigits <= 15 && exponent >= -22 && exponent <= 22) {
    double mantissa = 0;
    for (int i = 0; i < d->ndigits; i++)
      mantissa = mantissa * 10 + (d->digits[i] - '0');
    double value = exponent >= 0 ? mantissa * exact_powers[exponent] : mantissa / exact_powers[-exponent];
    return d->negative ? -value : value;
  }
#endif
  /* "[-]DIGITSe[-]EXP": no decimal point, so the locale cannot change the meaning. */
  char text[LH_NUMBER_MAX_CHARS + 32];
  size_t n = 0;
  if (d->negative)
    text[n++] = '-';
  memcpy(text + n, d->digits, (size_t)d->ndigits);
  n += (size_t)d->ndigits;
  snprintf(text + n, sizeof text - n, "e%ld", exponent);
  return strtod(text, NULL);
}

/* Digits and exponent of printf's "%.Ne" text, whatever character the locale uses as the
 * decimal point. */
static void lh_decimal_from_printf(const char *text, lh_decimal *d) {
  const char *p = text;
  int digits_seen = 0;
  d->negative = *p == '-';
  d->ndigits = 0;
  for (; *p && *p != 'e'; p++)
    if (lh_is_digit(*p)) {
      lh_decimal_push_digit(d, *p);
      digits_seen++;
    }
  d->exponent = (*p == 'e' ? strtol(p + 1, NULL, 10) : 0) - (digits_seen - 1);
  /* Leading zeros were dropped; drop the trailing ones too (shortest form). */
  while (d->ndigits > 0 && d->digits[d->ndigits - 1] == '0') {
    d->ndigits--;
    d->exponent++;
  }
  if (d->ndigits == 0)
    d->exponent = 0;
}

/* The shortest of 15, 16 or 17 significant digits that reads back to exactly `value`
 * (17 always does for a finite double). */
static void lh_decimal_from_double(double value, lh_decimal *d) {
  char text[LH_NUMBER_TEXT];
  for (int digits = 15; digits <= 17; digits++) {
    snprintf(text, sizeof text, "%.*e", digits - 1, value);
    lh_decimal_from_printf(text, d);
    if (lh_decimal_to_double(d, 0) == value)
      return;
  }
}

/* d * 10^shift as people write it: plain decimals for moderate magnitudes (0.523, 96,
 * 0.00001), exponent notation otherwise (1e-09, 2.5e+20), like %g with up to 17 digits. */
static void lh_decimal_format(const lh_decimal *d, int shift, char *text, size_t capacity) {
  static const char zeros[] = "0000000000000000000000";
  const char *sign = d->negative ? "-" : "";
  int n = d->ndigits;
  long exponent = d->exponent + shift;
  long point = n + exponent; /* digits before the decimal point in plain notation */
  long scientific = point - 1;
  if (n == 0)
    snprintf(text, capacity, "%s0", sign);
  else if (scientific < -5 || scientific >= 17)
    snprintf(text, capacity, "%s%c%s%.*se%c%02ld", sign, d->digits[0], n > 1 ? "." : "", n - 1, d->digits + 1,
             scientific < 0 ? '-' : '+', labs(scientific));
  else if (exponent >= 0) /* an integer: at most 16 trailing zeros here */
    snprintf(text, capacity, "%s%.*s%.*s", sign, n, d->digits, (int)exponent, zeros);
  else if (point > 0)
    snprintf(text, capacity, "%s%.*s.%.*s", sign, (int)point, d->digits, (int)(n - point), d->digits + point);
  else /* at most 5 zeros after the point */
    snprintf(text, capacity, "%s0.%.*s%.*s", sign, (int)-point, zeros, n, d->digits);
}

/* ---- the quantities a file stores --------------------------------------------------------- */

/* A value in the file is (text * 10^decimal_shift) / divisor in SI units. */
typedef struct {
  const char *keyword;
  const char *noun; /* for messages */
  const char *unit;
  int decimal_shift;
  double divisor;
  int single_row;           /* one row of N per-device values instead of an N x N matrix */
  int optional;             /* a file may leave the section out */
  int (*valid)(double si);  /* rule for off-diagonal values */
  const char *rule;         /* the rule in words, for messages */
} lh_quantity;

enum { LH_LATENCY, LH_BANDWIDTH, LH_UPLINK, LH_QUANTITIES };

static const lh_quantity lh_quantities[LH_QUANTITIES] = {
  [LH_LATENCY] = {.keyword = "latency_ms", .noun = "latency", .unit = "ms", .decimal_shift = -3, .divisor = 1.0,
                  .valid = lh_links_latency_ok, .rule = "finite and >= 0"},
  /* Gbit/s -> bit/s is a decimal shift; bit/s -> bytes/s is /8, exact in binary. */
  [LH_BANDWIDTH] = {.keyword = "bandwidth_gbps", .noun = "bandwidth", .unit = "Gbit/s", .decimal_shift = 9,
                    .divisor = 8.0, .valid = lh_links_bandwidth_ok, .rule = "finite and > 0"},
  [LH_UPLINK] = {.keyword = "uplink_gbps", .noun = "uplink cap", .unit = "Gbit/s", .decimal_shift = 9, .divisor = 8.0,
                 .single_row = 1, .optional = 1, .valid = lh_links_uplink_ok, .rule = "0 (no cap) or finite and > 0"},
};

static double lh_quantity_to_si(const lh_quantity *q, const lh_decimal *d) {
  return lh_decimal_to_double(d, q->decimal_shift) / q->divisor;
}

static void lh_quantity_format(const lh_quantity *q, double si, char *text, size_t capacity) {
  lh_decimal d;
  lh_decimal_from_double(si * q->divisor, &d);
  lh_decimal_format(&d, -q->decimal_shift, text, capacity);
}

/* ---- reader ------------------------------------------------------------------------------- */

typedef struct {
  const char *begin;
  size_t length;
} lh_token;

/* One keyword section as read so far. */
typedef struct {
  int first_line; /* line of its keyword; 0 while not seen */
  int rows;       /* complete rows read */
  double *values; /* rows x devices, SI units; the diagonal holds 0 */
  size_t capacity;
} lh_section;

typedef struct {
  int line; /* 0 while not given */
  double speed;
  char site[LH_LINKS_SITE_MAX + 1];
} lh_device_line;

typedef struct {
  const char *source;
  int line;
  int devices; /* 0 until the devices line */
  int devices_line;
  lh_section sections[LH_QUANTITIES];
  int open;     /* index of the section whose rows are being read, or -1 */
  int closed;   /* index of the section completed by the previous data line, or -1 */
  int skipping; /* inside an unknown section, up to the next known keyword */
  lh_device_line *device_lines; /* devices entries, allocated at the first device line */
} lh_parser;

static int lh_is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

static int lh_next_token(const char **cursor, const char *end, lh_token *token) {
  const char *p = *cursor;
  while (p < end && lh_is_space(*p))
    p++;
  if (p == end)
    return 0;
  token->begin = p;
  while (p < end && !lh_is_space(*p))
    p++;
  token->length = (size_t)(p - token->begin);
  *cursor = p;
  return 1;
}

static size_t lh_count_tokens(const char *begin, const char *end) {
  size_t n = 0;
  lh_token t = {NULL, 0};
  while (lh_next_token(&begin, end, &t))
    n++;
  return n;
}

static int lh_token_is(const lh_token *t, const char *word) {
  return t->length == strlen(word) && !memcmp(t->begin, word, t->length);
}

/* A letter or '_' then letters, digits and '_': what a (possibly future) keyword looks like. */
static int lh_token_is_identifier(const lh_token *t) {
  for (size_t i = 0; i < t->length; i++) {
    char c = t->begin[i];
    int letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!letter && !(i > 0 && lh_is_digit(c)))
      return 0;
  }
  return 1;
}

#define LH_SHOW_CAPACITY LH_QUOTE_CAPACITY
#define LH_SHOW(tok, buf) lh_quote_text((tok).begin, (tok).length, (buf), sizeof (buf))

static lh_status lh_parse_fail(const lh_parser *ps, const char *fmt, ...) LH_PRINTF(2, 3);
static lh_status lh_parse_fail(const lh_parser *ps, const char *fmt, ...) {
  char what[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  return lh_error(LH_ERR_PARSE, "%s:%d: %s", ps->source, ps->line, what);
}

static const char *const lh_keyword_list = "devices, device, latency_ms, bandwidth_gbps, uplink_gbps";

/* A whole number from min to max, digits only. */
static int lh_token_to_int(const lh_token *t, long min, long max, int *value) {
  long v = 0;
  if (t->length == 0 || t->length > 9)
    return 0;
  for (size_t i = 0; i < t->length; i++) {
    if (!lh_is_digit(t->begin[i]))
      return 0;
    v = v * 10 + (t->begin[i] - '0');
  }
  if (v < min || v > max)
    return 0;
  *value = (int)v;
  return 1;
}

static lh_status lh_parse_magic(lh_parser *ps, const char *line, size_t length) {
  char shown[LH_SHOW_CAPACITY];
  size_t trimmed = length;
  while (trimmed > 0 && lh_is_space(line[trimmed - 1]))
    trimmed--;
  if (trimmed == strlen(LH_LINKS_MAGIC) && !memcmp(line, LH_LINKS_MAGIC, trimmed))
    return LH_SUCCESS;
  /* "# longhaul links v2": a newer writer, worth saying so rather than just "wrong". */
  size_t prefix = strlen(LH_LINKS_MAGIC) - 1;
  if (trimmed > prefix && !memcmp(line, LH_LINKS_MAGIC, prefix) && line[prefix] != '1')
    return lh_parse_fail(ps, "expected '%s' as the first line, found %s: this reader knows version 1 only",
                         LH_LINKS_MAGIC, lh_quote_text(line, trimmed, shown, sizeof shown));
  return lh_parse_fail(ps, "expected '%s' as the first line, found %s", LH_LINKS_MAGIC,
                       trimmed ? lh_quote_text(line, trimmed, shown, sizeof shown) : "an empty line");
}

static lh_status lh_parse_devices(lh_parser *ps, const char *cursor, const char *end) {
  char shown[LH_SHOW_CAPACITY];
  lh_token t = {NULL, 0};
  if (ps->devices)
    return lh_parse_fail(ps, "expected one 'devices' line, found a second one (the first is on line %d)",
                         ps->devices_line);
  size_t fields = lh_count_tokens(cursor, end);
  if (fields != 1)
    return lh_parse_fail(ps, "expected 'devices N' with one number after 'devices', found %zu fields", fields);
  lh_next_token(&cursor, end, &t);
  if (!lh_token_to_int(&t, 1, LH_LINKS_MAX_DEVICES, &ps->devices))
    return lh_parse_fail(ps, "expected a whole number of devices from 1 to %d, found %s", LH_LINKS_MAX_DEVICES,
                         LH_SHOW(t, shown));
  ps->devices_line = ps->line;
  return LH_SUCCESS;
}

/* device INDEX site NAME speed X */
static lh_status lh_parse_device(lh_parser *ps, const char *cursor, const char *end) {
  char shown[LH_SHOW_CAPACITY];
  lh_token index = {NULL, 0}, site_key = {NULL, 0}, site = {NULL, 0}, speed_key = {NULL, 0}, speed = {NULL, 0};
  size_t fields = lh_count_tokens(cursor, end);
  if (fields != 5)
    return lh_parse_fail(ps, "expected 'device INDEX site NAME speed X', found %zu fields after 'device' "
                             "instead of 5", fields);
  lh_next_token(&cursor, end, &index);
  lh_next_token(&cursor, end, &site_key);
  lh_next_token(&cursor, end, &site);
  lh_next_token(&cursor, end, &speed_key);
  lh_next_token(&cursor, end, &speed);
  int device;
  if (!lh_token_to_int(&index, 0, ps->devices - 1, &device))
    return lh_parse_fail(ps, "expected a device index from 0 to %d, found %s", ps->devices - 1,
                         LH_SHOW(index, shown));
  if (!lh_token_is(&site_key, "site"))
    return lh_parse_fail(ps, "expected 'site' after the device index, found %s", LH_SHOW(site_key, shown));
  if (!lh_token_is(&speed_key, "speed"))
    return lh_parse_fail(ps, "expected 'speed' after the site name, found %s", LH_SHOW(speed_key, shown));
  const char *problem = lh_links_site_problem(site.begin, site.length);
  if (problem)
    return lh_parse_fail(ps, "expected a site name for device %d, found %s, which %s", device,
                         LH_SHOW(site, shown), problem);
  lh_decimal d;
  double value = lh_decimal_parse(speed.begin, speed.length, &d) ? lh_decimal_to_double(&d, 0) : 0.0;
  if (!lh_links_speed_ok(value))
    return lh_parse_fail(ps, "expected a finite speed > 0 for device %d, found %s", device, LH_SHOW(speed, shown));
  if (!ps->device_lines) {
    ps->device_lines = lh_calloc((size_t)ps->devices, sizeof *ps->device_lines, "device lines");
    if (!ps->device_lines)
      return LH_ERR_OUT_OF_MEMORY;
  }
  lh_device_line *entry = &ps->device_lines[device];
  if (entry->line)
    return lh_parse_fail(ps, "expected one 'device %d' line, found a second one (the first is on line %d)", device,
                         entry->line);
  entry->line = ps->line;
  entry->speed = value;
  memcpy(entry->site, site.begin, site.length);
  entry->site[site.length] = '\0';
  return LH_SUCCESS;
}

static int lh_section_rows_expected(const lh_parser *ps, int which) {
  return lh_quantities[which].single_row ? 1 : ps->devices;
}

static lh_status lh_open_section(lh_parser *ps, int which, const char *cursor, const char *end) {
  char shown[LH_SHOW_CAPACITY];
  const lh_quantity *q = &lh_quantities[which];
  lh_section *s = &ps->sections[which];
  lh_token extra;
  if (lh_next_token(&cursor, end, &extra))
    return lh_parse_fail(ps, "expected nothing after '%s' (its rows start on the next line), found %s", q->keyword,
                         LH_SHOW(extra, shown));
  if (s->first_line)
    return lh_parse_fail(ps, "expected one %s section, found a second one (the first starts on line %d)",
                         q->keyword, s->first_line);
  s->first_line = ps->line;
  ps->open = which;
  return LH_SUCCESS;
}

static lh_status lh_section_reserve_row(lh_parser *ps, lh_section *s) {
  size_t need = (size_t)(s->rows + 1) * (size_t)ps->devices;
  if (need <= s->capacity)
    return LH_SUCCESS;
  /* Grow with the rows actually present, so a huge 'devices' line costs nothing until
   * the text backs it up. */
  size_t capacity = s->capacity ? s->capacity * 2 : (size_t)ps->devices;
  if (capacity < need)
    capacity = need;
  double *values = realloc(s->values, capacity * sizeof *values);
  if (!values)
    return lh_error(LH_ERR_OUT_OF_MEMORY, "could not allocate %zu bytes for link-file rows",
                    capacity * sizeof *values);
  s->values = values;
  s->capacity = capacity;
  return LH_SUCCESS;
}

/* One row of numbers of the open section. */
static lh_status lh_parse_row(lh_parser *ps, const char *cursor, const char *end) {
  char shown[LH_SHOW_CAPACITY];
  const lh_quantity *q = &lh_quantities[ps->open];
  lh_section *s = &ps->sections[ps->open];
  int row = s->rows;
  size_t found = lh_count_tokens(cursor, end);
  if (found != (size_t)ps->devices)
    return lh_parse_fail(ps, "expected %d numbers in row %d of %s, found %zu", ps->devices, row, q->keyword, found);
  LH_CHECK(lh_section_reserve_row(ps, s));
  double *out = s->values + (size_t)row * (size_t)ps->devices;
  lh_token t = {NULL, 0};
  for (int column = 0; lh_next_token(&cursor, end, &t); column++) {
    lh_decimal d;
    if (!lh_decimal_parse(t.begin, t.length, &d))
      return lh_parse_fail(ps, "expected a number in row %d, column %d of %s, found %s", row, column, q->keyword,
                           LH_SHOW(t, shown));
    int diagonal = !q->single_row && column == row;
    double value = diagonal ? 0.0 : lh_quantity_to_si(q, &d); /* the diagonal is ignored */
    if (!diagonal && !q->valid(value)) {
      if (q->single_row)
        return lh_parse_fail(ps, "expected the %s of device %d to be %s %s, found %s", q->noun, column, q->rule,
                             q->unit, LH_SHOW(t, shown));
      return lh_parse_fail(ps, "expected the %s from device %d to device %d to be %s %s, found %s", q->noun, row,
                           column, q->rule, q->unit, LH_SHOW(t, shown));
    }
    out[column] = value;
  }
  s->rows++;
  if (s->rows == lh_section_rows_expected(ps, ps->open)) {
    ps->closed = ps->open;
    ps->open = -1;
  }
  return LH_SUCCESS;
}

static lh_status lh_require_devices(const lh_parser *ps, const lh_token *keyword) {
  char shown[LH_SHOW_CAPACITY];
  if (!ps->devices)
    return lh_parse_fail(ps, "expected a 'devices N' line before %s", LH_SHOW(*keyword, shown));
  return LH_SUCCESS;
}

static lh_status lh_fail_incomplete(const lh_parser *ps, const char *found) {
  const lh_section *s = &ps->sections[ps->open];
  return lh_parse_fail(ps, "expected %d rows in %s (started on line %d), found %d before %s",
                       lh_section_rows_expected(ps, ps->open), lh_quantities[ps->open].keyword, s->first_line,
                       s->rows, found);
}

static lh_status lh_parse_line(lh_parser *ps, const char *begin, const char *end) {
  char shown[LH_SHOW_CAPACITY];
  const char *comment = memchr(begin, '#', (size_t)(end - begin));
  if (comment)
    end = comment;
  const char *cursor = begin;
  lh_token first;
  if (!lh_next_token(&cursor, end, &first))
    return LH_SUCCESS;

  int section = -1;
  for (int i = 0; i < LH_QUANTITIES; i++)
    if (lh_token_is(&first, lh_quantities[i].keyword))
      section = i;
  int known = section >= 0 || lh_token_is(&first, "devices") || lh_token_is(&first, "device");
  if (known) {
    ps->skipping = 0;
    ps->closed = -1;
    if (ps->open >= 0)
      return lh_fail_incomplete(ps, LH_SHOW(first, shown));
    if (lh_token_is(&first, "devices"))
      return lh_parse_devices(ps, cursor, end);
    LH_CHECK(lh_require_devices(ps, &first));
    if (section >= 0)
      return lh_open_section(ps, section, cursor, end);
    return lh_parse_device(ps, cursor, end);
  }
  if (ps->open >= 0) /* an unfinished section owns the line, even if it starts with a word */
    return lh_parse_row(ps, begin, end);
  if (ps->skipping)
    return LH_SUCCESS;
  if (lh_token_is_identifier(&first)) {
    ps->closed = -1;
    lh_log(LH_LOG_WARN, "links", "%s:%d: skipping unknown section %s up to the next known keyword (%s)",
           ps->source, ps->line, LH_SHOW(first, shown), lh_keyword_list);
    ps->skipping = 1;
    return LH_SUCCESS;
  }
  if (ps->closed >= 0)
    return lh_parse_fail(ps, "expected a keyword (%s) after the complete %s section (%d rows), found %s",
                         lh_keyword_list, lh_quantities[ps->closed].keyword, lh_section_rows_expected(ps, ps->closed),
                         LH_SHOW(first, shown));
  return lh_parse_fail(ps, "expected a keyword (%s), found %s outside any section", lh_keyword_list,
                       LH_SHOW(first, shown));
}

static lh_status lh_parse_finish(lh_parser *ps, lh_links **out) {
  if (ps->open >= 0)
    return lh_fail_incomplete(ps, "the end of the file");
  if (!ps->devices)
    return lh_parse_fail(ps, "expected a 'devices N' line, found the end of the file");
  for (int i = 0; i < LH_QUANTITIES; i++)
    if (!ps->sections[i].first_line && !lh_quantities[i].optional)
      return lh_parse_fail(ps, "expected a %s section, found the end of the file", lh_quantities[i].keyword);

  int n = ps->devices;
  lh_links *links = NULL;
  /* Placeholder values: every off-diagonal link is overwritten below. */
  LH_CHECK(lh_links_create(n, 0.0, 1.0, &links));
  lh_status st = LH_SUCCESS;
  const double *latency = ps->sections[LH_LATENCY].values, *bandwidth = ps->sections[LH_BANDWIDTH].values;
  for (int from = 0; from < n && st == LH_SUCCESS; from++)
    for (int to = 0; to < n && st == LH_SUCCESS; to++)
      if (from != to) {
        size_t cell = (size_t)from * (size_t)n + (size_t)to;
        st = lh_links_set(links, from, to, latency[cell], bandwidth[cell]);
      }
  for (int d = 0; d < n && st == LH_SUCCESS; d++) {
    if (ps->device_lines && ps->device_lines[d].line)
      st = lh_links_set_device(links, d, ps->device_lines[d].site, ps->device_lines[d].speed);
    if (st == LH_SUCCESS && ps->sections[LH_UPLINK].first_line)
      st = lh_links_set_uplink(links, d, ps->sections[LH_UPLINK].values[d]);
  }
  if (st != LH_SUCCESS) {
    lh_links_free(links);
    return lh_error_context(st, "%s", ps->source);
  }
  *out = links;
  return LH_SUCCESS;
}

lh_status lh_links_parse(const char *text, size_t length, const char *source_name, lh_links **out) {
  lh_error_clear();
  if (!out)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_links_parse: out must not be NULL");
  *out = NULL;
  if (!text && length)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_links_parse: text is NULL but length is %zu", length);
  lh_parser ps = {.source = source_name ? source_name : "<text>", .open = -1, .closed = -1};
  if (length == 0) { /* before any pointer arithmetic: text may be NULL here */
    ps.line = 1;
    return lh_parse_fail(&ps, "expected '%s' as the first line, found an empty file", LH_LINKS_MAGIC);
  }
  lh_status st = LH_SUCCESS;
  const char *p = text, *end = text + length;
  while (p < end && st == LH_SUCCESS) {
    const char *newline = memchr(p, '\n', (size_t)(end - p));
    const char *line_end = newline ? newline : end;
    ps.line++;
    if (ps.line == 1)
      st = lh_parse_magic(&ps, p, (size_t)(line_end - p));
    else
      st = lh_parse_line(&ps, p, line_end);
    p = newline ? newline + 1 : end;
  }
  if (st == LH_SUCCESS)
    st = lh_parse_finish(&ps, out);
  for (int i = 0; i < LH_QUANTITIES; i++)
    free(ps.sections[i].values);
  free(ps.device_lines);
  return st;
}

lh_status lh_links_read_file(const char *path, lh_links **out) {
  lh_error_clear();
  if (!out)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_links_read_file: out must not be NULL");
  *out = NULL;
  if (!path)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_links_read_file: path must not be NULL");
  char *text;
  size_t length;
  LH_CHECK(lh_read_text_file(path, "lh_links_read_file", SIZE_MAX - 1, &text, &length));
  lh_status st = lh_links_parse(text, length, path, out);
  free(text);
  return st;
}

/* ---- writer ------------------------------------------------------------------------------- */


/* One formatted value, kept because matrices repeat the same few values over and over and
 * formatting (printf, then a strtod check) is the writer's main cost. */
typedef struct {
  int valid;
  double value;
  char text[LH_NUMBER_TEXT];
} lh_format_memo;

/* The text of one matrix cell or uplink value; the diagonal is written as 0. */
static const char *lh_format_cell(const lh_links *links, int which, int row, int column, lh_format_memo *memo) {
  double latency, bandwidth, value;
  if (which == LH_UPLINK) {
    lh_links_get_uplink(links, column, &value);
  } else if (row == column) {
    return "0";
  } else {
    lh_links_get(links, row, column, &latency, &bandwidth);
    value = which == LH_LATENCY ? latency : bandwidth;
  }
  if (!memo->valid || memcmp(&memo->value, &value, sizeof value) != 0) {
    lh_quantity_format(&lh_quantities[which], value, memo->text, sizeof memo->text);
    memo->value = value;
    memo->valid = 1;
  }
  return memo->text;
}

/* One section with left-aligned columns, each as wide as its widest number. Cells are
 * formatted twice (measure, then print) so that memory stays O(N) for any N. */
static lh_status lh_write_section(const lh_links *links, int devices, int which, FILE *stream) {
  lh_format_memo memo = {0};
  int rows = lh_quantities[which].single_row ? 1 : devices;
  size_t *widths = lh_calloc((size_t)devices, sizeof *widths, "link-file column widths");
  if (!widths)
    return LH_ERR_OUT_OF_MEMORY;
  for (int row = 0; row < rows; row++)
    for (int column = 0; column < devices; column++) {
      size_t width = strlen(lh_format_cell(links, which, row, column, &memo));
      if (width > widths[column])
        widths[column] = width;
    }
  fprintf(stream, "%s\n", lh_quantities[which].keyword);
  for (int row = 0; row < rows; row++) {
    for (int column = 0; column < devices; column++) {
      const char *text = lh_format_cell(links, which, row, column, &memo);
      if (column + 1 < devices)
        fprintf(stream, "%-*s ", (int)widths[column], text);
      else
        fprintf(stream, "%s\n", text);
    }
  }
  free(widths);
  return LH_SUCCESS;
}

lh_status lh_links_write_stream(const lh_links *links, FILE *stream) {
  lh_error_clear();
  if (!links || !stream)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_links_write_stream: %s must not be NULL",
                    !links ? "links" : "stream");
  int devices;
  LH_CHECK(lh_links_devices(links, &devices));
  int any_uplink = 0;
  for (int d = 0; d < devices; d++) {
    double cap;
    lh_links_get_uplink(links, d, &cap);
    any_uplink |= cap > 0;
  }
  fprintf(stream, "%s\n", LH_LINKS_MAGIC);
  fprintf(stream, "# %d devices. Row i of a matrix lists the links from device i; the diagonal is ignored.\n"
                  "# latency_ms: one-way latency in milliseconds. bandwidth_gbps: Gbit/s "
                  "(1 Gbit/s = 125000000 bytes/s).\n", devices);
  if (any_uplink)
    fprintf(stream, "# uplink_gbps: per-device cap in Gbit/s shared by all its outgoing links; 0 = no cap.\n");
  fprintf(stream, "devices %d\n", devices);
  for (int d = 0; d < devices; d++) {
    const char *site;
    double speed;
    lh_decimal decimal;
    char text[LH_NUMBER_TEXT];
    lh_links_get_device(links, d, &site, &speed);
    lh_decimal_from_double(speed, &decimal);
    lh_decimal_format(&decimal, 0, text, sizeof text);
    fprintf(stream, "device %d site %s speed %s\n", d, site, text);
  }
  LH_CHECK(lh_write_section(links, devices, LH_LATENCY, stream));
  LH_CHECK(lh_write_section(links, devices, LH_BANDWIDTH, stream));
  if (any_uplink)
    LH_CHECK(lh_write_section(links, devices, LH_UPLINK, stream));
  /* fprintf errors are sticky in the stream, so one check after flushing covers them all. */
  if (fflush(stream) != 0 || ferror(stream))
    return lh_error(LH_ERR_IO, "lh_links_write_stream: writing failed: %s", strerror(errno));
  return LH_SUCCESS;
}

/* lh_write_text_file's writer. */
static lh_status lh_links_write_stream_object(const void *object, FILE *stream) {
  return lh_links_write_stream(object, stream);
}

lh_status lh_links_write_file(const lh_links *links, const char *path) {
  lh_error_clear();
  if (!links || !path)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_links_write_file: %s must not be NULL", !links ? "links" : "path");
  return lh_write_text_file(path, "lh_links_write_file", lh_links_write_stream_object, links);
}
