/* Runs the fuzz target over saved inputs without libFuzzer, so that the seed corpus (and any
 * crash file a fuzzing run left) is checked by every build, whatever the compiler.
 *   fuzz_linkfile_replay DIR_OR_FILE...   each directory's regular files, then each file */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Returns 0 when the file was read and replayed. */
static int replay_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    perror(path);
    return 1;
  }
  size_t length = 0, capacity = 4096;
  uint8_t *data = malloc(capacity);
  size_t got;
  while (data && (got = fread(data + length, 1, capacity - length, f)) > 0) {
    length += got;
    if (length == capacity) {
      uint8_t *bigger = realloc(data, capacity *= 2);
      if (!bigger)
        free(data);
      data = bigger;
    }
  }
  int failed = !data || ferror(f);
  fclose(f);
  if (failed) {
    fprintf(stderr, "%s: could not read\n", path);
  } else {
    /* An exact-size copy, so that AddressSanitizer catches a read one byte past the input. */
    uint8_t *exact = malloc(length ? length : 1);
    memcpy(exact, data, length);
    LLVMFuzzerTestOneInput(exact, length);
    free(exact);
  }
  free(data);
  return failed;
}

static int is_regular_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int main(int argc, char **argv) {
  int replayed = 0, failures = 0;
  if (argc < 2) {
    fprintf(stderr, "usage: %s DIR_OR_FILE...\n", argv[0]);
    return 2;
  }
  LLVMFuzzerInitialize(&argc, &argv);
  for (int i = 1; i < argc; i++) {
    DIR *dir = opendir(argv[i]);
    if (!dir) {
      failures += replay_file(argv[i]);
      replayed++;
      continue;
    }
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
      if (entry->d_name[0] == '.')
        continue;
      size_t size = strlen(argv[i]) + strlen(entry->d_name) + 2;
      char *path = malloc(size);
      snprintf(path, size, "%s/%s", argv[i], entry->d_name);
      if (is_regular_file(path)) {
        failures += replay_file(path);
        replayed++;
      }
      free(path);
    }
    closedir(dir);
  }
  printf("replayed %d inputs, %d unreadable\n", replayed, failures);
  /* An empty corpus means a wrong path, not a pass. */
  return (replayed == 0 || failures) ? 1 : 0;
}
