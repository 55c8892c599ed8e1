/* train_gpt's own checkpoint files (the library saves its AQ-SGD stores and reducer state
 * itself): a magic, a byte-order mark, a header, the arrays, and a 64-bit FNV-1a of everything,
 * written to a temporary name and renamed into place. Numbers are in the writing host's byte
 * order (the arrays go out as they are in memory); the mark lets a host of the other order
 * refuse such a file by name instead of reading nonsense sizes. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoint.h"

static const char magic[8] = {'T', 'G', 'P', 'T', 'C', 'K', 'P', '2'};
static const uint32_t byte_order = 0x01020304u, byte_order_swapped = 0x04030201u;

static uint64_t fnv(uint64_t h, const void *data, size_t n) {
  const unsigned char *p = data;
  for (size_t i = 0; i < n; i++)
    h = (h ^ p[i]) * 1099511628211ULL;
  return h;
}

void ckpt_path(char *out, size_t cap, const char *dir, int rank, const char *what) {
  snprintf(out, cap, "%s/rank-%d.%s", dir, rank, what);
}

int ckpt_mkdir(const char *dir) {
  if (mkdir(dir, 0777) == 0 || errno == EEXIST)
    return 0;
  return -1;
}

static int put(FILE *f, uint64_t *h, const void *data, size_t n) {
  *h = fnv(*h, data, n);
  return fwrite(data, 1, n, f) == n;
}

/* Every file is written as PATH.tmp and renamed to PATH when whole: f is the open temporary,
 * ok whether everything went into it. Closes f; 0, or -1 with a sentence in err and the
 * temporary removed. */
static int finish_tmp(FILE *f, int ok, const char *tmp, const char *path, char *err, size_t errcap) {
  ok = (fclose(f) == 0) && ok;
  if (!ok || rename(tmp, path) != 0) {
    snprintf(err, errcap, "cannot write %s: %s", path, strerror(errno));
    remove(tmp);
    return -1;
  }
  return 0;
}

int ckpt_write_model(const char *path, const ckpt_header *hd, const float *params, const float *m, const float *v,
                     size_t n, char *err, size_t errcap) {
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "wb");
  if (!f) {
    snprintf(err, errcap, "cannot create %s: %s", tmp, strerror(errno));
    return -1;
  }
  uint64_t h = 1469598103934665603ULL, count = n;
  int ok = put(f, &h, magic, sizeof magic) && put(f, &h, &byte_order, sizeof byte_order) &&
           put(f, &h, hd, sizeof *hd) && put(f, &h, &count, sizeof count) && put(f, &h, params, n * sizeof *params) &&
           put(f, &h, m, n * sizeof *m) && put(f, &h, v, n * sizeof *v);
  ok = ok && fwrite(&h, sizeof h, 1, f) == 1;
  return finish_tmp(f, ok, tmp, path, err, errcap);
}

int ckpt_read_model(const char *path, ckpt_header *hd, float *params, float *m, float *v, size_t n, char *err,
                    size_t errcap) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(err, errcap, "cannot open %s: %s", path, strerror(errno));
    return -1;
  }
  char seen[8];
  uint32_t order = 0;
  uint64_t h = 1469598103934665603ULL, count = 0, stored = 0;
  ckpt_header got;
  int ok = fread(seen, 1, 8, f) == 8 && memcmp(seen, magic, 8) == 0 && fread(&order, sizeof order, 1, f) == 1;
  if (ok && order != byte_order) {
    snprintf(err, errcap,
             order == byte_order_swapped ? "%s was written on a host of the other byte order; resume on one like it"
                                         : "%s has a damaged header (its byte-order mark is wrong)",
             path);
    fclose(f);
    return -1;
  }
  h = fnv(fnv(h, seen, 8), &order, sizeof order);
  ok = ok && fread(&got, sizeof got, 1, f) == 1 && fread(&count, sizeof count, 1, f) == 1;
  h = fnv(fnv(h, &got, sizeof got), &count, sizeof count);
  if (!ok || count != n) {
    snprintf(err, errcap, ok ? "%s holds %llu parameters but this stage has %zu: another model or placement"
                             : "%s is not a train_gpt checkpoint",
             path, (unsigned long long)count, n);
    fclose(f);
    return -1;
  }
  ok = fread(params, sizeof *params, n, f) == n && fread(m, sizeof *m, n, f) == n && fread(v, sizeof *v, n, f) == n &&
       fread(&stored, sizeof stored, 1, f) == 1;
  fclose(f);
  h = fnv(fnv(fnv(h, params, n * sizeof *params), m, n * sizeof *m), v, n * sizeof *v);
  if (!ok || stored != h) {
    snprintf(err, errcap, "%s is truncated or damaged (its checksum does not match)", path);
    return -1;
  }
  *hd = got;
  return 0;
}

int ckpt_write_latest(const char *dir, const char *name, char *err, size_t errcap) {
  char path[4096], tmp[4200];
  snprintf(path, sizeof path, "%s/latest", dir);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  if (!f) {
    snprintf(err, errcap, "cannot create %s: %s", tmp, strerror(errno));
    return -1;
  }
  return finish_tmp(f, fprintf(f, "%s\n", name) > 0, tmp, path, err, errcap);
}

int ckpt_read_latest(const char *dir, char *name, size_t cap, char *err, size_t errcap) {
  char path[4096];
  snprintf(path, sizeof path, "%s/latest", dir);
  FILE *f = fopen(path, "r");
  if (!f) {
    snprintf(err, errcap, "no checkpoint to resume from: cannot open %s: %s", path, strerror(errno));
    return -1;
  }
  int ok = fgets(name, (int)cap, f) != NULL;
  fclose(f);
  if (!ok) {
    snprintf(err, errcap, "%s is empty", path);
    return -1;
  }
  name[strcspn(name, "\n")] = 0;
  return 0;
}
