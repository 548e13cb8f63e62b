/* A line-protocol program for a series of generated patches (mkpatch_test): it reads a number
 * per line and answers twice(clamp(n)). twice() and answer() assert, so their code holds
 * __LINE__; main() reads `config`, so a change of config's layout must be refused. */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>

struct config {
    long limit;
} config = {10};

__attribute__((noinline)) long clamp(long v) {
    return v > config.limit ? config.limit : v;
}

__attribute__((noinline)) long twice(long v) {
    assert(v < 1000000);
    return 2 * v;
}

__attribute__((noinline)) long answer(long v) {
    assert(v >= 0);
    return twice(clamp(v));
}

int main(void) {
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("READY\n");
    while (fgets(line, sizeof line, stdin)) {
        if (config.limit < 0)
            break;
        printf("%ld\n", answer(atol(line)));
    }
    return 0;
}
