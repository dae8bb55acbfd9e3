// Writes the project's own training corpus and tokenizer for the demo's default model:
//   make_corpus DIR [--stories N] [--vocab V] [--seed S]
//   DIR/train.txt, DIR/valid.txt   short generated stories separated by <|endoftext|>
//   DIR/tokenizer.bin              a llama2.c tokenizer (byte fallback + BPE merges learned on train.txt)
// Everything is a deterministic function of the arguments (own PRNG, no std distributions).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "mcompress/error.h"
#include "mcompress/io/llama2c.h"
#include "mcompress/rng.h"

namespace {

struct Rng : mc::SplitMix64 {
  template <typename T>
  const T& pick(const std::vector<T>& v) { return v[below(v.size())]; }
};

const std::vector<std::string> kNames = {"Lily", "Tom", "Mia", "Ben", "Sue", "Max", "Anna", "Sam", "Lucy", "Tim"};
const std::vector<std::string> kAnimals = {"cat", "dog", "bird", "fox", "bunny", "frog", "bear", "duck"};
const std::vector<std::string> kPlaces = {"park", "forest", "garden", "beach", "farm", "house", "river", "hill"};
const std::vector<std::string> kThings = {"ball", "kite", "box", "hat", "cake", "boat", "book", "flower", "toy", "stick"};
const std::vector<std::string> kColors = {"red", "blue", "big", "small", "shiny", "soft", "green", "yellow"};
const std::vector<std::string> kFeel = {"happy", "sad", "scared", "proud", "tired", "excited", "angry", "surprised"};
const std::vector<std::string> kVerbs = {"played with", "looked at", "found", "lost", "shared", "carried", "hid"};

std::string capital(std::string s) {
  if (!s.empty() && s[0] >= 'a' && s[0] <= 'z') s[0] = static_cast<char>(s[0] - 'a' + 'A');
  return s;
}

std::string story(Rng& r) {
  const std::string name = r.pick(kNames), friend_ = r.pick(kNames), animal = r.pick(kAnimals);
  const std::string place = r.pick(kPlaces), thing = r.pick(kThings), color = r.pick(kColors);
  std::string s;
  switch (r.below(3)) {
    case 0: s = "Once upon a time, there was a little " + animal + " named " + name + ". "; break;
    case 1: s = "One day, " + name + " went to the " + place + " with a " + animal + ". "; break;
    default: s = name + " was a " + r.pick(kFeel) + " " + animal + " who lived near the " + place + ". "; break;
  }
  const size_t n = 2 + r.below(5);
  for (size_t i = 0; i < n; ++i) {
    switch (r.below(6)) {
      case 0: s += name + " " + r.pick(kVerbs) + " a " + color + " " + thing + ". "; break;
      case 1: s += capital(friend_) + " came to the " + place + " and said, \"Can I play too?\" "; break;
      case 2: s += "The " + thing + " was " + color + ", and " + name + " felt " + r.pick(kFeel) + ". "; break;
      case 3: s += "They ran to the " + r.pick(kPlaces) + " to look for the " + thing + ". "; break;
      case 4: s += name + " and " + friend_ + " " + r.pick(kVerbs) + " the " + thing + " all day. "; break;
      default: s += "\"I like your " + thing + ",\" said " + friend_ + ". "; break;
    }
  }
  switch (r.below(3)) {
    case 0: s += "In the end, " + name + " and " + friend_ + " were good friends."; break;
    case 1: s += "From that day on, " + name + " always took the " + thing + " to the " + place + "."; break;
    default: s += "They went home " + r.pick(kFeel) + " and slept well."; break;
  }
  return s;
}

// Byte-pair merges learned on the words of the corpus (a space starts a word, as SentencePiece's
// '▁' does), most frequent pair first. Returns the merged token strings in merge order.
std::vector<std::string> learn_merges(const std::vector<std::string>& stories, size_t n_merges) {
  std::unordered_map<std::string, int64_t> words;
  for (const auto& st : stories) {
    std::string text = " " + st;  // the encoder adds this dummy prefix too
    size_t i = 0;
    while (i < text.size()) {
      size_t j = i + 1;
      while (j < text.size() && text[j] != ' ') ++j;
      ++words[text.substr(i, j - i)];
      i = j;
    }
  }
  std::vector<std::pair<std::vector<std::string>, int64_t>> seqs;
  for (auto& [w, c] : words) {
    std::vector<std::string> sym;
    for (char ch : w) sym.emplace_back(1, ch);
    seqs.push_back({sym, c});
  }
  std::sort(seqs.begin(), seqs.end());  // deterministic order regardless of hash layout
  std::vector<std::string> merges;
  for (size_t m = 0; m < n_merges; ++m) {
    std::map<std::pair<std::string, std::string>, int64_t> counts;
    for (auto& [sym, c] : seqs)
      for (size_t k = 0; k + 1 < sym.size(); ++k) counts[{sym[k], sym[k + 1]}] += c;
    if (counts.empty()) break;
    auto best = counts.begin();
    for (auto it = counts.begin(); it != counts.end(); ++it)
      if (it->second > best->second) best = it;
    const std::string merged = best->first.first + best->first.second;
    merges.push_back(merged);
    for (auto& [sym, c] : seqs) {
      std::vector<std::string> out;
      for (size_t k = 0; k < sym.size(); ++k) {
        if (k + 1 < sym.size() && sym[k] == best->first.first && sym[k + 1] == best->first.second) {
          out.push_back(merged);
          ++k;
        } else {
          out.push_back(sym[k]);
        }
      }
      sym.swap(out);
    }
  }
  return merges;
}

void write_text(const std::filesystem::path& p, const std::vector<std::string>& stories) {
  std::ofstream out(p, std::ios::binary);
  for (size_t i = 0; i < stories.size(); ++i) out << stories[i] << "\n<|endoftext|>\n";
  if (!out) mc::fail("make_corpus", p.string(), ": write failed");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: make_corpus DIR [--stories N] [--vocab V] [--seed S]\n");
    return 2;
  }
  size_t n_stories = 20000, vocab = 768;
  uint64_t seed = 1;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--stories")) n_stories = std::stoul(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--vocab")) vocab = std::stoul(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--seed")) seed = std::stoull(argv[i + 1]);
  }
  try {
    std::filesystem::path dir = argv[1];
    std::filesystem::create_directories(dir);
    Rng rng;
    rng.state = seed;
    std::vector<std::string> train, valid;
    for (size_t i = 0; i < n_stories; ++i) train.push_back(story(rng));
    for (size_t i = 0; i < std::max<size_t>(100, n_stories / 50); ++i) valid.push_back(story(rng));
    write_text(dir / "train.txt", train);
    write_text(dir / "valid.txt", valid);
    // llama2.c layout: <unk>, <s>, </s>, 256 byte tokens <0x00>..<0xFF>, then the merges.
    mc::Llama2cTokenizer tok;
    tok.vocab = {"<unk>", "\n<s>\n", "\n</s>\n"};
    tok.scores = {0, 0, 0};
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      tok.vocab.push_back(name);
      tok.scores.push_back(0);
    }
    // Single printable characters must be tokens themselves (the encoder looks them up first).
    std::vector<std::string> singles;
    for (int c = 32; c < 127; ++c) singles.emplace_back(1, static_cast<char>(c));
    for (auto& s : singles) tok.vocab.push_back(s), tok.scores.push_back(0);
    const size_t n_merges = vocab > tok.vocab.size() ? vocab - tok.vocab.size() : 0;
    auto merges = learn_merges(train, n_merges);
    std::unordered_map<std::string, bool> have;
    for (auto& v : tok.vocab) have[v] = true;
    for (size_t m = 0; m < merges.size(); ++m) {
      if (have[merges[m]]) continue;  // two pairs can spell the same string ("ab"+"c", "a"+"bc")
      have[merges[m]] = true;
      tok.vocab.push_back(merges[m]);
      tok.scores.push_back(-static_cast<float>(m + 1));  // earlier merges win, as in BPE
    }
    size_t longest = 0;
    for (auto& v : tok.vocab) longest = std::max(longest, v.size());
    tok.max_token_length = static_cast<uint32_t>(longest);
    mc::write_llama2c_tokenizer((dir / "tokenizer.bin").string(), tok);
    std::printf("wrote %s: %zu training and %zu validation stories, tokenizer of %zu tokens\n", dir.c_str(),
                train.size(), valid.size(), tok.vocab.size());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_corpus: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
