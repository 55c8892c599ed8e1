/* The data of examples/train_gpt: see data.h for the corpus, the split and the example layout.
 * POSIX is needed only to list the fortunes directory (opendir, lstat). */
#define _POSIX_C_SOURCE 200809L

#include "data.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- errors -------------------------------------------------------------------------------- */

/* Room for a long path plus the sentence around it. */
static _Thread_local char last_error[1024];

const char *data_error(void) { return last_error; }

#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
static int fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  return -1;
}

/* ---- a growing byte buffer ----------------------------------------------------------------- */

typedef struct {
  unsigned char *p;
  size_t len, cap;
} buffer;

/* Makes room for `more` bytes after len; 0 or -1 (out of memory, reported against `what`). */
static int reserve(buffer *b, size_t more, const char *what) {
  if (more <= b->cap - b->len)
    return 0;
  if (more > SIZE_MAX / 2 - b->len)
    return fail("the corpus %s is too large to hold in memory", what);
  size_t cap = b->cap ? b->cap : 1 << 16;
  while (cap - b->len < more)
    cap *= 2;
  unsigned char *p = realloc(b->p, cap);
  if (!p)
    return fail("out of memory reading the corpus %s (%zu bytes)", what, cap);
  b->p = p;
  b->cap = cap;
  return 0;
}

static int append(buffer *b, const void *src, size_t n, const char *what) {
  if (reserve(b, n, what) != 0)
    return -1;
  memcpy(b->p + b->len, src, n);
  b->len += n;
  return 0;
}

/* Appends the whole of the file at `path` to b. Reads to the end instead of trusting the size
 * stat reports, so a pipe or a file that grows while read still gives what was read. */
static int read_file(const char *path, buffer *b) {
  struct stat st;
  if (stat(path, &st) != 0)
    return fail("cannot read the corpus file %s: %s", path, strerror(errno));
  if (S_ISDIR(st.st_mode))
    return fail("cannot read the corpus file %s: it is a directory (pass a text file)", path);
  FILE *f = fopen(path, "rb");
  if (!f)
    return fail("cannot read the corpus file %s: %s", path, strerror(errno));
  for (;;) {
    if (reserve(b, 1 << 16, path) != 0) {
      fclose(f);
      return -1;
    }
    size_t got = fread(b->p + b->len, 1, b->cap - b->len, f);
    b->len += got;
    if (got == 0)
      break;
  }
  int err = ferror(f) ? errno : 0;
  fclose(f);
  if (err)
    return fail("cannot read the corpus file %s: %s", path, strerror(err));
  return 0;
}

/* ---- the corpus ---------------------------------------------------------------------------- */

struct data_corpus {
  unsigned char *bytes;
  size_t size;
  int context;
  size_t split; /* S: training is [0, S), validation [S, size) */
  int64_t examples[2];
  uint64_t hash;
  char source[1024];
};

static uint64_t fnv1a64(const unsigned char *p, size_t n) {
  uint64_t h = 0xcbf29ce484222325u;
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= 0x100000001b3u;
  }
  return h;
}

static int check_context(int context) {
  if (context < 1 || context > (1 << 20))
    return fail("the context %d is outside 1..%d", context, 1 << 20);
  return 0;
}

/* Takes ownership of b's memory (freed on failure too) and computes the split. */
static int finish(buffer *b, int context, const char *source, data_corpus **out) {
  size_t n = b->len, T = (size_t)context;
  if (n == 0) {
    free(b->p);
    return fail("the corpus %s is empty", source);
  }
  /* T <= 2^20 and n fits in memory, so this product cannot wrap on a 64-bit size_t. */
  size_t need = (size_t)DATA_MIN_SEQUENCES * (T + 1);
  if (n < need) {
    free(b->p);
    return fail("the corpus %s holds %zu bytes, fewer than the %zu that context %d needs (%d x (T + 1))",
                source, n, need, context, DATA_MIN_SEQUENCES);
  }
  data_corpus *c = calloc(1, sizeof *c);
  if (!c) {
    free(b->p);
    return fail("out of memory loading the corpus %s", source);
  }
  c->bytes = b->p;
  c->size = n;
  c->context = context;
  /* m training examples use exactly m T + 1 bytes; n >= 128 (T + 1) keeps m >= 115. */
  size_t m = (n - n / 10 - 1) / T;
  c->split = m * T + 1;
  c->examples[DATA_TRAIN] = (int64_t)m;
  size_t vb = n - c->split; /* >= n / 10 >= 12 (T + 1), so at least one example */
  c->examples[DATA_VAL] = (int64_t)((vb - 1) / T);
  c->hash = fnv1a64(c->bytes, n);
  snprintf(c->source, sizeof c->source, "%s", source);
  *out = c;
  return 0;
}

int data_load(const char *path, int context, data_corpus **out) {
  if (!out)
    return fail("data_load needs somewhere to put the corpus (out is NULL)");
  *out = NULL;
  if (!path)
    return data_load_fortunes(NULL, context, out);
  if (check_context(context) != 0)
    return -1;
  buffer b = {0};
  if (read_file(path, &b) != 0) {
    free(b.p);
    return -1;
  }
  return finish(&b, context, path, out);
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

/* strcmp, not strcoll: the order must not depend on the locale. */
static int cmp_names(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void free_names(char **names, size_t n) {
  for (size_t i = 0; i < n; i++)
    free(names[i]);
  free(names);
}

/* The fortune files of `dir`, sorted: 0 with *names (count *n), or -1. */
static int list_fortunes(const char *dir, char ***names_out, size_t *n_out) {
  DIR *d = opendir(dir);
  if (!d)
    return fail("cannot open the fortunes directory %s: %s (install the Debian package fortunes or "
                "pass --data FILE)",
                dir, strerror(errno));
  char **names = NULL;
  size_t n = 0, cap = 0;
  char path[4096];
  int rc = 0;
  for (;;) {
    errno = 0;
    struct dirent *e = readdir(d);
    if (!e) {
      if (errno)
        rc = fail("cannot list the fortunes directory %s: %s", dir, strerror(errno));
      break;
    }
    const char *name = e->d_name;
    /* Hidden names include . and ..; .dat are strfile's binary indexes; .u8 are links to the
     * same text (or converted copies of it) and would repeat it. */
    if (name[0] == '.' || ends_with(name, ".dat") || ends_with(name, ".u8"))
      continue;
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >= sizeof path) {
      rc = fail("the path %s/%s is too long", dir, name);
      break;
    }
    /* lstat: symbolic links are skipped, not followed; so are subdirectories (off/, other
     * languages) and anything else that is not a regular file. */
    struct stat st;
    if (lstat(path, &st) != 0) {
      rc = fail("cannot read the fortune file %s: %s", path, strerror(errno));
      break;
    }
    if (!S_ISREG(st.st_mode))
      continue;
    if (n == cap) {
      size_t ncap = cap ? 2 * cap : 64;
      char **p = realloc(names, ncap * sizeof *p);
      if (!p) {
        rc = fail("out of memory listing the fortunes directory %s", dir);
        break;
      }
      names = p;
      cap = ncap;
    }
    names[n] = malloc(strlen(name) + 1);
    if (!names[n]) {
      rc = fail("out of memory listing the fortunes directory %s", dir);
      break;
    }
    strcpy(names[n++], name);
  }
  closedir(d);
  if (rc != 0) {
    free_names(names, n);
    return -1;
  }
  if (n == 0) {
    free(names);
    return fail("the fortunes directory %s holds no fortune files (only .dat, .u8, links or "
                "subdirectories)",
                dir);
  }
  qsort(names, n, sizeof *names, cmp_names);
  *names_out = names;
  *n_out = n;
  return 0;
}

int data_load_fortunes(const char *dir, int context, data_corpus **out) {
  if (!out)
    return fail("data_load_fortunes needs somewhere to put the corpus (out is NULL)");
  *out = NULL;
  if (!dir)
    dir = DATA_FORTUNES_DIR;
  if (check_context(context) != 0)
    return -1;
  char **names = NULL;
  size_t n = 0;
  if (list_fortunes(dir, &names, &n) != 0)
    return -1;
  buffer b = {0};
  char path[4096];
  for (size_t i = 0; i < n; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, names[i]); /* fits: list_fortunes checked */
    size_t start = b.len;
    if (read_file(path, &b) != 0)
      goto fail;
    size_t len = b.len - start;
    if (len == 0)
      continue;
    const unsigned char *f = b.p + start;
    if (f[len - 1] != '\n') {
      if (append(&b, "\n", 1, path) != 0)
        goto fail;
      f = b.p + start;
      len++;
    }
    /* End every file with a "%" line so that fortunes from two files never run together. */
    int ends_with_separator = len >= 2 && f[len - 2] == '%' && (len == 2 || f[len - 3] == '\n');
    if (!ends_with_separator && append(&b, "%\n", 2, path) != 0)
      goto fail;
  }
  free_names(names, n);
  char source[1024];
  snprintf(source, sizeof source, "%s (%zu files)", dir, n);
  return finish(&b, context, source, out);
fail:
  free_names(names, n);
  free(b.p);
  return -1;
}

void data_free(data_corpus *c) {
  if (!c)
    return;
  free(c->bytes);
  free(c);
}

const char *data_source(const data_corpus *c) { return c->source; }
int data_context(const data_corpus *c) { return c->context; }
size_t data_size(const data_corpus *c) { return c->size; }
const unsigned char *data_bytes(const data_corpus *c) { return c->bytes; }
uint64_t data_hash(const data_corpus *c) { return c->hash; }

size_t data_split_offset(const data_corpus *c, data_split split) {
  return split == DATA_VAL ? c->split : 0;
}

size_t data_split_bytes(const data_corpus *c, data_split split) {
  return split == DATA_VAL ? c->size - c->split : c->split;
}

int64_t data_examples(const data_corpus *c, data_split split) {
  return split == DATA_VAL ? c->examples[DATA_VAL] : split == DATA_TRAIN ? c->examples[DATA_TRAIN] : 0;
}

int64_t data_train_examples(const data_corpus *c) { return c->examples[DATA_TRAIN]; }
int64_t data_val_examples(const data_corpus *c) { return c->examples[DATA_VAL]; }

int data_example(const data_corpus *c, data_split split, int64_t index, int *tokens, int *targets) {
  if (split != DATA_TRAIN && split != DATA_VAL)
    return fail("unknown split %d (expected DATA_TRAIN or DATA_VAL)", (int)split);
  const char *name = split == DATA_TRAIN ? "training" : "validation";
  int64_t count = c->examples[split];
  if (index < 0 || index >= count)
    return fail("example %lld is outside the %s split's 0..%lld", (long long)index, name,
                (long long)count - 1);
  if (!tokens || !targets)
    return fail("data_example needs tokens and targets arrays (one of them is NULL)");
  size_t T = (size_t)c->context;
  const unsigned char *p = c->bytes + data_split_offset(c, split) + (size_t)index * T;
  for (size_t t = 0; t < T; t++) {
    tokens[t] = p[t];
    targets[t] = p[t + 1];
  }
  return 0;
}

/* ---- the epoch order ----------------------------------------------------------------------- */

/* splitmix64's output function: a bijection of 64-bit words that mixes every input bit. */
static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
  return z ^ (z >> 31);
}

static uint64_t splitmix64(uint64_t *state) {
  *state += 0x9e3779b97f4a7c15u;
  return mix64(*state);
}

/* Uniform in [0, n), n >= 1, without modulo bias: draws below 2^64 mod n are redrawn, so the
 * accepted range is a whole number of copies of [0, n). */
static uint64_t below(uint64_t *state, uint64_t n) {
  uint64_t threshold = (0 - n) % n;
  for (;;) {
    uint64_t r = splitmix64(state);
    if (r >= threshold)
      return r % n;
  }
}

int data_shuffle(uint64_t seed, int epoch, int64_t first, int64_t count, int64_t *out) {
  if (count < 0)
    return fail("data_shuffle: count %lld is negative", (long long)count);
  if (first < 0)
    return fail("data_shuffle: first id %lld is negative", (long long)first);
  if (count > INT64_MAX - first)
    return fail("data_shuffle: ids %lld + %lld overflow", (long long)first, (long long)count);
  if (count > 0 && !out)
    return fail("data_shuffle needs an output array for %lld ids (out is NULL)", (long long)count);
  /* Each key enters through its own mixing round, so no two different (seed, epoch, first,
   * count) keys are related by a simple shift of the stream. */
  uint64_t state = mix64(seed ^ 0x6a09e667f3bcc909u);
  state = mix64(state ^ (uint64_t)(int64_t)epoch);
  state = mix64(state ^ (uint64_t)first);
  state = mix64(state ^ (uint64_t)count);
  for (int64_t i = 0; i < count; i++)
    out[i] = first + i;
  for (int64_t i = count - 1; i > 0; i--) {
    int64_t j = (int64_t)below(&state, (uint64_t)i + 1);
    int64_t t = out[i];
    out[i] = out[j];
    out[j] = t;
  }
  return 0;
}

/* ---- the tokenizer ------------------------------------------------------------------------- */

void data_encode(const unsigned char *bytes, size_t n, int *tokens) {
  for (size_t i = 0; i < n; i++)
    tokens[i] = bytes[i];
}

/* The text of one token into e (at most 4 characters, no NUL); returns its length. */
static size_t escape(int tok, char *e) {
  static const char hex[] = "0123456789abcdef";
  if (tok < 0 || tok > 255) {
    e[0] = '\\';
    e[1] = '?';
    return 2;
  }
  if (tok == '\\' || tok == '\t') {
    e[0] = '\\';
    e[1] = tok == '\t' ? 't' : '\\';
    return 2;
  }
  if (tok == '\n' || (tok >= 0x20 && tok <= 0x7e)) {
    e[0] = (char)tok;
    return 1;
  }
  e[0] = '\\';
  e[1] = 'x';
  e[2] = hex[tok >> 4];
  e[3] = hex[tok & 15];
  return 4;
}

size_t data_decode(const int *tokens, size_t n, char *out, size_t cap) {
  size_t total = 0, written = 0;
  int room = cap > 0;
  for (size_t i = 0; i < n; i++) {
    char e[4];
    size_t k = escape(tokens[i], e);
    /* Whole escapes only: a cut "\x4" would read as a different byte. */
    if (room && written + k <= cap - 1) {
      memcpy(out + written, e, k);
      written += k;
    } else {
      room = 0;
    }
    total += k;
  }
  if (cap > 0)
    out[written] = '\0';
  return total;
}
