/* libFuzzer target for the plan-file reader (lh_plan_parse): any input must either be refused
 * cleanly (LH_ERR_PARSE, no plan, a message that starts with the source name and a line
 * number) or load, and then the writer's text must load again to exactly the same plan: the
 * same sizes, every device's (stage, replica), every info field bit for bit. abort() here is
 * how a fuzzer reports a finding; the library itself never aborts. */
#define _POSIX_C_SOURCE 200809L /* open_memstream, setenv */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <longhaul/sched.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void lh_fuzz_fail(const char *what) {
  fprintf(stderr, "fuzz_plan: %s (last error: %s)\n", what, lh_last_error());
  abort();
}

/* Bitwise, so that -0.0 against 0.0 counts as a difference too. */
static int lh_same_double(double a, double b) { return memcmp(&a, &b, sizeof a) == 0; }

static lh_plan_info lh_fuzz_info(const lh_plan *plan) {
  lh_plan_info info = LH_PLAN_INFO_INIT;
  if (lh_plan_get_info(plan, &info) != LH_SUCCESS)
    lh_fuzz_fail("lh_plan_get_info refused a loaded plan");
  return info;
}

/* The writer turns a non-finite number into null, which reads back as 0. That loss cannot
 * apply to a loaded plan: the reader refuses a number beyond the range of a double and has no
 * other way to produce inf or nan, so a non-finite field in `a` is itself a finding, and every
 * field must then survive bit for bit. construct_seconds is not in the file at all: it reads
 * 0 on both sides, which the comparison checks too. */
static void lh_fuzz_expect_equal(const lh_plan *a, const lh_plan *b) {
  lh_plan_info ia = lh_fuzz_info(a), ib = lh_fuzz_info(b);
  if (ia.devices != ib.devices || ia.pp != ib.pp || ia.dp != ib.dp)
    lh_fuzz_fail("devices, pp or dp changed in the round trip");
  if ((long long)ia.pp * ia.dp != ia.devices)
    lh_fuzz_fail("a loaded plan's devices is not pp x dp");
  const double reals_a[] = {ia.cost, ia.dp_cost, ia.pp_cost, ia.lower_bound, ia.gap, ia.solve_seconds,
                            ia.construct_seconds};
  const double reals_b[] = {ib.cost, ib.dp_cost, ib.pp_cost, ib.lower_bound, ib.gap, ib.solve_seconds,
                            ib.construct_seconds};
  for (size_t r = 0; r < sizeof reals_a / sizeof reals_a[0]; r++) {
    if (!isfinite(reals_a[r]))
      lh_fuzz_fail("the reader loaded a non-finite number (it must refuse them)");
    if (!lh_same_double(reals_a[r], reals_b[r]))
      lh_fuzz_fail("a number in the plan's info changed in the round trip");
  }
  if (ia.objective != ib.objective || ia.seed != ib.seed || ia.restarts != ib.restarts ||
      ia.budget_hit != ib.budget_hit)
    lh_fuzz_fail("objective, seed, restarts or budget_hit changed in the round trip");
  for (int d = 0; d < ia.devices; d++) {
    int stage_a, replica_a, stage_b, replica_b, back;
    if (lh_plan_device(a, d, &stage_a, &replica_a) || lh_plan_device(b, d, &stage_b, &replica_b) ||
        stage_a != stage_b || replica_a != replica_b)
      lh_fuzz_fail("a device's stage or replica changed in the round trip");
    /* The two indexes of one plan must agree: (stage, replica) leads back to the device. */
    if (lh_plan_device_at(a, stage_a, replica_a, &back) || back != d)
      lh_fuzz_fail("a loaded plan's grid disagrees with its per-device index");
  }
}

/* The writer's text for plan, NUL-terminated; *length excludes the NUL. */
static char *lh_fuzz_write(const lh_plan *plan, size_t *length) {
  char *text = NULL;
  FILE *memory = open_memstream(&text, length);
  if (!memory)
    lh_fuzz_fail("open_memstream failed");
  if (lh_plan_write_stream(plan, memory) != LH_SUCCESS)
    lh_fuzz_fail("the writer refused a plan the reader accepted");
  fclose(memory);
  return text;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  /* The plan reader logs nothing today; a later warning on every input would drown the
   * fuzzer's own output. */
  setenv("LH_LOG", "NONE", 0);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lh_plan *first = NULL, *second = NULL;
  lh_status st = lh_plan_parse((const char *)data, size, "fuzz", &first);
  if (st != LH_SUCCESS) {
    if (st != LH_ERR_PARSE || first)
      lh_fuzz_fail("a refused input must give LH_ERR_PARSE and no plan");
    int line;
    if (sscanf(lh_last_error(), "fuzz:%d: ", &line) != 1 || line < 1)
      lh_fuzz_fail("a parse error must start with 'source:line: '");
    return 0;
  }
  if (!first)
    lh_fuzz_fail("LH_SUCCESS without a plan");
  size_t length = 0, again_length = 0;
  char *text = lh_fuzz_write(first, &length);
  if (lh_plan_parse(text, length, "rewritten", &second) != LH_SUCCESS)
    lh_fuzz_fail("the writer's output does not load");
  lh_fuzz_expect_equal(first, second);
  /* Everything the file holds survived, so writing the reloaded plan must give the same text. */
  char *again = lh_fuzz_write(second, &again_length);
  if (again_length != length || memcmp(text, again, length) != 0)
    lh_fuzz_fail("writing the reloaded plan gives different text");
  free(again);
  free(text);
  lh_plan_free(first);
  lh_plan_free(second);
  return 0;
}
