// Report::to_html: one self-contained page (inline CSS and inline SVG; no scripts, fonts, images or
// links to load: a Content-Security-Policy of default-src 'none' says so to the browser too).
// Deterministic: everything shown comes from the Report and versions_string().
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mcompress/report.h"
#include "report_format.h"

namespace mc {

namespace {

using report_detail::change_percent;
using report_detail::fmt_value;
using report_detail::human;

std::string strf(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string strf(const char* f, ...) {
  char buf[256];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

// Text and attribute values: & < > " ' become entities.
std::string esc(std::string_view s) {
  std::string o;
  o.reserve(s.size() + 8);
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string thousands(int64_t n) {
  std::string d = std::to_string(n < 0 ? -n : n), o;
  for (size_t i = 0; i < d.size(); ++i) {
    if (i && (d.size() - i) % 3 == 0) o += ',';
    o += d[i];
  }
  return n < 0 ? "-" + o : o;
}

// Number of UTF-8 code points (for sizing SVG text columns).
size_t u8len(std::string_view s) {
  return static_cast<size_t>(std::count_if(s.begin(), s.end(), [](char c) { return (c & 0xC0) != 0x80; }));
}

// At most n code points: the tail of s after "…" when it is longer (layer names differ at the end).
std::string tail_clip(const std::string& s, size_t n) {
  if (u8len(s) <= n) return s;
  size_t keep = n - 1, i = s.size();
  while (i > 0 && keep > 0) {
    --i;
    if ((s[i] & 0xC0) != 0x80) --keep;
  }
  while (i > 0 && (s[i] & 0xC0) == 0x80) --i;
  return "\u2026" + s.substr(i);
}

std::string head_clip(const std::string& s, size_t n) {
  if (u8len(s) <= n) return s;
  size_t cps = 0, i = 0;
  for (; i < s.size(); ++i)
    if ((s[i] & 0xC0) != 0x80 && cps++ == n - 1) break;
  return s.substr(0, i) + "\u2026";
}

// A minimal element writer: open()/close() keep a stack so elements close in order; text and
// attribute values are always escaped; raw() is for the fixed CSS only.
class Html {
 public:
  using Attrs = std::initializer_list<std::pair<std::string_view, std::string_view>>;

  Html& open(std::string_view tag, Attrs attrs = {}) {
    start(tag, attrs);
    out_ += '>';
    stack_.emplace_back(tag);
    return *this;
  }
  Html& close() {
    out_ += "</" + stack_.back() + '>';
    stack_.pop_back();
    return *this;
  }
  // <tag attrs>text</tag>
  Html& el(std::string_view tag, Attrs attrs, std::string_view text) { return open(tag, attrs).text(text).close(); }
  Html& el(std::string_view tag, std::string_view text) { return el(tag, {}, text); }
  // <tag attrs> with no end tag (HTML void elements: meta)
  Html& void_el(std::string_view tag, Attrs attrs) {
    start(tag, attrs);
    out_ += '>';
    return *this;
  }
  // <tag attrs/> (SVG shapes)
  Html& empty(std::string_view tag, Attrs attrs) {
    start(tag, attrs);
    out_ += "/>";
    return *this;
  }
  Html& text(std::string_view t) {
    out_ += esc(t);
    return *this;
  }
  Html& raw(std::string_view r) {
    out_ += r;
    return *this;
  }
  Html& nl() {
    out_ += '\n';
    return *this;
  }
  std::string finish() {
    while (!stack_.empty()) close();
    return std::move(out_);
  }

 private:
  void start(std::string_view tag, Attrs attrs) {
    out_ += '<';
    out_ += tag;
    for (const auto& [k, v] : attrs) {
      out_ += ' ';
      out_ += k;
      out_ += "=\"";
      out_ += esc(v);
      out_ += '"';
    }
  }
  std::string out_;
  std::vector<std::string> stack_;
};

const char* kCss = R"css(
:root{--bg:#f5f6f8;--fg:#1c2330;--muted:#5e6a79;--card:#fff;--line:#dde1e7;--accent:#3451b2;--good:#1a7f37;
--bad:#c62828;--warn-bg:#fff5d9;--warn-line:#e0a800;--err:#ee8a4f;--err-hi:#c23b22;--bits:#4c78a8;--dense:#a3acb9;
--zebra:#f2f4f7;--hover:rgba(52,81,178,.10)}
@media (prefers-color-scheme:dark){:root{--bg:#14171c;--fg:#e3e7ec;--muted:#9aa5b2;--card:#1c2027;--line:#313845;
--accent:#8ea6ff;--good:#4cc36a;--bad:#ff6b6b;--warn-bg:#372f17;--warn-line:#c99a1a;--bits:#6f9fd8;--dense:#5d6674;
--zebra:#20252d;--hover:rgba(142,166,255,.14)}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1200px;margin:0 auto;padding:28px 24px 48px}
code,pre,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono","Liberation Mono",monospace;
font-size:.88em}
h1{font-size:1.75rem;line-height:1.25;margin:.25rem 0 .5rem;overflow-wrap:anywhere}
h2{font-size:1.15rem;margin:0 0 .8rem}
.eyebrow{color:var(--muted);font-size:.8rem;text-transform:uppercase;letter-spacing:.07em}
.pill{display:inline-block;margin-left:.4rem;padding:0 10px;border-radius:999px;background:var(--accent);color:#fff;
font-weight:600;text-transform:none;letter-spacing:0}
.paths,.meta{margin:.15rem 0;color:var(--muted);overflow-wrap:anywhere}
.paths code{color:var(--fg)}
pre.cmd{white-space:pre-wrap;overflow-wrap:anywhere;background:var(--card);border:1px solid var(--line);
border-radius:8px;padding:10px 12px;margin:.8rem 0 0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:12px;margin:22px 0}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px}
.card .label{color:var(--muted);font-size:.78rem;text-transform:uppercase;letter-spacing:.05em}
.card .value{font-size:1.35rem;font-weight:650;margin:.1rem 0;overflow-wrap:anywhere;font-variant-numeric:tabular-nums}
.card .value.long{font-size:1.1rem}
.card .sub{font-size:.85rem;color:var(--muted);overflow-wrap:anywhere}
.card.gate-fail{border-color:var(--bad);border-width:2px}
.card.gate-pass{border-color:var(--good);border-width:2px}
.good{color:var(--good)!important}.bad{color:var(--bad)!important}
.badge{display:inline-block;padding:1px 12px;border-radius:6px;font-weight:750;color:#fff;letter-spacing:.06em}
.badge.pass{background:var(--good)}.badge.fail{background:var(--bad)}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:18px 20px;margin:16px 0}
section.warnings{background:var(--warn-bg);border-color:var(--warn-line);border-left-width:6px}
section.warnings ul{margin:0;padding-left:1.2rem}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:5px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{font-size:.76rem;text-transform:uppercase;color:var(--muted);letter-spacing:.05em;font-weight:600}
td.num,th.num{text-align:right;white-space:nowrap}
tr.primary td{font-weight:650}
tr.total td{font-weight:650;border-bottom:none}
.tag{display:inline-block;margin-left:.4rem;padding:0 6px;border-radius:4px;border:1px solid var(--line);
font-size:.72rem;font-weight:600;color:var(--muted);vertical-align:1px}
.note{color:var(--muted);font-size:.9rem;margin:.7rem 0 0}
.empty{color:var(--muted);font-style:italic;margin:0}
.track{display:block;min-width:140px;height:10px;margin-top:6px;background:var(--zebra);
border-radius:5px;overflow:hidden}
.track span{display:block;height:100%;background:var(--bits)}
.chart{overflow-x:auto}
.chart svg{display:block;max-width:100%;height:auto}
svg text{fill:var(--fg);font-size:11px}
svg .lname{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono","Liberation Mono",monospace;
font-size:12px}
svg .scheme,svg .tick,svg .val,svg .na{fill:var(--muted)}svg .val.in{fill:#fff}
svg .na{font-style:italic}
svg .head{font-weight:650;font-size:11.5px}
svg .grid{stroke:var(--line);stroke-width:1}
svg .base{stroke:var(--muted);stroke-width:1}
svg .z{fill:var(--zebra)}svg .hit{fill:transparent}
svg g.row:hover .hit{fill:var(--hover)}
svg .err{fill:var(--err)}svg .err.hi{fill:var(--err-hi)}
svg .bits{fill:var(--bits)}svg .bits.dense{fill:var(--dense)}
details>summary{cursor:pointer;font-weight:600;margin:1rem 0 .4rem}
table.kv td:first-child{white-space:nowrap;color:var(--muted);width:1%}
table.kv td:last-child{white-space:pre-wrap;overflow-wrap:anywhere}
table.layers td{font-size:.9rem}
footer{color:var(--muted);font-size:.82rem;margin-top:26px}
@media print{body{background:#fff}section,.card{break-inside:avoid}}
)css";

std::optional<std::string> setting(const Report& r, const std::string& key) {
  auto it = r.settings.find(key);
  if (it == r.settings.end()) return std::nullopt;
  return it->second;
}

// "3.84x smaller" ("1.20x larger"); "" without both sizes.
std::string size_ratio(const Report& r) {
  if (!r.size_before || !r.size_after) return "";
  double x = double(r.size_before) / double(r.size_after);
  return x >= 1 ? strf("%.2fx smaller", x) : strf("%.2fx larger", 1 / x);
}

// "good" when the change goes the metric's better way, "bad" the other way, "" when negligible.
std::string change_class(const MetricRow& m) {
  if (!m.baseline || !m.compressed || *m.baseline == 0) return "";
  double rel = (*m.compressed - *m.baseline) / std::fabs(*m.baseline);
  if (std::fabs(rel) < 5e-5) return "";
  return (rel > 0) == m.higher_is_better ? "good" : "bad";
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

void card(Html& h, std::string_view label, std::string_view value, std::string_view sub,
          std::string_view sub_class = "", std::string_view card_class = "card") {
  h.open("div", {{"class", card_class}});
  h.el("div", {{"class", "label"}}, label);
  h.el("div", {{"class", u8len(value) > 18 ? "value long" : "value"}}, value);
  if (!sub.empty()) h.el("div", {{"class", sub_class.empty() ? "sub" : "sub " + std::string(sub_class)}}, sub);
  h.close().nl();
}

void header_section(Html& h, const Report& r) {
  h.open("header");
  h.open("div", {{"class", "eyebrow"}}).text("mcompress report");
  if (!r.method.empty()) h.el("span", {{"class", "pill"}}, r.method);
  h.close();
  h.el("h1", r.title.empty() ? "Compression report" : r.title);
  if (!r.model.empty() || !r.output.empty()) {
    h.open("p", {{"class", "paths"}});
    h.el("code", r.model.empty() ? "?" : r.model).text(" \u2192 ").el("code", r.output.empty() ? "?" : r.output);
    h.close();
  }
  std::string meta;
  if (!r.created.empty()) meta += r.created + " \u00b7 ";
  meta += versions_string();
  if (!r.seed.empty()) meta += " \u00b7 seed " + r.seed;
  h.el("p", {{"class", "meta"}}, meta);
  if (!r.command_line.empty()) h.el("pre", {{"class", "cmd"}}, r.command_line);
  h.close().nl();
}

void cards_section(Html& h, const Report& r) {
  h.open("div", {{"class", "cards"}}).nl();
  if (auto gate = setting(r, "accuracy gate")) {
    std::string t = lower(*gate);
    bool fail = t.find("fail") != std::string::npos, pass = !fail && t.find("pass") != std::string::npos;
    h.open("div", {{"class", fail ? "card gate-fail" : pass ? "card gate-pass" : "card"}});
    h.el("div", {{"class", "label"}}, "accuracy gate");
    h.open("div", {{"class", "value"}});
    if (fail || pass) h.el("span", {{"class", fail ? "badge fail" : "badge pass"}}, fail ? "FAILED" : "PASSED");
    h.close();
    h.el("div", {{"class", "sub"}}, *gate);
    h.close().nl();
  }
  const MetricRow* primary = nullptr;
  for (const auto& m : r.metrics)
    if (m.is_primary && m.compressed) primary = &m;
  if (primary) {
    const MetricRow& m = *primary;
    std::string value =
        m.baseline ? fmt_value(*m.baseline, m) + " \u2192 " + fmt_value(*m.compressed, m) : fmt_value(*m.compressed, m);
    std::string change = change_percent(m);
    std::string sub =
        (change.empty() ? "" : change + " \u00b7 ") + (m.higher_is_better ? "higher" : "lower") + " is better";
    card(h, m.name, value, sub, change_class(m));
  } else if (r.metrics.empty()) {
    card(h, "quality", "not measured", "no evaluation in this run");
  }
  if (auto ret = r.retention()) {
    std::string on;
    for (const auto& m : r.metrics)
      if (m.is_primary)
        on = "on " + m.name + (m.higher_is_better ? " (compressed / baseline)" : " (baseline / compressed)");
    card(h, "retention", strf("%.2f%%", 100.0 * *ret), on, *ret >= 0.99 ? "good" : *ret < 0.95 ? "bad" : "");
  }
  if (r.size_before || r.size_after)
    card(h, "file size", human(r.size_before) + " \u2192 " + human(r.size_after), size_ratio(r));
  double bits = 0, params = 0;
  for (const auto& l : r.layers) bits += l.bits_per_weight * double(l.params), params += double(l.params);
  if (params > 0)
    card(h, "bits per weight", strf("%.3f", bits / params),
         "stored, params-weighted over " + std::to_string(r.layers.size()) +
             (r.layers.size() == 1 ? " layer (" : " layers (") + thousands(int64_t(params)) + " weights)");
  if (auto speed = setting(r, "speed")) {
    size_t cut = speed->find(" (");
    card(h, "speed", cut == std::string::npos ? *speed : speed->substr(0, cut),
         cut == std::string::npos ? "" : speed->substr(cut + 1));
  }
  if (!r.steps.empty()) {
    double total = 0;
    const StepRow* longest = &r.steps.front();
    for (const auto& s : r.steps) {
      total += s.seconds;
      if (s.seconds > longest->seconds) longest = &s;
    }
    std::string sub = std::to_string(r.steps.size()) + (r.steps.size() == 1 ? " step" : " steps");
    if (r.steps.size() > 1 && total > 0)
      sub += strf("; longest: ") + longest->name + strf(" (%.0f%%)", 100 * longest->seconds / total);
    card(h, "time", strf("%.2f s", total), sub);
  }
  h.close().nl();
}

void warnings_section(Html& h, const Report& r) {
  if (r.warnings.empty()) return;
  h.open("section", {{"class", "warnings"}});
  h.el("h2", "\u26a0 " + std::string(r.warnings.size() == 1 ? "Warning" : "Warnings") + " (" +
                 std::to_string(r.warnings.size()) + ")");
  h.open("ul");
  for (const auto& w : r.warnings) h.el("li", w);
  h.close().close().nl();
}

void metrics_section(Html& h, const Report& r) {
  h.open("section", {{"id", "metrics"}});
  h.el("h2", "Metrics");
  if (r.metrics.empty() && !r.size_before && !r.size_after) {
    h.el("p", {{"class", "empty"}}, "No metrics in this report.");
  } else {
    h.open("table").open("thead").open("tr");
    h.el("th", "metric").el("th", {{"class", "num"}}, "baseline").el("th", {{"class", "num"}}, "compressed");
    h.el("th", {{"class", "num"}}, "change");
    h.close().close().open("tbody").nl();
    for (const auto& m : r.metrics) {
      if (m.is_primary)
        h.open("tr", {{"class", "primary"}});
      else
        h.open("tr");
      h.open("td").text(m.name);
      h.el("span", {{"class", "tag"}}, m.higher_is_better ? "\u2191 higher is better" : "\u2193 lower is better");
      if (m.is_primary) h.el("span", {{"class", "tag"}}, "primary");
      h.close();
      h.el("td", {{"class", "num"}}, m.baseline ? fmt_value(*m.baseline, m) : "\u2013");
      h.el("td", {{"class", "num"}}, m.compressed ? fmt_value(*m.compressed, m) : "\u2013");
      std::string cls = change_class(m);
      h.el("td", {{"class", cls.empty() ? "num" : "num " + cls}}, change_percent(m));
      h.close().nl();
    }
    if (r.size_before || r.size_after) {
      h.open("tr");
      h.el("td", "file size").el("td", {{"class", "num"}}, human(r.size_before));
      h.el("td", {{"class", "num"}}, human(r.size_after));
      h.el("td", {{"class", "num"}}, size_ratio(r));
      h.close().nl();
    }
    h.close().close();
  }
  if (auto ret = r.retention())
    h.el("p", {{"class", "note"}},
         strf("Retention %.2f%%", 100.0 * *ret) +
             " of the primary metric: compressed / baseline for higher-is-better metrics, baseline / compressed for "
             "lower-is-better ones. Change is relative to |baseline|.");
  if (!r.eval_protocol.empty()) {
    h.open("p", {{"class", "note"}}).el("strong", "Measured as: ").text(r.eval_protocol).close();
  }
  h.close().nl();
}

// Scale of the error bars: linear from 0 to a round number, or decades when the measured values
// span more than two of them.
struct ErrScale {
  bool log = false;
  double lo = 0, hi = 1;  // linear: 0..hi; log: lo..hi (powers of ten)
  std::vector<double> ticks;

  static ErrScale fit(const std::vector<LayerRow>& layers) {
    ErrScale s;
    double mn = 0, mx = 0;
    for (const auto& l : layers)
      if (l.rel_output_error && *l.rel_output_error > 0 && std::isfinite(*l.rel_output_error)) {
        double v = *l.rel_output_error;
        mn = mn == 0 ? v : std::min(mn, v), mx = std::max(mx, v);
      }
    if (mx <= 0) {
      s.ticks = {0, 0.5, 1};
      return s;
    }
    if (mx / mn > 100) {
      s.log = true;
      int a = int(std::floor(std::log10(mn))), b = int(std::ceil(std::log10(mx)));
      if (b == a) ++b;
      int step = (b - a) > 8 ? 2 : 1;
      s.lo = std::pow(10.0, a), s.hi = std::pow(10.0, b);
      for (int k = a; k <= b; k += step) s.ticks.push_back(std::pow(10.0, k));
      return s;
    }
    double raw = mx / 4, mag = std::pow(10.0, std::floor(std::log10(raw))), n = raw / mag;
    double step = (n <= 1 ? 1 : n <= 2 ? 2 : n <= 2.5 ? 2.5 : n <= 5 ? 5 : 10) * mag;
    int k = int(std::ceil(mx / step - 1e-9));
    s.hi = k * step;
    for (int i = 0; i <= k; ++i) s.ticks.push_back(i * step);
    return s;
  }
  double frac(double v) const {
    if (!(v > 0)) return 0;
    double f = log ? (std::log10(v) - std::log10(lo)) / (std::log10(hi) - std::log10(lo)) : v / hi;
    return std::clamp(f, 0.0, 1.0);
  }
  std::string label(double v) const {
    if (!log) return strf("%g", v);
    int e = int(std::lround(std::log10(v)));
    return e == 0 ? "1" : e == 1 ? "10" : strf("1e%d", e);
  }
};

// One row per layer: name, scheme, a bar of the relative output error, a bar of stored bits per weight.
void layer_chart(Html& h, const std::vector<LayerRow>& layers) {
  const size_t n = layers.size();
  size_t name_chars = 8, scheme_chars = 6;
  for (const auto& l : layers)
    name_chars = std::max(name_chars, u8len(l.name)), scheme_chars = std::max(scheme_chars, u8len(l.scheme));
  name_chars = std::min<size_t>(name_chars, 44), scheme_chars = std::min<size_t>(scheme_chars, 26);
  const double row_h = 18, top = 50, bottom = 44, pad = 8;
  const double name_x = pad, scheme_x = name_x + 7.3 * double(name_chars) + 14;
  const double err_x = scheme_x + 6.1 * double(scheme_chars) + 16, err_w = 440;
  const double bits_x = err_x + err_w + 30, bits_w = 120, width = bits_x + bits_w + 52;
  const double height = top + row_h * double(n) + bottom, rows_end = top + row_h * double(n);

  ErrScale es = ErrScale::fit(layers);
  bool any_err = false;
  std::vector<double> errs;
  double max_bits = 0;
  for (const auto& l : layers) {
    if (l.rel_output_error) any_err = true;
    if (l.rel_output_error && std::isfinite(*l.rel_output_error)) errs.push_back(*l.rel_output_error);
    if (std::isfinite(l.bits_per_weight)) max_bits = std::max(max_bits, l.bits_per_weight);
  }
  double bits_hi = 4;
  while (bits_hi < max_bits && bits_hi < 64) bits_hi *= 2;
  bits_hi = std::max(bits_hi, max_bits);
  // The worst tenth of the layers (at least one, when five or more are measured) is drawn darker.
  double hi_threshold = INFINITY;
  if (errs.size() >= 5) {
    std::sort(errs.begin(), errs.end(), std::greater<>());
    hi_threshold = errs[std::max<size_t>(1, errs.size() / 10) - 1];
    if (!(hi_threshold > 0)) hi_threshold = INFINITY;
  }

  auto num = [](double v) { return strf("%.1f", v); };
  h.open("div", {{"class", "chart"}});
  h.open("svg", {{"xmlns", "http://www.w3.org/2000/svg"},
                 {"width", num(width)},
                 {"height", num(height)},
                 {"viewBox", "0 0 " + num(width) + " " + num(height)},
                 {"role", "img"},
                 {"aria-label", "relative output error and bits per weight of " + std::to_string(n) + " layers"}})
      .nl();
  // column heads
  std::string err_head =
      any_err ? std::string("relative output error \u2016WX \u2212 \u0174X\u2016\u00b2 / \u2016WX\u2016\u00b2") +
                    (es.log ? " \u2014 log scale" : " \u2014 linear scale")
              : "relative output error (not measured)";
  h.el("text", {{"class", "head"}, {"x", num(name_x)}, {"y", "16"}}, "layer");
  h.el("text", {{"class", "head"}, {"x", num(scheme_x)}, {"y", "16"}}, "scheme");
  h.el("text", {{"class", "head"}, {"x", num(err_x)}, {"y", "16"}}, err_head);
  h.el("text", {{"class", "head"}, {"x", num(bits_x)}, {"y", "16"}}, "stored bits / weight");
  // zebra stripes, then the grid, then the rows
  for (size_t i = 1; i < n; i += 2)
    h.empty("rect", {{"class", "z"},
                     {"x", "0"},
                     {"y", num(top + row_h * double(i))},
                     {"width", num(width)},
                     {"height", num(row_h)}});
  // grid lines, tick labels above and below the rows
  auto axis = [&](double x0, double w, const std::vector<double>& ticks, auto frac, auto label) {
    for (double t : ticks) {
      double x = x0 + frac(t) * w;
      h.empty("line",
              {{"class", "grid"}, {"x1", num(x)}, {"y1", num(top - 4)}, {"x2", num(x)}, {"y2", num(rows_end + 4)}});
      std::string anchor = t == ticks.front() ? "start" : t == ticks.back() ? "end" : "middle";
      if (ticks.size() == 1) anchor = "start";
      h.el("text", {{"class", "tick"}, {"x", num(x)}, {"y", num(top - 8)}, {"text-anchor", anchor}}, label(t));
      h.el("text", {{"class", "tick"}, {"x", num(x)}, {"y", num(rows_end + 16)}, {"text-anchor", anchor}}, label(t));
    }
    h.empty("line",
            {{"class", "base"}, {"x1", num(x0)}, {"y1", num(top - 4)}, {"x2", num(x0)}, {"y2", num(rows_end + 4)}});
  };
  if (any_err)
    axis(
        err_x, err_w, es.ticks, [&](double t) { return es.frac(t); }, [&](double t) { return es.label(t); });
  axis(
      bits_x, bits_w, {0.0, bits_hi / 2, bits_hi}, [&](double t) { return t / bits_hi; },
      [](double t) { return strf("%g", t); });
  // rows: a hover target, labels and bars over the grid
  for (size_t i = 0; i < n; ++i) {
    const LayerRow& l = layers[i];
    const double y = top + row_h * double(i);
    std::string tip = l.name + " \u2014 " + l.scheme + ", " + l.shape + ", " + thousands(l.params) + " weights, " +
                      strf("%.3f bits/weight", l.bits_per_weight) +
                      (l.rel_output_error ? strf(", rel. output error %.3e", *l.rel_output_error) : "") +
                      (l.note.empty() ? "" : " (" + l.note + ")");
    h.open("g", {{"class", "row"}});
    h.el("title", tip);
    h.empty("rect", {{"class", "hit"}, {"x", "0"}, {"y", num(y)}, {"width", num(width)}, {"height", num(row_h)}});
    h.el("text", {{"class", "lname"}, {"x", num(name_x)}, {"y", num(y + 13)}}, tail_clip(l.name, 44));
    h.el("text", {{"class", "scheme"}, {"x", num(scheme_x)}, {"y", num(y + 13)}}, head_clip(l.scheme, 26));
    if (l.rel_output_error) {
      double v = *l.rel_output_error, w = es.frac(v) * err_w;
      if (v > 0 && w < 1.5) w = 1.5;
      h.empty("rect", {{"class", v >= hi_threshold ? "err hi" : "err"},
                       {"x", num(err_x)},
                       {"y", num(y + 3)},
                       {"width", num(w)},
                       {"height", num(row_h - 6)}});
      std::string val = v == 0 ? "0" : strf("%.2e", v);
      if (w + 58 > err_w)  // no room after the bar: the value goes inside its end
        h.el("text", {{"class", "val in"}, {"x", num(err_x + w - 4)}, {"y", num(y + 13)}, {"text-anchor", "end"}}, val);
      else
        h.el("text", {{"class", "val"}, {"x", num(err_x + w + 4)}, {"y", num(y + 13)}}, val);
    } else {
      h.el("text", {{"class", "na"}, {"x", num(err_x + 4)}, {"y", num(y + 13)}}, "not measured");
    }
    double bw = std::isfinite(l.bits_per_weight) ? std::clamp(l.bits_per_weight / bits_hi, 0.0, 1.0) * bits_w : 0;
    h.empty("rect", {{"class", l.bits_per_weight >= 16 ? "bits dense" : "bits"},
                     {"x", num(bits_x)},
                     {"y", num(y + 3)},
                     {"width", num(bw)},
                     {"height", num(row_h - 6)}});
    h.el("text", {{"class", "val"}, {"x", num(bits_x + bits_w + 6)}, {"y", num(y + 13)}},
         strf("%.2f", l.bits_per_weight));
    h.close().nl();
  }
  std::string caption;
  if (any_err)
    caption = es.log ? "error on a log scale (the values span more than two decades)" : "error on a linear scale";
  if (std::isfinite(hi_threshold)) caption += "; darker bars: the worst tenth of the layers";
  caption += std::string(caption.empty() ? "" : "; ") + "gray bits: 16 or more (dense)";
  h.el("text", {{"class", "tick"}, {"x", num(name_x)}, {"y", num(rows_end + 36)}}, caption);
  h.close().close().nl();
}

void layers_section(Html& h, const Report& r) {
  h.open("section", {{"id", "layers"}});
  h.el("h2", "Layers");
  if (r.layers.empty()) {
    h.el("p", {{"class", "empty"}}, "No per-layer data in this report.");
    h.close().nl();
    return;
  }
  layer_chart(h, r.layers);
  // Long tables start folded: the chart above already shows every layer.
  if (r.layers.size() <= 60)
    h.open("details", {{"open", "open"}});
  else
    h.open("details");
  h.el("summary", "Layer table (" + std::to_string(r.layers.size()) + " layers)");
  h.open("table", {{"class", "layers"}}).open("thead").open("tr");
  h.el("th", "layer").el("th", "shape").el("th", "scheme").el("th", {{"class", "num"}}, "params");
  h.el("th", {{"class", "num"}}, "bits/weight").el("th", {{"class", "num"}}, "rel. output error").el("th", "note");
  h.close().close().open("tbody").nl();
  for (const auto& l : r.layers) {
    h.open("tr");
    h.el("td", {{"class", "mono"}}, l.name).el("td", {{"class", "mono"}}, l.shape).el("td", l.scheme);
    h.el("td", {{"class", "num"}}, thousands(l.params)).el("td", {{"class", "num"}}, strf("%.3f", l.bits_per_weight));
    h.el("td", {{"class", "num"}}, l.rel_output_error ? strf("%.3e", *l.rel_output_error) : "\u2013");
    h.el("td", l.note);
    h.close().nl();
  }
  h.close().close().close();
  h.el("p", {{"class", "note"}},
       "Relative output error = \u2016WX \u2212 \u0174X\u2016\u00b2 / \u2016WX\u2016\u00b2 on the calibration inputs; "
       "bits/weight counts everything stored for the layer (scales, zeros, masks).");
  h.close().nl();
}

void steps_section(Html& h, const Report& r) {
  if (r.steps.empty()) return;
  double total = 0, mx = 0;
  for (const auto& s : r.steps) total += s.seconds, mx = std::max(mx, s.seconds);
  h.open("section", {{"id", "time"}});
  h.el("h2", "Time and memory");
  h.open("table").open("thead").open("tr");
  h.el("th", "step").el("th", {{"class", "num"}}, "seconds").el("th", {{"class", "num"}}, "share");
  h.el("th", {{"class", "num"}}, "peak MiB").el("th", "");
  h.close().close().open("tbody").nl();
  for (const auto& s : r.steps) {
    h.open("tr");
    h.el("td", s.name).el("td", {{"class", "num"}}, strf("%.2f", s.seconds));
    h.el("td", {{"class", "num"}}, total > 0 ? strf("%.1f%%", 100 * s.seconds / total) : "");
    h.el("td", {{"class", "num"}}, s.peak_rss_mib > 0 ? strf("%.0f", s.peak_rss_mib) : "");
    h.open("td", {{"style", "width:40%"}}).open("span", {{"class", "track"}});
    h.open("span", {{"style", strf("width:%.1f%%", mx > 0 ? 100 * s.seconds / mx : 0.0)}}).close();
    h.close().close().close().nl();
  }
  h.open("tr", {{"class", "total"}});
  h.el("td", "total")
      .el("td", {{"class", "num"}}, strf("%.2f", total))
      .el("td", {{"class", "num"}}, "100%")
      .el("td", "")
      .el("td", "");
  h.close().close().close().close().nl();
}

void settings_section(Html& h, const Report& r) {
  h.open("section", {{"id", "settings"}});
  h.el("h2", "Settings");
  if (r.settings.empty()) {
    h.el("p", {{"class", "empty"}}, "No settings recorded.");
  } else {
    h.open("table", {{"class", "kv"}}).open("tbody").nl();
    for (const auto& [k, v] : r.settings) h.open("tr").el("td", k).el("td", v).close().nl();
    h.close().close();
  }
  h.close().nl();
}

}  // namespace

std::string Report::to_html() const {
  Html h;
  h.raw("<!DOCTYPE html>\n");
  h.open("html", {{"lang", "en"}}).nl().open("head").nl();
  h.void_el("meta", {{"charset", "utf-8"}}).nl();
  h.void_el("meta", {{"name", "viewport"}, {"content", "width=device-width, initial-scale=1"}}).nl();
  h.void_el("meta", {{"http-equiv", "Content-Security-Policy"},
                     {"content", "default-src 'none'; style-src 'unsafe-inline'; img-src data:"}})
      .nl();
  h.void_el("meta", {{"name", "color-scheme"}, {"content", "light dark"}}).nl();
  h.void_el("meta", {{"name", "generator"}, {"content", versions_string()}}).nl();
  h.el("title", title.empty() ? "mcompress report" : title).nl();
  h.open("style").raw(kCss).close().nl();
  h.close().nl().open("body").open("main").nl();
  header_section(h, *this);
  cards_section(h, *this);
  warnings_section(h, *this);
  metrics_section(h, *this);
  layers_section(h, *this);
  steps_section(h, *this);
  settings_section(h, *this);
  h.open("footer");
  h.text("Written by " + versions_string() + (created.empty() ? "" : " on " + created) +
         ". Beside it: report.json (machine-readable) and report.md. This page is self-contained: it runs no scripts "
         "and loads nothing.");
  h.close().nl();
  return h.finish() + "\n";
}

}  // namespace mc
