/* The MMAP store kind: the rows live in a file mapped into memory (MAP_SHARED), for buffers
 * larger than RAM. The kernel pages rows in on first touch and writes them back under memory
 * pressure; lh_aq_store_prefetch asks it to read the next micro-batch's rows ahead of use.
 *
 * Disk space is reserved when the file is created (fallocate). A write to a page of a sparse
 * mapping that the filesystem cannot back (disk full) is not an error return but SIGBUS,
 * which kills the process in the middle of a training step; reserving the blocks up front
 * turns that into an LH_ERR_IO at lh_aq_store_create. On ext4 and xfs the reservation is
 * quick at any size (the blocks are marked unwritten, not zeroed), but it does take the disk
 * space for the whole capacity at once. Filesystems that cannot reserve (some network and
 * older filesystems) get a sparse file instead, and with it the SIGBUS risk when full. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "aqsgd/store_internal.h"
#include "common/internal.h"

static size_t buffer_bytes(lh_aq_store store) { return store->config.capacity * store->config.row_bytes; }

static size_t page_bytes(void) {
  long p = sysconf(_SC_PAGESIZE);
  return p > 0 ? (size_t)p : 4096;
}

/* Gives the file its size, reserving the disk blocks where the filesystem can. fallocate(2)
 * rather than posix_fallocate(3): where the filesystem has no fallocate, glibc's
 * posix_fallocate emulates it by writing to every block, which is slow for a large store and
 * still not a guarantee on every filesystem; a sparse file is the better fallback there. */
static lh_status size_file(int fd, size_t bytes, const char *path) {
  if (bytes == 0)
    return LH_SUCCESS; /* O_TRUNC left it empty */
  int r;
  do
    r = fallocate(fd, 0, 0, (off_t)bytes);
  while (r != 0 && errno == EINTR);
  if (r == 0)
    return LH_SUCCESS;
  int e = errno;
  if (e == ENOSPC)
    return lh_error(LH_ERR_IO, "lh_aq_store_create: not enough disk space for %zu bytes at '%s'", bytes, path);
  if (e != EOPNOTSUPP && e != EINVAL && e != ENOSYS)
    return lh_error(LH_ERR_IO, "lh_aq_store_create: reserving %zu bytes for '%s': %s", bytes, path, strerror(e));
  if (ftruncate(fd, (off_t)bytes) != 0)
    return lh_error(LH_ERR_IO, "lh_aq_store_create: sizing '%s' to %zu bytes: %s", path, bytes, strerror(errno));
  lh_log(LH_LOG_INFO, "aqsgd",
         "the filesystem of '%s' cannot reserve space: the MMAP store is a sparse file, and a full disk "
         "will show up as SIGBUS on a write",
         path);
  return LH_SUCCESS;
}

static lh_status mmap_open(lh_aq_store store) {
  const char *path = store->config.path;
  size_t bytes = buffer_bytes(store);
  if (bytes > (size_t)INT64_MAX)
    return lh_error(LH_ERR_IO, "lh_aq_store_create: %zu bytes is too large for a file ('%s')", bytes, path);
  /* 0600: the rows are activations of the training data. */
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    return lh_error(LH_ERR_IO, "lh_aq_store_create: cannot create the MMAP store's file '%s': %s", path,
                    strerror(errno));
  store->fd = fd;
  lh_status st = size_file(fd, bytes, path);
  if (st != LH_SUCCESS)
    goto fail;
  if (bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      st = lh_error(LH_ERR_IO, "lh_aq_store_create: cannot map %zu bytes of '%s': %s", bytes, path,
                    strerror(errno));
      goto fail;
    }
    store->base = p;
    /* Rows are touched in the order examples come, not the file's: read-ahead on a fault
     * would mostly bring in rows nobody asked for. Prefetch says what is wanted instead. */
    (void)madvise(p, bytes, MADV_RANDOM);
  }
  return LH_SUCCESS;

fail:
  /* The file is ours (we created or truncated it) and useless now: remove it whatever
   * keep_file says, and leave close nothing to do. */
  close(fd);
  store->fd = -1;
  unlink(path);
  return st;
}

static void mmap_close(lh_aq_store store) {
  if (store->base)
    munmap(store->base, buffer_bytes(store));
  store->base = NULL;
  if (store->fd >= 0) { /* only a file we opened is ours to remove */
    close(store->fd);
    store->fd = -1;
    if (!store->config.keep_file)
      unlink(store->config.path);
  }
}

static void mmap_advise(lh_aq_store store, size_t begin, size_t end) {
  (void)madvise((char *)store->base + begin, end - begin, MADV_WILLNEED); /* advice: failure is harmless */
}

/* One MADV_WILLNEED per run of touching or overlapping page ranges. The slots come in row
 * order from lh_aq_store_prefetch; in any other order this is still right, only with more
 * calls. */
static void mmap_prefetch(lh_aq_store store, const int64_t *slots, size_t count) {
  if (!store->base)
    return;
  size_t page = page_bytes(), row = store->config.row_bytes;
  size_t run_begin = 0, run_end = 0;
  int in_run = 0;
  for (size_t i = 0; i < count; i++) {
    size_t begin = (size_t)slots[i] * row / page * page;
    size_t end = ((size_t)slots[i] * row + row + page - 1) / page * page; /* within the mapping's last page */
    if (in_run && begin <= run_end && end >= run_begin) {
      run_begin = begin < run_begin ? begin : run_begin;
      run_end = end > run_end ? end : run_end;
      continue;
    }
    if (in_run)
      mmap_advise(store, run_begin, run_end);
    run_begin = begin;
    run_end = end;
    in_run = 1;
  }
  if (in_run)
    mmap_advise(store, run_begin, run_end);
}

const lh_aq_store_ops lh_aq_store_mmap_ops = {"mmap", mmap_open, mmap_close, mmap_prefetch};
