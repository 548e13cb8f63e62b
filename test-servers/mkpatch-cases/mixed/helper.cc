// The C++ part of the mixed test program.
extern "C" int helper(int x) { return x * 2; }
