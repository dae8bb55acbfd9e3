// mcompress tokenize --tokenizer PATH [TEXT | --file F | --jsonl F] [--json] [--bos] [--decode]:
// token ids of a text (or the text of ids with --decode), with the tokenizer the other commands use.
//   TEXT / --file F   one text (a whole file; "-" reads stdin): ids on one line, or --json
//                     {"ids", "count", "tokens", "text", "bytes", "tokens_per_second"}
//   --jsonl F         one JSON string per line of F, each tokenized alone: one {"ids", "text"} line each
//                     (lines of text that hold newlines themselves; what tests/python compares with)
// PATH: tokenizer.json, a llama2.c tokenizer.bin, or a directory (model directory) holding one.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli.h"
#include "mcompress/error.h"
#include "mcompress/tokenizer.h"
#include "model_files.h"

namespace mcli {

namespace {

using ojson = nlohmann::ordered_json;

// Token bytes need not be UTF-8 (a byte token, half a character): invalid bytes print as U+FFFD.
// --jsonl lines are ASCII (\uXXXX escapes), so no reader splits a line at U+0085 / U+2028 inside the text.
std::string dump(const ojson& j, int indent = -1, bool ascii = false) {
  return j.dump(indent, ' ', ascii, ojson::error_handler_t::replace);
}

std::string read_input(const std::string& path) {
  if (path != "-") return read_file_text(path);
  std::ostringstream s;
  s << std::cin.rdbuf();
  return s.str();
}

std::vector<int32_t> parse_ids(const std::string& text, const mc::Tokenizer& tok) {
  std::vector<int32_t> ids;
  std::string cur;
  auto flush = [&] {
    if (cur.empty()) return;
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(cur, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != cur.size()) mc::fail("tokenize", "--decode: '", cur, "' is not a token id");
    if (v < 0 || v >= tok.vocab_size())
      mc::fail("tokenize", "--decode: token id ", v, " is out of range [0, ", tok.vocab_size(), ")");
    ids.push_back(int32_t(v));
    cur.clear();
  };
  for (char c : text) {
    if (c == ' ' || c == ',' || c == '\n' || c == '\t' || c == '[' || c == ']' || c == '\r') flush();
    else cur += c;
  }
  flush();
  return ids;
}

}  // namespace

int cmd_tokenize(const std::vector<std::string>& args, mc::EventSink& events) {
  po::options_description desc("tokenize options");
  std::string tok_path, text, file, jsonl;
  bool json = false, bos = false, decode = false;
  desc.add_options()
      ("tokenizer", po::value<std::string>(&tok_path)->required(), "tokenizer.json, tokenizer.bin, or a directory holding one")
      ("text", po::value<std::string>(&text), "text to tokenize (or ids to decode with --decode)")
      ("file", po::value<std::string>(&file), "tokenize this file's whole text (- = stdin)")
      ("jsonl", po::value<std::string>(&jsonl), "a file of JSON strings, one per line: tokenize each alone")
      ("json", po::bool_switch(&json), "print JSON (ids, tokens, decoded text, speed)")
      ("bos", po::bool_switch(&bos), "put BOS first where the tokenizer's pipeline adds one (Llama, Gemma; not Qwen)")
      ("decode", po::bool_switch(&decode), "TEXT / --file hold token ids: print their text");
  po::positional_options_description pos;
  pos.add("text", 1);
  po::variables_map vm;
  CommonOptions common;
  const std::string usage = "--tokenizer PATH [TEXT | --file F | --jsonl F] [--json] [--bos] [--decode]";
  if (!parse_command_line("tokenize", usage, args, desc, pos, vm, common, events)) return 0;
  const int given = int(vm.count("text")) + int(vm.count("file")) + int(vm.count("jsonl"));
  if (given != 1) mc::fail("tokenize", "give exactly one of TEXT, --file F or --jsonl F (got ", given, ")");
  if (decode && vm.count("jsonl")) mc::fail("tokenize", "--decode takes TEXT or --file, not --jsonl");

  std::string path = tok_path;
  if (std::filesystem::is_directory(path)) {
    path = find_tokenizer(path);
    if (path.empty()) mc::fail("tokenize", tok_path, ": no tokenizer.json or tokenizer.bin in this directory");
  }
  auto tok = mc::load_tokenizer(path);
  auto encode = [&](const std::string& s) {
    std::vector<int32_t> ids;
    if (bos && tok->adds_bos()) ids.push_back(tok->bos_id());
    for (int32_t id : tok->encode(s)) ids.push_back(id);
    return ids;
  };

  if (vm.count("jsonl")) {
    const std::string all = read_input(jsonl);
    std::string out;  // all lines first: bad input leaves no partial output
    std::istringstream in(all);
    std::string line;
    for (size_t n = 1; std::getline(in, line); ++n) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty()) continue;
      ojson j;
      try {
        j = ojson::parse(line);
      } catch (const ojson::exception& e) {
        mc::fail("tokenize", jsonl, ":", n, ": not a JSON string (", e.what(), ")");
      }
      if (!j.is_string()) mc::fail("tokenize", jsonl, ":", n, ": expected a JSON string, got ", j.type_name());
      const auto ids = encode(j.get<std::string>());
      ojson r;
      r["ids"] = ids;
      r["text"] = tok->decode(ids);
      out += dump(r, -1, true) + "\n";
    }
    std::cout << out << std::flush;
    return 0;
  }

  const std::string input = vm.count("file") ? read_input(file) : text;
  if (decode) {
    const auto ids = parse_ids(input, *tok);
    const std::string s = tok->decode(ids);
    if (json) {
      ojson j;
      j["ids"] = ids, j["text"] = s;
      std::cout << dump(j, 2) << "\n";
    } else {
      std::cout << s << "\n";
    }
    return 0;
  }
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = encode(input);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double tps = double(ids.size()) / std::max(secs, 1e-9);
  if (json) {
    ojson j;
    j["tokenizer"] = path, j["kind"] = tok->kind(), j["count"] = ids.size(), j["bytes"] = input.size();
    j["ids"] = ids;
    ojson pieces = ojson::array();
    for (int32_t id : ids) pieces.push_back(tok->token_bytes(id));
    j["tokens"] = pieces;
    j["text"] = tok->decode(ids);
    j["seconds"] = secs, j["tokens_per_second"] = tps;
    std::cout << dump(j, 2) << "\n";
    return 0;
  }
  std::string line;
  for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
  std::cout << line << "\n" << std::flush;
  if (!common.quiet)
    std::fprintf(stderr, "[%zu tokens, %zu bytes, %.0f tokens/s]\n", ids.size(), input.size(), tps);
  return 0;
}

}  // namespace mcli
