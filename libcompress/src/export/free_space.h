// The check every export makes before writing: is there room for the output?
#pragma once
#include <cstdint>
#include <string>

namespace mc {

// Fails before anything is written when the filesystem that will hold `out` (a file or directory, existing
// or not) has less than `bytes` available: one line naming the output, what is needed and what is
// available (InputError: exit status 2), with `what` (what the bytes are for) in parentheses when given.
// Does nothing when the free space cannot be read.
void require_free_space(const std::string& out, uint64_t bytes, const char* component,
                        const std::string& what = "");

}  // namespace mc
