#include "mcompress/events.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "mcompress/model.h"
#include "mcompress/train.h"

namespace mc {

namespace {

std::string fmtd(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

}  // namespace

void EventSink::emit(const std::string& event, const std::string& fields) const {
  if (!json) return;
  nlohmann::json line = {{"event", event}};
  if (!fields.empty()) line.update(nlohmann::json::parse(fields));
  if (lines) {
    lines(line.dump());
    return;
  }
  std::printf("%s\n", line.dump().c_str());
  std::fflush(stdout);
}

void EventSink::print(const std::string& line) const {
  if (!text()) return;
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

std::string eta_text(double s) {
  char b[32];
  if (s >= 3600) std::snprintf(b, sizeof b, "%dh%02dm", int(s / 3600), int(s / 60) % 60);
  else std::snprintf(b, sizeof b, "%dm%02ds", int(s / 60), int(s) % 60);
  return b;
}

std::function<void(const std::string&, const LayerInfo&, int64_t, int64_t)> EventSink::layer_progress(
    const std::string& method) const {
  struct State {
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    std::string phase;
  };
  auto st = std::make_shared<State>();
  const bool tty = ::isatty(1) != 0;
  const EventSink self = *this;
  return [=](const std::string& phase, const LayerInfo& l, int64_t i, int64_t n) {
    if (self.quiet && !self.json) return;
    if (phase != st->phase) st->phase = phase, st->start = std::chrono::steady_clock::now();
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - st->start).count();
    const double eta = i > 1 ? el / double(i - 1) * double(n - i + 1) : 0.0;
    if (self.json) {
      self.emit("progress", nlohmann::json({{"method", method}, {"phase", phase}, {"layer", l.name}, {"i", i},
                                            {"n", n}, {"elapsed_s", el}, {"eta_s", eta}}).dump());
      return;
    }
    if (tty)
      std::printf("\r%s %s layer %lld/%lld %-32s %6.1f s, ETA %5.0f s", method.c_str(), phase.c_str(),
                  static_cast<long long>(i), static_cast<long long>(n), l.name.c_str(), el, eta);
    else
      std::printf("%s %s layer %lld/%lld %s (%.1f s elapsed, ETA %.0f s)\n", method.c_str(), phase.c_str(),
                  static_cast<long long>(i), static_cast<long long>(n), l.name.c_str(), el, eta);
    std::fflush(stdout);
  };
}

std::function<void(int, int, const char*, int64_t, int64_t)> EventSink::pass_progress(const std::string& method) const {
  auto start = std::make_shared<std::chrono::steady_clock::time_point>();
  const bool tty = ::isatty(1) != 0;
  const EventSink self = *this;
  return [=](int block, int blocks, const char* pass, int64_t done, int64_t total) {
    if (self.quiet && !self.json) return;
    // Each pass reports 0 tokens when it starts (a true-sequential block runs several statistics passes):
    // its clock starts there.
    const auto now = std::chrono::steady_clock::now();
    if (done == 0) {
      *start = now;
      return;
    }
    const double el = std::chrono::duration<double>(now - *start).count();
    const double rate = el > 0 ? double(done) / el : 0.0;
    if (self.json) {
      self.emit("forward", nlohmann::json({{"method", method}, {"pass", pass},
                                            {"block", block}, {"blocks", blocks}, {"tokens", done},
                                            {"total", total}, {"elapsed_s", el}}).dump());
      return;
    }
    if (tty)
      std::printf("\r%s block %d/%d %s pass %lld/%lld tokens, %.0f tokens/s%-12s", method.c_str(), block + 1, blocks,
                  pass, static_cast<long long>(done), static_cast<long long>(total), rate, "");
    else if (done == total)
      std::printf("%s block %d/%d %s pass: %lld tokens in %.1f s\n", method.c_str(), block + 1, blocks, pass,
                  static_cast<long long>(total), el);
    std::fflush(stdout);
  };
}

void EventSink::end_progress() const {
  if (text() && ::isatty(1)) std::printf("\r%-100s\r", "");
}

std::function<void(const TrainProgress&)> EventSink::train_progress() const {
  const bool tty = ::isatty(STDOUT_FILENO) != 0;
  const EventSink self = *this;
  return [self, tty](const TrainProgress& p) {
    if (self.json) {
      nlohmann::json j = {{"step", p.step}, {"steps", p.steps}, {"loss", p.loss}, {"lr", p.lr},
                          {"items_per_s", p.items_per_s}, {"unit", p.unit}, {"eta_s", p.eta_s}};
      for (const auto& [name, v] : p.parts) j["parts"][name] = v;
      if (p.valid_loss >= 0) j["held_out_loss"] = p.valid_loss;
      self.emit("train", j.dump());
      return;
    }
    if (self.quiet) return;
    const bool report = p.valid_loss >= 0 || p.step == p.steps || p.step % 50 == 0;
    if (!tty && !report) return;
    std::string s = "step " + fmtd("%5.0f", double(p.step)) + "/" + std::to_string(p.steps) + "  loss " +
                    fmtd("%.4f", p.loss);
    if (p.parts.size() > 1)
      for (const auto& [name, v] : p.parts) s += " " + name + " " + fmtd("%.3f", v);
    s += "  lr " + fmtd("%.2e", p.lr) + "  " + fmtd("%6.0f", p.items_per_s) + " " + p.unit + "/s  ETA " +
         eta_text(p.eta_s);
    if (p.valid_loss >= 0) s += "  held-out " + fmtd("%.4f", p.valid_loss);
    if (tty) std::printf("\r%s%s", s.c_str(), report ? "\n" : "");
    else std::printf("%s\n", s.c_str());
    std::fflush(stdout);
  };
}

}  // namespace mc
