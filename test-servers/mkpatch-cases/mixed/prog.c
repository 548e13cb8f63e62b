/* A small C program with a C++ part and thread-local state: the cases polus-mkpatch refuses or
 * leaves to the author (mkpatch_test). `tally()` uses a __thread variable of the running program;
 * `helper()` is C++; `budget` is a global whose type budget-struct.diff changes incompatibly. */
#include <stdio.h>

int helper(int x); /* helper.cc */

static __thread long tally_here;
long budget = 5;

__attribute__((noinline)) long spend(long n) {
    budget -= n;
    return budget;
}

__attribute__((noinline)) long tally(long n) {
    tally_here += n;
    return tally_here;
}

int main(void) {
    printf("%ld %d %ld\n", tally(2), helper(3), spend(1));
    return 0;
}
