// What the subcommands share beyond cli.h: the library's data and file helpers under their short
// names, and a tokenized text stream for training.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "mcompress/job_data.h"
#include "mcompress/stage_options.h"

namespace mc {
class Tokenizer;
}

namespace mcli {

using mc::count_parameters;
using mc::EvalData;
using mc::EvalDataOptions;
using mc::evaluate_into;
using mc::find_tokenizer;
using mc::load_eval_data;
using mc::model_bytes;
using mc::read_file_text;
using mc::split_list;
using mc::write_file_atomic;

// A text file's documents as one token stream: BOS + tokens of each document, concatenated.
std::vector<int32_t> text_token_stream(const std::string& path, const mc::Tokenizer& tok);

}  // namespace mcli
