// Mixed precision: the sensitivity scan and the bit allocation (quant/mixed_precision.h).
#include "mcompress/quant/mixed_precision.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "mcompress/block_driver.h"
#include "mcompress/error.h"
#include "mcompress/model.h"
#include "core/format_number.h"

namespace mc {

namespace {

constexpr const char* kComp = "quantize";

}  // namespace

std::vector<int> allocate_bits(const std::vector<std::vector<double>>& errors, const std::vector<int64_t>& params,
                               const std::vector<int>& bits, double target_bpw) {
  const size_t L = params.size(), C = bits.size();
  if (errors.size() != L || C == 0) fail(kComp, "allocate_bits: ", errors.size(), " error rows for ", L, " layers");
  for (size_t c = 1; c < C; ++c)
    if (bits[c] <= bits[c - 1]) fail(kComp, "candidate bits must be ascending");
  double total = 0, min_cost = 0;
  int64_t g = 0;
  for (size_t l = 0; l < L; ++l) {
    if (errors[l].size() != C) fail(kComp, "allocate_bits: layer ", l, " has ", errors[l].size(), " errors");
    total += double(params[l]);
    min_cost += double(params[l]) * bits[0];
    g = std::gcd(g, params[l]);
  }
  const double budget = target_bpw * total;
  if (min_cost > budget * (1 + 1e-12))
    fail(kComp, "--target-bpw ", target_bpw, " is below the smallest candidate (", bits[0], " bits)");
  // Extra cost over the all-smallest assignment, in units (exact when the unit divides every
  // layer's cost; otherwise rounded up, so the budget still holds).
  constexpr double kMaxUnits = 100000;
  double unit = std::max<double>(1.0, double(g));
  const double spare = budget - min_cost;
  if (spare / unit > kMaxUnits) unit = std::ceil(spare / kMaxUnits);
  const int64_t J = static_cast<int64_t>(std::floor(spare / unit + 1e-9));
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> dp(static_cast<size_t>(J + 1), 0.0), next;
  std::vector<std::vector<uint8_t>> choice(L, std::vector<uint8_t>(static_cast<size_t>(J + 1), 0));
  for (size_t l = 0; l < L; ++l) {
    next.assign(dp.size(), inf);
    for (size_t c = 0; c < C; ++c) {
      const int64_t cost = static_cast<int64_t>(std::ceil(double(params[l]) * (bits[c] - bits[0]) / unit - 1e-9));
      for (int64_t j = cost; j <= J; ++j) {
        const double v = dp[static_cast<size_t>(j - cost)] + errors[l][c];
        if (v < next[static_cast<size_t>(j)]) next[static_cast<size_t>(j)] = v, choice[l][static_cast<size_t>(j)] = uint8_t(c);
      }
    }
    dp.swap(next);
  }
  std::vector<int> pick(L);
  int64_t j = J;
  for (size_t l = L; l-- > 0;) {
    const int c = choice[l][static_cast<size_t>(j)];
    pick[l] = c;
    j -= static_cast<int64_t>(std::ceil(double(params[l]) * (bits[c] - bits[0]) / unit - 1e-9));
  }
  return pick;
}

std::vector<int> candidate_bit_widths(std::vector<int> bits) {
  std::sort(bits.begin(), bits.end());
  bits.erase(std::unique(bits.begin(), bits.end()), bits.end());
  for (int b : bits)
    if (b < 2 || b > 8) fail(kComp, "candidate bits ", b, " outside 2..8");
  return bits;
}

BitAllocation allocate_layer_bits(const std::vector<std::vector<double>>& errors, const std::vector<int64_t>& params,
                                  const std::vector<int>& bits, double target_bpw) {
  const std::vector<int> pick = allocate_bits(errors, params, bits, target_bpw);
  BitAllocation a;
  double code_bits = 0, n = 0;
  std::map<int, int> histogram;
  for (size_t i = 0; i < pick.size(); ++i) {
    const int b = bits[static_cast<size_t>(pick[i])];
    a.bits.push_back(b);
    code_bits += double(params[i]) * b;
    n += double(params[i]);
    ++histogram[b];
  }
  std::string cand, hist;
  for (int b : bits) cand += (cand.empty() ? "" : ", ") + std::to_string(b);
  for (auto [b, c] : histogram) hist += (hist.empty() ? "" : ", ") + std::to_string(c) + " x int" + std::to_string(b);
  a.summary = "target " + format_number("%.3g", target_bpw) + " code bits/weight over {" + cand + "}: chose " +
              format_number("%.3f", code_bits / n) + " (" + hist + ")";
  return a;
}

std::map<std::string, std::vector<double>> sensitivity_scan(Model& model, const at::Tensor& calib,
                                                            const std::set<std::string>& targets,
                                                            const SequentialOptions& so, BlockJournal* journal,
                                                            const SensitivityScan& scan) {
  std::map<std::string, std::vector<double>> errors;
  for (const auto& n : targets) errors[n].assign(scan.candidates, 0.0);
  BlockPass pass;
  pass.phase = "scan";
  // Each block once per candidate on the unchanged model (weights restored after each).
  pass.compress = [&](int k, const std::vector<const LayerInfo*>& ls, const BlockStats& st) {
    std::map<std::string, at::Tensor> saved;
    for (const auto& [key, t] : model.params()) saved[key] = t;
    for (size_t c = 0; c < scan.candidates; ++c) {
      const std::vector<double> e = scan.quantize_at(k, ls, st, c);
      for (size_t i = 0; i < ls.size(); ++i) errors[ls[i]->name][c] = e[i];
      for (const auto& [key, t] : saved)
        if (!model.param(key).is_same(t)) model.bind_param(key, t);  // the saved tensor itself (kept narrow)
    }
  };
  // Finished blocks of an interrupted scan: their errors from the journal, the scan goes on after them.
  pass.restore = [&](int, const BlockJournal::Entry& e) {
    for (const auto& [key, v] : e.record.numbers) {
      const size_t hash = key.rfind('#');
      errors.at(key.substr(0, hash))[std::stoul(key.substr(hash + 1))] = v;
    }
    if (scan.restored) scan.restored(static_cast<int64_t>(e.record.numbers.size()));
  };
  pass.save = [&](int k, BlockJournal::Entry& e) {
    for (const auto& l : model.layers())
      if (l.block == k && errors.count(l.name))
        for (size_t c = 0; c < scan.candidates; ++c)
          e.record.numbers[l.name + "#" + std::to_string(c)] = errors[l.name][c];
  };
  run_block_pass(model, calib, targets, so, journal, pass);
  return errors;
}

}  // namespace mc
