#include <cstdio>
int main() { std::puts("mcompress: under construction"); return 0; }
