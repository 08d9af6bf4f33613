/*
 * Safetensors — memory-maps every *.safetensors file of a checkpoint
 * directory (one file, or shards listed by model.safetensors.index.json) and
 * indexes its tensors. Weights are used in place; nothing is copied.
 */
#include "internal.h"
#include "json.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

char *qw_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1))) {
            if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
                free(buf);
                buf = NULL;
            } else {
                buf[n] = 0;
                *len = (size_t)n;
            }
        }
    }
    fclose(f);
    return buf;
}

static int parse_dtype(const char *s, qw_dtype *dt, size_t *size) {
    if (!strcmp(s, "BF16")) { *dt = QW_BF16; *size = 2; return 0; }
    if (!strcmp(s, "F16")) { *dt = QW_F16; *size = 2; return 0; }
    if (!strcmp(s, "F32")) { *dt = QW_F32; *size = 4; return 0; }
    return -1;
}

int qw_file_line(char *out, size_t n, const char *path, const struct stat *sb) {
    if (!sb) return snprintf(out, n, "%s -\n", path);
    return snprintf(out, n, "%s %lld %lld.%09ld %llu:%llu\n", path, (long long)sb->st_size,
                    (long long)sb->st_mtim.tv_sec, (long)sb->st_mtim.tv_nsec, (unsigned long long)sb->st_dev,
                    (unsigned long long)sb->st_ino);
}

static int add_file(qw_safetensors *st, const char *path, char *err, size_t err_size) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        snprintf(err, err_size, "cannot open %s", path);
        return QWEN_ERR_IO;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || sb.st_size < 8) {
        close(fd);
        snprintf(err, err_size, "%s: not a safetensors file (too short)", path);
        return QWEN_ERR_FORMAT;
    }
    size_t size = (size_t)sb.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        snprintf(err, err_size, "cannot map %s", path);
        return QWEN_ERR_IO;
    }
    void **maps = realloc(st->maps, (size_t)(st->n_maps + 1) * sizeof(void *));
    size_t *sizes = maps ? realloc(st->map_sizes, (size_t)(st->n_maps + 1) * sizeof(size_t)) : NULL;
    if (maps) st->maps = maps;
    if (sizes) st->map_sizes = sizes;
    if (!maps || !sizes) {
        munmap(map, size);
        snprintf(err, err_size, "out of memory");
        return QWEN_ERR_NOMEM;
    }
    st->maps[st->n_maps] = map;
    st->map_sizes[st->n_maps] = size;
    st->n_maps++;
    char line[8400], real[4096]; /* the file itself: a symlink (a Hugging Face snapshot's) resolved */
    const int ln = qw_file_line(line, sizeof(line), realpath(path, real) ? real : path, &sb);
    const size_t have = st->files ? strlen(st->files) : 0;
    char *files = realloc(st->files, have + (size_t)ln + 1);
    if (!files) {
        snprintf(err, err_size, "out of memory");
        return QWEN_ERR_NOMEM;
    }
    memcpy(files + have, line, (size_t)ln + 1);
    st->files = files;

    uint64_t hlen = 0;
    memcpy(&hlen, map, 8); /* little-endian u64 */
    if (hlen > size - 8) {
        snprintf(err, err_size, "%s: header length %llu exceeds the file", path, (unsigned long long)hlen);
        return QWEN_ERR_FORMAT;
    }
    const char *data = (const char *)map + 8 + hlen;
    size_t data_size = size - 8 - hlen;
    char jerr[256] = "";
    qj_value *h = qj_parse((const char *)map + 8, (size_t)hlen, jerr, sizeof(jerr));
    if (!h || h->type != QJ_OBJECT) {
        qj_free(h);
        snprintf(err, err_size, "%s: bad header: %s", path, jerr);
        return QWEN_ERR_FORMAT;
    }
    int rc = QWEN_OK;
    qw_tensor *ts = realloc(st->tensors, (size_t)(st->n_tensors + h->n) * sizeof(qw_tensor));
    if (!ts) {
        qj_free(h);
        snprintf(err, err_size, "out of memory");
        return QWEN_ERR_NOMEM;
    }
    st->tensors = ts;
    for (int i = 0; i < h->n && rc == QWEN_OK; i++) {
        if (!strcmp(h->keys[i], "__metadata__")) continue;
        const qj_value *e = &h->items[i];
        const qj_value *dt = qj_get_type(e, "dtype", QJ_STRING);
        const qj_value *shape = qj_get_type(e, "shape", QJ_ARRAY);
        const qj_value *off = qj_get_type(e, "data_offsets", QJ_ARRAY);
        qw_tensor t = {0};
        size_t esize = 0;
        if (!dt || !shape || !off || off->n != 2 || shape->n > 4) {
            snprintf(err, err_size, "%s: bad entry for %s", path, h->keys[i]);
            rc = QWEN_ERR_FORMAT;
            break;
        }
        if (parse_dtype(dt->string, &t.dtype, &esize)) {
            /* Tensors we never read (e.g. integer buffers) may have other dtypes. */
            continue;
        }
        size_t count = 1;
        t.ndim = shape->n;
        for (int d = 0; d < shape->n; d++) {
            double v = shape->items[d].number;
            if (shape->items[d].type != QJ_NUMBER || v < 0 || v > 1e12) { rc = QWEN_ERR_FORMAT; break; }
            t.shape[d] = (int64_t)v;
            if (t.shape[d] && count > SIZE_MAX / (size_t)t.shape[d]) { rc = QWEN_ERR_FORMAT; break; } /* wraps */
            count *= (size_t)t.shape[d];
        }
        double b = off->items[0].number, e2 = off->items[1].number;
        if (rc || b < 0 || e2 < b || e2 > (double)data_size || (size_t)(e2 - b) != count * esize) {
            snprintf(err, err_size, "%s: tensor %s has inconsistent offsets", path, h->keys[i]);
            rc = QWEN_ERR_FORMAT;
            break;
        }
        t.data = data + (size_t)b;
        t.nbytes = (size_t)(e2 - b);
        t.name = strdup(h->keys[i]);
        if (!t.name) { rc = QWEN_ERR_NOMEM; break; }
        st->tensors[st->n_tensors++] = t;
    }
    qj_free(h);
    return rc;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int qw_safetensors_open(const char *dir, qw_safetensors *st, char *err, size_t err_size) {
    memset(st, 0, sizeof(*st));
    /* Every *.safetensors file of the directory, in name order; the index
     * file of a sharded checkpoint lists the same files. */
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, err_size, "cannot open model directory %s", dir);
        return QWEN_ERR_IO;
    }
    char **names = NULL;
    int n = 0, cap = 0, rc = QWEN_OK;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!ends_with(de->d_name, ".safetensors")) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            char **nn = realloc(names, (size_t)cap * sizeof(char *));
            if (!nn) { rc = QWEN_ERR_NOMEM; break; }
            names = nn;
        }
        names[n] = strdup(de->d_name);
        if (!names[n]) { rc = QWEN_ERR_NOMEM; break; }
        n++;
    }
    closedir(d);
    if (rc == QWEN_OK && n == 0) {
        snprintf(err, err_size, "no *.safetensors files in %s", dir);
        rc = QWEN_ERR_IO;
    }
    if (rc == QWEN_OK) qsort(names, (size_t)n, sizeof(char *), cmp_str);
    for (int i = 0; i < n && rc == QWEN_OK; i++) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        rc = add_file(st, path, err, err_size);
    }
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    if (rc == QWEN_ERR_NOMEM) snprintf(err, err_size, "out of memory");
    if (rc != QWEN_OK) qw_safetensors_close(st);
    return rc;
}

void qw_safetensors_close(qw_safetensors *st) {
    for (int i = 0; i < st->n_tensors; i++) free(st->tensors[i].name);
    for (int i = 0; i < st->n_maps; i++) munmap(st->maps[i], st->map_sizes[i]);
    free(st->tensors);
    free(st->maps);
    free(st->map_sizes);
    free(st->files);
    memset(st, 0, sizeof(*st));
}

const qw_tensor *qw_safetensors_find(const qw_safetensors *st, const char *name) {
    for (int i = 0; i < st->n_tensors; i++)
        if (!strcmp(st->tensors[i].name, name)) return &st->tensors[i];
    return NULL;
}
