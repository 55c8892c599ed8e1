/* Parsers for the units people write: 100mbit, 20ms, 64KiB. Strict: a number, then one of
 * the listed units (case-insensitive), nothing else. */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/internal.h"

typedef struct {
  const char *suffix;
  double scale;
} lh_unit;

/* Splits "  12.5mbit " into 12.5 and "mbit"; rejects non-finite and negative numbers. */
static lh_status lh_split_number(const char *what, const char *text, double *number, char *unit, size_t cap) {
  if (!text)
    return lh_error(LH_ERR_PARSE, "%s: no text given", what);
  while (isspace((unsigned char)*text))
    text++;
  char *end;
  double v = strtod(text, &end);
  if (end == text)
    return lh_error(LH_ERR_PARSE, "%s '%s': expected a number first", what, text);
  if (!isfinite(v) || v < 0)
    return lh_error(LH_ERR_PARSE, "%s '%s': the number must be finite and not negative", what, text);
  size_t n = 0;
  while (*end && !isspace((unsigned char)*end) && n + 1 < cap)
    unit[n++] = *end++;
  unit[n] = '\0';
  while (isspace((unsigned char)*end))
    end++;
  if (*end)
    return lh_error(LH_ERR_PARSE, "%s '%s': unexpected text after the unit", what, text);
  *number = v;
  return LH_SUCCESS;
}

static lh_status lh_parse_with_units(const char *what, const char *text, const lh_unit *units, int nunits,
                                     const char *expected, int unit_required, double *out) {
  double v = 0; /* set by lh_split_number on success */
  char unit[16];
  LH_CHECK(lh_split_number(what, text, &v, unit, sizeof unit));
  if (!unit[0]) {
    if (unit_required && v != 0)
      return lh_error(LH_ERR_PARSE, "%s '%s': a unit is required (%s)", what, text, expected);
    *out = v;
    return LH_SUCCESS;
  }
  for (int i = 0; i < nunits; i++)
    if (!strcasecmp(unit, units[i].suffix)) {
      *out = v * units[i].scale;
      return LH_SUCCESS;
    }
  return lh_error(LH_ERR_PARSE, "%s '%s': unknown unit '%s' (expected %s)", what, text, unit, expected);
}

lh_status lh_parse_bandwidth(const char *text, double *bytes_per_second) {
  static const lh_unit units[] = {{"bit", 1.0 / 8},       {"kbit", 1e3 / 8}, {"mbit", 1e6 / 8},
                                  {"gbit", 1e9 / 8},      {"bps", 1.0 / 8},  {"kbps", 1e3 / 8},
                                  {"mbps", 1e6 / 8},      {"gbps", 1e9 / 8}};
  if (!bytes_per_second)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_parse_bandwidth: output must not be NULL");
  return lh_parse_with_units("bandwidth", text, units, 8, "kbit, mbit or gbit", 1, bytes_per_second);
}

lh_status lh_parse_duration(const char *text, double *seconds) {
  static const lh_unit units[] = {{"ns", 1e-9}, {"us", 1e-6}, {"ms", 1e-3}, {"s", 1.0}};
  if (!seconds)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_parse_duration: output must not be NULL");
  return lh_parse_with_units("duration", text, units, 4, "us, ms or s", 1, seconds);
}

lh_status lh_parse_size(const char *text, size_t *bytes) {
  static const lh_unit units[] = {{"b", 1.0},           {"k", 1024.0},        {"kib", 1024.0},
                                  {"kb", 1024.0},       {"m", 1048576.0},     {"mib", 1048576.0},
                                  {"mb", 1048576.0},    {"g", 1073741824.0},  {"gib", 1073741824.0},
                                  {"gb", 1073741824.0}};
  if (!bytes)
    return lh_error(LH_ERR_INVALID_ARGUMENT, "lh_parse_size: output must not be NULL");
  double v = 0;
  LH_CHECK(lh_parse_with_units("size", text, units, 10, "K, M or G (binary multiples)", 0, &v));
  if (v != floor(v) || v > 1e18)
    return lh_error(LH_ERR_PARSE, "size '%s': expected a whole number of bytes", text);
  *bytes = (size_t)v;
  return LH_SUCCESS;
}
