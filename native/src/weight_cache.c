/*
 * Weight cache — the packed weights of a load (the arena of qw_own_weights:
 * the int8 copies and the LM head's screen, the BF16 set's panels, AMX tiles)
 * kept in a file, so that the next load of the same checkpoint by the same
 * library with the same kernels maps them instead of computing them: no
 * quantizing, no fresh pages to zero, and the processes that map one file
 * share one copy of it in the page cache (a pool's replicas on one node).
 *
 * The file: the arena's bytes from offset 0, then at a page boundary the key
 * (what the bytes depend on: this library file, the kernels and precision, the
 * quantization group, the screen, config.json and each checkpoint file; each
 * file by path, size, mtime, device and inode), then a footer (magic, the two
 * sizes). It is mapped 2 MiB aligned, so that a file system that keeps large
 * folios (ext4 and XFS on recent kernels) gives it huge pages as the anonymous
 * arena has them.
 * A file with another key is written again: the load that writes it packs
 * straight into a shared mapping of a new file (its room reserved first with
 * fallocate, so that no page fault can find the disk full), which becomes the
 * cache once the key and footer follow and it is on disk; where the file
 * system cannot reserve the room, the anonymous arena is written out at the
 * end. Always under a temporary name, renamed: a load never maps half a file.
 * A load that writes removes the files of checkpoints that are gone.
 * A file that cannot be read or written is a load without it; a load fails only where a file holds this key
 * and not this load's bytes (a library bug: the file is removed), or where the
 * file just written cannot be mapped in the arena's place.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* dladdr */
#endif
#include "internal.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "quant.h"

#define QW_WCACHE_MAGIC "QWENWC01"

typedef struct {
    char magic[8];
    uint64_t data_bytes; /* the arena's bytes, at offset 0 */
    uint64_t key_bytes;  /* the key's, at data_bytes rounded up to a page */
    uint64_t pad;
} footer;

static size_t page_round(size_t n) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    return (n + page - 1) / page * page;
}

static uint64_t fnv1a(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h;
}

/* qw_file_line of a file by its path. */
static int file_line(char *out, size_t n, const char *path) {
    struct stat sb;
    return qw_file_line(out, n, path, stat(path, &sb) == 0 ? &sb : NULL);
}

static char *build_key(const qwen_context *ctx, const char *model_dir) {
    Dl_info info;
    const char *lib = dladdr((void *)qwen_load, &info) && info.dli_fname ? info.dli_fname : NULL;
    char cfg[4200]; /* a realpath and the name */
    snprintf(cfg, sizeof(cfg), "%s/config.json", model_dir);
    char head[8192];
    int n = snprintf(head, sizeof(head), "libqwen %s weight cache 1\nkernels %s\nprecision %s\ngroup %d\nscreen %d\nlibrary ",
                     qwen_version(), ctx->kernels_name, qwen_precision_name(ctx->precision), QW_Q8_GROUP,
                     ctx->head_blocks > 0);
    n += lib ? file_line(head + n, sizeof(head) - (size_t)n, lib)
             : snprintf(head + n, sizeof(head) - (size_t)n, "static %s %s\n", __DATE__, __TIME__);
    if ((size_t)n < sizeof(head)) n += snprintf(head + n, sizeof(head) - (size_t)n, "config ");
    if ((size_t)n < sizeof(head)) n += file_line(head + n, sizeof(head) - (size_t)n, cfg);
    if ((size_t)n >= sizeof(head)) return NULL;
    const char *files = ctx->st.files ? ctx->st.files : "";
    char *key = malloc((size_t)n + strlen(files) + 1);
    if (key) {
        memcpy(key, head, (size_t)n);
        strcpy(key + n, files);
    }
    return key;
}

/* The file's first len bytes (page-rounded) 2 MiB aligned (huge folios where the file system keeps
 * them): read only and populated, or (writable) shared for the packing to write. */
static char *map_aligned(int fd, size_t len, int writable) {
    return writable ? qw_map_huge(len, PROT_READ | PROT_WRITE, MAP_SHARED, fd)
                    : qw_map_huge(len, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd);
}

/* The key of a whole cache file (its footer in *f), malloc'ed and NUL-terminated; NULL where the
 * file is not one (not a regular file, too short, no magic, sizes that do not add up, a key of 16 MiB
 * or more). The callers open with O_NONBLOCK: a FIFO by that name must not wait for a writer. */
static char *read_key(int fd, footer *f) {
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size < (off_t)sizeof(*f)) return NULL;
    if (pread(fd, f, sizeof(*f), sb.st_size - (off_t)sizeof(*f)) != (ssize_t)sizeof(*f)) return NULL;
    if (memcmp(f->magic, QW_WCACHE_MAGIC, 8) || f->key_bytes >= (1u << 24) || f->data_bytes > (uint64_t)sb.st_size ||
        page_round(f->data_bytes) + f->key_bytes + sizeof(*f) != (uint64_t)sb.st_size)
        return NULL;
    char *key = malloc(f->key_bytes + 1);
    if (key && pread(fd, key, f->key_bytes, (off_t)page_round(f->data_bytes)) == (ssize_t)f->key_bytes) {
        key[f->key_bytes] = 0;
        return key;
    }
    free(key);
    return NULL;
}

/* The file's data bytes where it is whole and holds exactly this key, else 0. */
static size_t read_matching(int fd, const char *key) {
    footer f;
    char *k = read_key(fd, &f);
    const int same = k && f.data_bytes && f.key_bytes == strlen(key) && !memcmp(k, key, f.key_bytes);
    free(k);
    return same ? (size_t)f.data_bytes : 0;
}

/* Whether the checkpoint of a cache file is gone: its key names a config.json that no longer
 * exists (a file that is not a whole cache file, or whose key has no such line, is not judged). */
static int checkpoint_gone(const char *path) {
    const int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return 0;
    footer f;
    char *key = read_key(fd, &f);
    close(fd);
    /* "config <path> <size> <mtime> <device>:<inode>" (qw_file_line), the path being the rest */
    char *line = key ? strstr(key, "\nconfig ") : NULL, *end = line ? strchr(line + 8, '\n') : NULL;
    char *at = end; /* the path ends before the line's last three fields */
    for (int field = 0; field < 3 && at; field++) at = memrchr(line + 8, ' ', (size_t)(at - line - 8));
    int gone = 0;
    if (at) {
        *at = 0;
        struct stat cb;
        gone = stat(line + 8, &cb) != 0 && errno == ENOENT;
    }
    free(key);
    return gone;
}

/* What a write leaves for others to tidy, removed: this file's temporaries older than an hour
 * (a writer killed mid-write; a running write is seconds old), and the cache files of
 * checkpoints that are gone (a model directory deleted or moved). */
static void remove_leftovers(const char *path) {
    const char *slash = strrchr(path, '/');
    char dir[4200];
    snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
    const char *name = slash + 1;
    const size_t n = strlen(name);
    DIR *d = opendir(dir);
    if (!d) return;
    const time_t old = time(NULL) - 3600;
    for (struct dirent *e; (e = readdir(d));) {
        const size_t len = strlen(e->d_name);
        const int temporary = len > n + 5 && !strncmp(e->d_name, name, n) && e->d_name[n] == '.' &&
                              !strcmp(e->d_name + len - 4, ".tmp");
        const int other = len > 4 && !strcmp(e->d_name + len - 4, ".qwc") && strcmp(e->d_name, name);
        if (!temporary && !other) continue;
        char p[8500];
        struct stat sb;
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        if (lstat(p, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
        if (temporary ? sb.st_mtime < old : checkpoint_gone(p)) unlink(p);
    }
    closedir(d);
}

void qw_wcache_begin(qwen_context *ctx, const char *dir, const char *model_dir) {
    qw_wcache *w = &ctx->wcache;
    if (!dir || !dir[0]) return;
    char real[4096];
    const char *md = realpath(model_dir, real) ? real : model_dir;
    w->key = build_key(ctx, md);
    const char *base = strrchr(md, '/');
    base = base && base[1] ? base + 1 : "model";
    char slot[8192]; /* one file per checkpoint directory, kernels and precision: a new library replaces it */
    snprintf(slot, sizeof(slot), "%s\n%s\n%s", md, ctx->kernels_name, qwen_precision_name(ctx->precision));
    const size_t plen = strlen(dir) + strlen(base) + 64;
    w->path = malloc(plen);
    if (!w->key || !w->path) {
        qw_wcache_free(ctx);
        return;
    }
    snprintf(w->path, plen, "%s/%s-%016llx.qwc", dir, base, (unsigned long long)fnv1a(slot));
    w->state = QW_WCACHE_MISS;
    const int fd = open(w->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return;
    const size_t bytes = read_matching(fd, w->key);
    char *p = bytes ? map_aligned(fd, page_round(bytes), 0) : NULL;
    close(fd);
    if (!p) return;
    ctx->arena = p; /* qw_own_weights hands out the same offsets as the load that wrote it */
    ctx->arena_size = page_round(bytes);
    ctx->arena_tried = 1;
    w->bytes = bytes;
    w->state = QW_WCACHE_HIT;
}

/* A new file for this process and moment (two writers never share one), open for writing. */
static int open_temporary(const char *path, char *tmp, size_t n, int rdwr) {
    snprintf(tmp, n, "%s.%ld-%llx.tmp", path, (long)getpid(), (unsigned long long)(qw_now_ms() * 1e3));
    return open(tmp, (rdwr ? O_RDWR : O_WRONLY) | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
}

char *qw_wcache_arena(qwen_context *ctx, size_t size) {
    qw_wcache *w = &ctx->wcache;
    if (w->state != QW_WCACHE_MISS || w->tmp) return NULL;
    char tmp[8300];
    const int fd = open_temporary(w->path, tmp, sizeof(tmp), 1);
    if (fd < 0) return NULL;
    /* The room reserved on disk before a page is written: a fault in the packing can never find the
     * disk full (SIGBUS). A file system that cannot reserve it takes the anonymous arena. */
    char *p = fallocate(fd, 0, 0, (off_t)size) == 0 ? map_aligned(fd, size, 1) : NULL;
    w->tmp = p ? strdup(tmp) : NULL;
    if (!w->tmp) {
        if (p) munmap(p, size);
        close(fd);
        unlink(tmp);
        return NULL;
    }
    w->fd = fd;
    return p;
}

int qw_wcache_has(const qwen_context *ctx, const void *p) {
    return ctx->wcache.state == QW_WCACHE_HIT && (const char *)p >= ctx->arena &&
           (const char *)p < ctx->arena + ctx->wcache.bytes;
}

static int pwrite_all(int fd, const void *p, size_t n, off_t at) {
    for (const char *c = p; n;) {
        const ssize_t k = pwrite(fd, c, n, at);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        c += k, n -= (size_t)k, at += k;
    }
    return 0;
}

static int last_errno(void) { return errno ? errno : EIO; }

/* fd (the temporary tmp) holds the arena's bytes [0, used): the key at the next page (a hole
 * between) and the footer after it, on disk, closed, renamed over path (or removed); errno or 0. */
static int complete_file(int fd, const char *tmp, const char *path, size_t used, const char *key) {
    const size_t klen = strlen(key), at = page_round(used);
    footer f = {{0}, used, klen, 0};
    memcpy(f.magic, QW_WCACHE_MAGIC, 8);
    int rc = pwrite_all(fd, key, klen, (off_t)at);
    if (!rc) rc = pwrite_all(fd, &f, sizeof(f), (off_t)(at + klen));
    if (!rc) rc = fsync(fd); /* the bytes on disk before the name: a crash leaves no file of zeros */
    int e = rc ? last_errno() : 0;
    if (close(fd) != 0 && !e) e = last_errno();
    if (!e && rename(tmp, path) != 0) e = last_errno();
    if (e) unlink(tmp);
    return e;
}

/* The anonymous arena's [0, used) copied into a new file completed over the slot; errno or 0. */
static int write_file(const qwen_context *ctx, const char *path, const char *key) {
    char tmp[8300];
    const int fd = open_temporary(path, tmp, sizeof(tmp), 0);
    if (fd < 0) return last_errno();
    if (pwrite_all(fd, ctx->arena, ctx->arena_used, 0)) {
        const int e = last_errno();
        close(fd);
        unlink(tmp);
        return e;
    }
    return complete_file(fd, tmp, path, ctx->arena_used, key);
}

/* The temporary file of a shared arena goes (a load that failed, or a file not completed). */
static void drop_temporary(qw_wcache *w) {
    if (!w->tmp) return;
    close(w->fd);
    unlink(w->tmp);
    free(w->tmp);
    w->tmp = NULL;
}

/* A shared arena's file cut to the packed bytes and completed over the slot; errno or 0. The arena
 * keeps its pages either way. */
static int finish_file(qwen_context *ctx) {
    qw_wcache *w = &ctx->wcache;
    const size_t len = page_round(ctx->arena_used);
    if (ctx->arena_size > len) { /* nothing past the end of the file stays mapped */
        munmap(ctx->arena + len, ctx->arena_size - len);
        ctx->arena_size = len;
    }
    int e = ftruncate(w->fd, (off_t)len) ? last_errno() : 0;
    if (e) {
        close(w->fd);
        unlink(w->tmp);
    } else {
        e = complete_file(w->fd, w->tmp, w->path, ctx->arena_used, w->key);
    }
    free(w->tmp);
    w->tmp = NULL;
    return e;
}

int qw_wcache_end(qwen_context *ctx, char *err, size_t err_size) {
    qw_wcache *w = &ctx->wcache;
    if (w->state == QW_WCACHE_HIT) {
        if (ctx->arena_used == w->bytes) return 0;
        unlink(w->path);
        snprintf(err, err_size, "weight cache %s did not match this load (removed; load again)", w->path);
        return QWEN_ERR_FORMAT;
    }
    if (w->state != QW_WCACHE_MISS) return 0;
    if (!ctx->arena || !ctx->arena_used) { /* nothing packed (EXACT on most kernel sets) */
        drop_temporary(w);
        w->state = QW_WCACHE_OFF;
        return 0;
    }
    remove_leftovers(w->path);
    /* packed into the file's own pages (qw_wcache_arena), or copied from the anonymous arena */
    const int e = w->tmp ? finish_file(ctx) : write_file(ctx, w->path, w->key);
    if (e) {
        w->state = QW_WCACHE_FAILED;
        w->err_no = e;
        return 0;
    }
    w->state = QW_WCACHE_WRITTEN;
    /* The file's pages in the arena's place, read only (the same bytes): shared with the next load's,
     * and mapped with huge pages where the file system keeps large folios. */
    const int fd = open(w->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return 0;
    const size_t len = page_round(ctx->arena_used);
    const int mapped = len > ctx->arena_size ||
                       mmap(ctx->arena, len, PROT_READ, MAP_PRIVATE | MAP_FIXED | MAP_POPULATE, fd, 0) != MAP_FAILED;
    close(fd);
    if (!mapped) { /* a failed MAP_FIXED may have taken the arena's pages with it */
        snprintf(err, err_size, "cannot map the weight cache %s just written", w->path);
        return QWEN_ERR_IO;
    }
#ifdef MADV_HUGEPAGE
    if (len <= ctx->arena_size) madvise(ctx->arena, len, MADV_HUGEPAGE);
#endif
    return 0;
}

void qw_wcache_free(qwen_context *ctx) {
    drop_temporary(&ctx->wcache);
    free(ctx->wcache.key);
    free(ctx->wcache.path);
    ctx->wcache.key = ctx->wcache.path = NULL;
}
