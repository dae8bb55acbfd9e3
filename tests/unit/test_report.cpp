// Reports: report.html is well-formed and self-contained (no scripts, nothing loaded), escapes
// every text it shows, shows every layer and metric, renders with no layers and with many; the three
// files written by write_report carry the same "created" time.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "../test_utils.h"
#include "mcompress/report.h"

namespace {

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t i = s.find(what); i != std::string::npos; i = s.find(what, i + what.size())) ++n;
  return n;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// "" when every element closes in order ("<x/>" closes itself, void elements never do); otherwise
// what went wrong. Skips the doctype/comments and the content of <style>.
std::string nesting_error(const std::string& html) {
  static const std::vector<std::string> void_tags = {"meta", "br", "hr", "img", "input", "link", "wbr"};
  std::vector<std::string> stack;
  size_t i = 0;
  while ((i = html.find('<', i)) != std::string::npos) {
    if (html.compare(i, 2, "<!") == 0) {
      i = html.find('>', i);
      continue;
    }
    size_t end = html.find('>', i);
    if (end == std::string::npos) return "unterminated tag at " + std::to_string(i);
    bool closing = html[i + 1] == '/';
    size_t b = i + (closing ? 2 : 1), e = b;
    while (e < end && (std::isalnum(static_cast<unsigned char>(html[e])) || html[e] == '-')) ++e;
    std::string name = html.substr(b, e - b);
    if (name.empty()) return "bad tag at " + std::to_string(i) + ": " + html.substr(i, 20);
    if (closing) {
      if (stack.empty() || stack.back() != name)
        return "</" + name + "> closes <" + (stack.empty() ? std::string("nothing") : stack.back()) + ">";
      stack.pop_back();
    } else if (html[end - 1] != '/' && std::find(void_tags.begin(), void_tags.end(), name) == void_tags.end()) {
      stack.push_back(name);
      if (name == "style") {
        end = html.find("</style>", end);
        if (end == std::string::npos) return "unclosed <style>";
        i = end;
        continue;
      }
    }
    i = end + 1;
  }
  return stack.empty() ? "" : "<" + stack.back() + "> never closed";
}

// Every http:// or https:// in the page, except the SVG namespace.
std::vector<std::string> urls(std::string html) {
  const std::string ns = "xmlns=\"http://www.w3.org/2000/svg\"";
  for (size_t p; (p = html.find(ns)) != std::string::npos;) html.erase(p, ns.size());
  std::vector<std::string> out;
  for (const char* scheme : {"http://", "https://"})
    for (size_t p = html.find(scheme); p != std::string::npos; p = html.find(scheme, p + 1))
      out.push_back(html.substr(p, 60));
  return out;
}

std::vector<double> svg_heights(const std::string& html) {
  std::vector<double> out;
  std::regex re("<svg[^>]* height=\"([0-9.]+)\"");
  for (auto it = std::sregex_iterator(html.begin(), html.end(), re); it != std::sregex_iterator(); ++it)
    out.push_back(std::stod((*it)[1].str()));
  return out;
}

mc::Report sample(int n_layers) {
  mc::Report r;
  r.title = "stories260K.bin: GPTQ int4 sym g32";
  r.model = "../shared/data/stories260K/stories260K.bin";
  r.output = "/tmp/h1";
  r.method = "gptq";
  r.settings = {{"bits", "4"},
                {"groups", "32 columns"},
                {"speed", "1.8x the baseline's (eval 0.4 s vs 0.7 s)"},
                {"accuracy gate", "FAILED: retention 97.10% < 98%"}};
  r.eval_protocol = "non-overlapping windows of 128 tokens";
  mc::MetricRow bpb{"bits per byte", 0.81, 0.83};
  mc::MetricRow ppl{"perplexity", 3.44, 3.52};
  ppl.is_primary = true;
  mc::MetricRow top1{"same top-1 as baseline", std::nullopt, 0.97, true, 2, true};
  r.metrics = {bpb, ppl, top1};
  r.size_before = 1056540, r.size_after = 271000;
  for (int i = 0; i < n_layers; ++i) {
    mc::LayerRow l;
    l.name = "layers." + std::to_string(i / 7) + ".proj_" + std::to_string(i);
    l.shape = "[64, 64]";
    const bool dense = i % 7 == 6;
    l.scheme = dense ? "dense f32" : "int4 sym g32";
    l.params = dense ? 100 : 1000;
    l.bits_per_weight = dense ? 32 : 4.25;
    if (!dense) l.rel_output_error = 1e-5 * std::pow(1.5, i % 20);  // spans > 2 decades with 20+ layers
    r.layers.push_back(l);
  }
  r.steps = {{"load model", 0.1}, {"quantize", 2.5}, {"evaluate", 0.9}};
  r.command_line = "mcompress quantize model.bin --method gptq --bits 4 --group-size 32 -o /tmp/h1";
  r.seed = "1";
  r.created = "2024-05-01 12:00:00 UTC";
  return r;
}

}  // namespace

TEST_CASE("report html: one self-contained, well-formed page showing every layer and metric", "[report]") {
  mc::Report r = sample(35);
  std::string html = r.to_html();
  CHECK(html.rfind("<!DOCTYPE html>", 0) == 0);
  CHECK(count(html, "<html") == 1);
  CHECK(count(html, "</html>") == 1);
  CHECK(count(html, "<svg") == 1);
  CHECK(count(html, "</svg>") == 1);
  CHECK(nesting_error(html) == "");
  CHECK(urls(html).empty());
  CHECK(lower(html).find("<script") == std::string::npos);
  CHECK(lower(html).find("<link") == std::string::npos);
  CHECK(lower(html).find("<img") == std::string::npos);
  CHECK(lower(html).find("@import") == std::string::npos);
  CHECK(lower(html).find("url(") == std::string::npos);
  for (const auto& l : r.layers) CHECK(html.find(l.name) != std::string::npos);
  for (const auto& m : r.metrics) CHECK(html.find(m.name) != std::string::npos);
  // cards: primary metric, retention, size, params-weighted bits, speed, the gate
  CHECK(html.find("3.4400 \u2192 3.5200") != std::string::npos);
  CHECK(html.find("97.73%") != std::string::npos);  // 3.44 / 3.52
  CHECK(html.find("3.90x smaller") != std::string::npos);
  // 30 layers of 1000 weights at 4.25 bits, 5 of 100 at 32: 143500 / 30500
  CHECK(html.find(">4.705<") != std::string::npos);
  CHECK(html.find("1.8x the baseline&#39;s") != std::string::npos);
  CHECK(html.find(">FAILED<") != std::string::npos);
  CHECK(html.find("97.00%") != std::string::npos);  // a percent metric, formatted as in report.md
  CHECK(html.find("+2.33%") != std::string::npos);  // change of perplexity
  CHECK(html.find("log scale") != std::string::npos);
  CHECK(html.find("2024-05-01 12:00:00 UTC") != std::string::npos);
  CHECK(html.find(mc::versions_string()) != std::string::npos);
  CHECK(html.find(">3.50<") != std::string::npos);  // total seconds
  CHECK(html.find("<details open") != std::string::npos);
  CHECK(r.to_html() == html);  // deterministic
}

TEST_CASE("report html: every text is escaped", "[report]") {
  mc::Report r = sample(3);
  r.title = "<script>&\"";
  r.layers[0].name = "a<b>&\"c'";
  r.layers[1].note = "<i>note</i>";
  r.metrics[0].name = "x & y <z>";
  r.settings["k\"<"] = "v'>";
  r.warnings = {"<b>bold</b> & \"quoted\""};
  r.command_line = "echo '<x>' && y";
  r.eval_protocol = "<p>protocol</p>";
  r.model = "dir/<m>.bin";
  std::string html = r.to_html();
  CHECK(nesting_error(html) == "");
  CHECK(html.find("&lt;script&gt;&amp;&quot;") != std::string::npos);
  std::string l = lower(html);
  CHECK(l.find("<script") == std::string::npos);
  CHECK(l.find("<b>") == std::string::npos);
  CHECK(l.find("<i>") == std::string::npos);
  CHECK(l.find("<z>") == std::string::npos);
  CHECK(l.find("<m>") == std::string::npos);
  CHECK(l.find("<x>") == std::string::npos);
  CHECK(l.find("<p>protocol") == std::string::npos);
  CHECK(html.find("a&lt;b&gt;&amp;&quot;c&#39;") != std::string::npos);
  CHECK(html.find("x &amp; y &lt;z&gt;") != std::string::npos);
  CHECK(html.find("k&quot;&lt;") != std::string::npos);
  CHECK(html.find("&lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot;") != std::string::npos);
  CHECK(html.find("echo &#39;&lt;x&gt;&#39; &amp;&amp; y") != std::string::npos);
}

TEST_CASE("report html: renders with no layers, and with nothing at all", "[report]") {
  mc::Report r = sample(0);
  std::string html = r.to_html();
  CHECK(nesting_error(html) == "");
  CHECK(count(html, "<svg") == 0);
  CHECK(html.find("No per-layer data") != std::string::npos);
  CHECK(html.find("bits per weight") == std::string::npos);  // no layers: no mean-bits card
  for (const auto& m : r.metrics) CHECK(html.find(m.name) != std::string::npos);

  std::string bare = mc::Report{}.to_html();
  CHECK(nesting_error(bare) == "");
  CHECK(count(bare, "<html") == 1);
  CHECK(urls(bare).empty());
  CHECK(bare.find("No per-layer data") != std::string::npos);
  CHECK(bare.find("No metrics") != std::string::npos);
}

TEST_CASE("report html: 200 layers grow the chart; layers without an error show their bits", "[report]") {
  std::string small = sample(35).to_html();
  mc::Report r = sample(200);
  r.layers[3].rel_output_error.reset();
  std::string big = r.to_html();
  CHECK(nesting_error(big) == "");
  CHECK(count(big, "<svg") == 1);
  CHECK(count(big, "</svg>") == 1);
  CHECK(urls(big).empty());
  auto hs = svg_heights(small), hb = svg_heights(big);
  REQUIRE(hs.size() == 1);
  REQUIRE(hb.size() == 1);
  CHECK(hb[0] > hs[0]);
  CHECK(hb[0] - hs[0] >= 165 * 12);  // rows at least 12 px high: labels stay readable
  for (const auto& l : r.layers) CHECK(big.find(">" + l.name + "<") != std::string::npos);
  CHECK(big.find("not measured") != std::string::npos);
  CHECK(big.find("<details open") == std::string::npos);  // the long table starts folded

  // a narrow range of errors is drawn on a linear scale
  mc::Report lin = sample(5);
  for (size_t i = 0; i < lin.layers.size(); ++i) lin.layers[i].rel_output_error = 0.01 * double(i + 1);
  std::string lh = lin.to_html();
  CHECK(lh.find("linear scale") != std::string::npos);
  CHECK(lh.find("log scale") == std::string::npos);
}

TEST_CASE("report html: NaN and infinite values keep the SVG geometry finite", "[report]") {
  mc::Report r = sample(12);
  r.layers[0].rel_output_error = std::nan("");
  r.layers[1].rel_output_error = INFINITY;
  r.layers[2].bits_per_weight = std::nan("");
  r.layers[3].bits_per_weight = INFINITY;
  r.layers[4].rel_output_error = 0.0;
  r.metrics[0].compressed = std::nan("");
  std::string html = r.to_html();
  CHECK(nesting_error(html) == "");
  std::regex bad_attr("=\"-?(nan|inf)");
  CHECK_FALSE(std::regex_search(html, bad_attr));
  for (double h : svg_heights(html)) CHECK(std::isfinite(h));
}

TEST_CASE("report html: write_report writes report.html with the same created time as report.json", "[report]") {
  mctest::TempDir dir;
  mc::Report r = sample(4);
  r.created.clear();
  mc::write_report(r, dir.path.string());
  std::ifstream jf(dir.file("report.json")), hf(dir.file("report.html")), mf(dir.file("report.md"));
  REQUIRE(jf.good());
  REQUIRE(hf.good());
  REQUIRE(mf.good());
  auto j = nlohmann::json::parse(jf);
  std::stringstream hs, ms;
  hs << hf.rdbuf(), ms << mf.rdbuf();
  const std::string created = j.at("created").get<std::string>();
  CHECK(!created.empty());
  CHECK(hs.str().find(created) != std::string::npos);
  CHECK(ms.str().find("created: " + created) != std::string::npos);
  CHECK(nesting_error(hs.str()) == "");
  // no temp files left behind
  size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path)) ++files, (void)e;
  CHECK(files == 3);
}

TEST_CASE("a report read back from its json writes the same json", "[report]") {
  mc::Report r = sample(5);
  r.created = "2026-11-24T00:00:00Z";
  r.steps.push_back({"peak step", 1.5, 123.0});
  const std::string j = r.to_json();
  const mc::Report back = mc::report_from_json(j, "report.json");
  CHECK(back.to_json() == j);
  CHECK(back.to_markdown() == r.to_markdown());  // decimals and percent formatting survive the round trip
  CHECK_THROWS_WITH(mc::report_from_json("{\"metrics\": [{}]}", "x/report.json"), Catch::Contains("x/report.json: not a report.json"));
}
