/* libFuzzer target for the link-file reader: any input must either be refused cleanly (a
 * parse error whose message starts with the source name and a line number) or load, and
 * then the writer's text must load again to exactly the same matrix. abort() here is how a
 * fuzzer reports a finding; the library itself never aborts. */
#define _POSIX_C_SOURCE 200809L /* open_memstream, setenv */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <longhaul/links.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void lh_fuzz_fail(const char *what) {
  fprintf(stderr, "fuzz_linkfile: %s (last error: %s)\n", what, lh_last_error());
  abort();
}

/* Bitwise, so that -0.0 against 0.0 counts as a difference too. */
static int lh_same_double(double a, double b) { return memcmp(&a, &b, sizeof a) == 0; }

static void lh_fuzz_expect_equal(const lh_links *a, const lh_links *b) {
  int n, m;
  if (lh_links_devices(a, &n) || lh_links_devices(b, &m) || n != m)
    lh_fuzz_fail("device count changed in the round trip");
  for (int i = 0; i < n; i++) {
    const char *site_a, *site_b;
    double speed_a, speed_b, cap_a, cap_b;
    if (lh_links_get_device(a, i, &site_a, &speed_a) || lh_links_get_device(b, i, &site_b, &speed_b) ||
        strcmp(site_a, site_b) || !lh_same_double(speed_a, speed_b))
      lh_fuzz_fail("a device's site or speed changed in the round trip");
    if (lh_links_get_uplink(a, i, &cap_a) || lh_links_get_uplink(b, i, &cap_b) || !lh_same_double(cap_a, cap_b))
      lh_fuzz_fail("an uplink cap changed in the round trip");
    for (int j = 0; j < n; j++) {
      double lat_a, bw_a, lat_b, bw_b;
      if (lh_links_get(a, i, j, &lat_a, &bw_a) || lh_links_get(b, i, j, &lat_b, &bw_b) ||
          !lh_same_double(lat_a, lat_b) || !lh_same_double(bw_a, bw_b))
        lh_fuzz_fail("a link changed in the round trip");
    }
  }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  /* Unknown-section warnings on every input would drown the fuzzer's own output. */
  setenv("LH_LOG", "NONE", 0);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lh_links *first = NULL, *second = NULL;
  lh_status st = lh_links_parse((const char *)data, size, "fuzz", &first);
  if (st != LH_SUCCESS) {
    if (st != LH_ERR_PARSE || first)
      lh_fuzz_fail("a refused input must give LH_ERR_PARSE and no matrix");
    int line;
    if (sscanf(lh_last_error(), "fuzz:%d: ", &line) != 1 || line < 1)
      lh_fuzz_fail("a parse error must start with 'source:line: '");
    return 0;
  }
  char *text = NULL;
  size_t length = 0;
  FILE *memory = open_memstream(&text, &length);
  if (!memory)
    lh_fuzz_fail("open_memstream failed");
  if (lh_links_write_stream(first, memory) != LH_SUCCESS)
    lh_fuzz_fail("the writer refused a matrix the reader accepted");
  fclose(memory);
  if (lh_links_parse(text, length, "rewritten", &second) != LH_SUCCESS)
    lh_fuzz_fail("the writer's output does not load");
  lh_fuzz_expect_equal(first, second);
  free(text);
  lh_links_free(first);
  lh_links_free(second);
  return 0;
}
