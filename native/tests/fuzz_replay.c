/*
 * Runs a fuzz target (fuzz_checkpoint.c, fuzz_json.c) over saved inputs, as libFuzzer would run
 * one: each file named, or each file in each directory named. The tests build it with the
 * target under the plain and the sanitizer builds, over native/tests/corpus/ (the seeds and
 * every input a fuzzer found to crash, kept so that it cannot come back).
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    fseek(f, 0, SEEK_END);
    const long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
    const int ok = buf && fread(buf, 1, (size_t)n, f) == (size_t)n;
    fclose(f);
    if (ok) LLVMFuzzerTestOneInput(buf, (size_t)n);
    free(buf);
    return ok;
}

int main(int argc, char **argv) {
    int done = 0, failed = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "%s: not found\n", argv[i]);
            failed++;
        } else if (S_ISDIR(st.st_mode)) {
            DIR *d = opendir(argv[i]);
            for (struct dirent *e; d && (e = readdir(d));) {
                if (e->d_name[0] == '.') continue;
                char p[4096];
                snprintf(p, sizeof(p), "%s/%s", argv[i], e->d_name);
                if (run_file(p)) done++; else failed++;
            }
            if (d) closedir(d);
        } else if (run_file(argv[i])) {
            done++;
        } else {
            failed++;
        }
    }
    printf("replay: %d passed, %d failed\n", done, failed);
    return failed || !done;
}
