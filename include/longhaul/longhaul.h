/* Longhaul: communication-efficient decentralized training over slow, uneven links.
 * The umbrella header; each part can also be included on its own.
 * All functions return lh_status (see status.h); lh_last_error() gives the detail. */
#ifndef LONGHAUL_H
#define LONGHAUL_H

#include <longhaul/version.h>
#include <longhaul/status.h>
#include <longhaul/env.h>
#include <longhaul/links.h>
#include <longhaul/transport.h>
#include <longhaul/allreduce.h>
#include <longhaul/compress.h>
#include <longhaul/aqsgd.h>
#include <longhaul/pipeline.h>
#include <longhaul/sched.h>
#include <longhaul/probe.h>
#include <longhaul/topo.h>

#endif
