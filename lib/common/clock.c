/* One monotonic clock: CLOCK_MONOTONIC is shared by all processes of a host (and across
 * network namespaces), which is what lets simulated links time-stamp a message on the sender
 * and honour the time stamp on the receiver. */
#include <errno.h>
#include <time.h>

#include "common/internal.h"

double lh_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void lh_sleep_until(double until) {
  if (until <= lh_now())
    return;
  struct timespec ts;
  ts.tv_sec = (time_t)until;
  ts.tv_nsec = (long)((until - (double)ts.tv_sec) * 1e9);
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec += 1;
    ts.tv_nsec -= 1000000000L;
  }
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
  }
}
