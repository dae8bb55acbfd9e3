// The BPE merge loop shared by the tokenizers: repeatedly replace the adjacent pair with the best
// priority (highest; ties: the leftmost pair) by its merged token, until no pair merges.
//
// The plain loop (llama2.c run.c encode) rescans the whole sequence after every merge: O(n^2) for n
// symbols. Here the symbols form a doubly linked list and the candidate pairs sit in a heap ordered
// by (priority desc, position of the left symbol asc); a merge pushes the two new pairs it creates and
// entries made stale by earlier merges are dropped when popped. The left symbol's original index is a
// valid "leftmost" key because merging never reorders symbols. O(n log n).
#pragma once
#include <cstdint>
#include <queue>
#include <vector>

namespace mc::detail {

struct MergeResult {
  bool ok = false;       // the pair merges
  double priority = 0;   // higher merges first
  int32_t merged = -1;   // id of the merged token
};

// `lookup(left_id, right_id) -> MergeResult`.
template <typename Lookup>
std::vector<int32_t> bpe_merge(std::vector<int32_t> ids, const Lookup& lookup) {
  const size_t n = ids.size();
  if (n < 2) return ids;
  struct Cand {
    double priority;
    uint32_t left, right;
    int32_t left_id, right_id, merged;
  };
  auto worse = [](const Cand& a, const Cand& b) {
    if (a.priority != b.priority) return a.priority < b.priority;
    return a.left > b.left;
  };
  std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> heap(worse);
  constexpr uint32_t kNone = UINT32_MAX;
  std::vector<uint32_t> prev(n), next(n);
  std::vector<char> alive(n, 1);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = i == 0 ? kNone : uint32_t(i - 1);
    next[i] = i + 1 == n ? kNone : uint32_t(i + 1);
  }
  auto consider = [&](uint32_t l, uint32_t r) {
    if (l == kNone || r == kNone) return;
    const MergeResult m = lookup(ids[l], ids[r]);
    if (m.ok) heap.push(Cand{m.priority, l, r, ids[l], ids[r], m.merged});
  };
  for (size_t i = 0; i + 1 < n; ++i) consider(uint32_t(i), uint32_t(i + 1));
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    // Stale when either symbol has since merged into something else or the pair is no longer adjacent.
    if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right || ids[c.left] != c.left_id ||
        ids[c.right] != c.right_id)
      continue;
    ids[c.left] = c.merged;
    alive[c.right] = 0;
    next[c.left] = next[c.right];
    if (next[c.right] != kNone) prev[next[c.right]] = c.left;
    consider(prev[c.left], c.left);
    consider(c.left, next[c.left]);
  }
  std::vector<int32_t> out;
  out.reserve(n);
  for (uint32_t i = 0; i != kNone; i = next[i]) out.push_back(ids[i]);
  return out;
}

}  // namespace mc::detail
