/* A small C program with a C++ part and thread-local state: the cases polus-mkpatch refuses
 * (mkpatch_test). `tally()` uses a __thread variable of the running program; `helper()` is C++. */
#include <stdio.h>

int helper(int x); /* helper.cc */

static __thread long tally_here;

__attribute__((noinline)) long tally(long n) {
    tally_here += n;
    return tally_here;
}

int main(void) {
    printf("%ld %d\n", tally(2), helper(3));
    return 0;
}
