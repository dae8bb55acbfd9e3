// Where a job's progress and results go. Every job of the pipeline (pipeline.h) takes an EventSink;
// there are no process globals, so two jobs in one process (the Python bindings) do not share one.
//   json = false: text on stdout (progress lines; a terminal's line is rewritten in place), nothing
//                 but results when quiet
//   json = true:  one JSON object per event, {"event": NAME, ...fields}, to `lines` (stdout when empty)
#pragma once
#include <cstdint>
#include <functional>
#include <string>

namespace mc {

struct LayerInfo;
struct TrainProgress;

struct EventSink {
  bool quiet = false;
  bool json = false;
  std::function<void(const std::string& json_line)> lines;  // json mode: where lines go ({} = stdout)

  // One event: fields is a JSON object's text ("" for none). Only in json mode; text mode ignores it.
  void emit(const std::string& event, const std::string& fields_json = "") const;
  // Text for people (not in json mode, not when quiet): printf-like convenience is left to callers.
  bool text() const { return !json && !quiet; }
  void print(const std::string& line) const;  // a line of text when text() (flushed)

  // Progress of a pass over layers: json "progress" events, or on a terminal one line rewritten in
  // place ("gptq quantize layer 3/35 layers.0.attention.wv  1.2 s, ETA 12 s"), else a plain line per
  // layer. The clock restarts when the phase changes.
  std::function<void(const std::string& phase, const LayerInfo& layer, int64_t i, int64_t n)> layer_progress(
      const std::string& method) const;
  // Progress of a calibration's block forward passes (SequentialOptions::pass_progress): json "forward"
  // events (method, pass, block, blocks, tokens, total, elapsed_s), on a terminal the line rewritten per batch with tokens/s, else one line
  // per pass once it is done ("gptq block 3/16 statistics pass: 128 sequences in 24.1 s, 2,720 tokens/s").
  std::function<void(int block, int blocks, const char* pass, int64_t done, int64_t total)> pass_progress(
      const std::string& method) const;
  void end_progress() const;  // clears the terminal's progress line
  // Progress of a training run (train, distill): "train" events, else a line every 50 steps and on
  // evaluation steps with the loss and its terms, lr, throughput, ETA and the held-out loss.
  std::function<void(const TrainProgress&)> train_progress() const;
};

// "1m05s", "2h03m": a duration for ETAs.
std::string eta_text(double seconds);

}  // namespace mc
