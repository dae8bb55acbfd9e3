// mcompress: the command-line front end. Parses options, calls libcompress, maps errors to exit codes:
// 0 ok, 1 internal error, 2 bad input or usage, 3 accuracy gate failed.
#include <cstdio>
#include <iostream>
#include <limits>
#include <malloc.h>
#include <nlohmann/json.hpp>
#include <unistd.h>
#include <cstdlib>
#include <string>
#include <vector>

#include "cli.h"
#include "mcompress/atomic_file.h"
#include "mcompress/error.h"

namespace {

void print_usage() {
  std::cout << "mcompress " << MCOMPRESS_VERSION
            << " - post-training quantization, pruning and distillation of model checkpoints\n\n"
               "usage: mcompress [--version] [--help] <command> [options]\n\ncommands:\n";
  for (const auto& c : mcli::commands()) std::printf("  %-10s %s\n", c.name, c.summary);
  std::cout << "\n'mcompress <command> --help' shows a command's options.\n"
               "exit status: 0 ok, 1 internal error, 2 bad input or usage, 3 accuracy gate failed\n";
}

}  // namespace

int main(int argc, char** argv) {
  // OpenMP's worker threads spin between parallel regions by default and take the cores from
  // OpenBLAS's threads and from each other on a small or busy machine (GPTQ on 4096x4096: 9.9 s ->
  // 3.0 s under load; stories260K eval 2.2 s -> 1.5 s on an idle 2-core machine). libgomp reads the
  // policy when it is loaded, before main, so set it and start again once, unless the user chose one.
  if (!std::getenv("OMP_WAIT_POLICY")) {
    ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    ::execv("/proc/self/exe", argv);  // on failure, carry on with the default policy
  }
  // A block's temporaries (linear outputs, bf16 <-> f32 copies: 30-120 MB each on 1B-8B shapes) are over
  // glibc's 32 MB mmap ceiling, so each one was a fresh mapping, and a freed chunk at the top of the heap
  // is handed back at once (128 KB trim threshold): either way every layer call page-faulted and zeroed
  // its buffers anew (a third of a bf16 forward's samples were page faults). Served from the heap and
  // kept there, a freed buffer is reused by the next call of its size. Measured on the Llama-3.2-1B
  // shape, eval of 2,048 tokens: bf16 forward 0.28x -> 0.70x of at::matmul (48.7 -> 18.9 s), f32
  // 0.58x -> 0.79x (73.3 -> 46.4 s); peak RSS 1.32 -> 1.62 GB and 2.35 -> 2.69 GB. Calibration still
  // hands the heap back after every block (malloc_trim). The user's MALLOC_MMAP_MAX_ /
  // MALLOC_TRIM_THRESHOLD_ win.
  if (!std::getenv("MALLOC_MMAP_MAX_")) ::mallopt(M_MMAP_MAX, 0);
  if (!std::getenv("MALLOC_TRIM_THRESHOLD_")) ::mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
  mc::install_cleanup_handlers();
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    if (args.size() >= 2 && args[0] == "help") args = {args[1], "--help"};
    else {
      print_usage();
      return args.empty() ? 2 : 0;
    }
  }
  if (args[0] == "--version" || args[0] == "-V") {
    std::cout << "mcompress " << MCOMPRESS_VERSION << "\n";
    return 0;
  }
  try {
    return mcli::dispatch(args);
  } catch (const mc::GateError& e) {
    std::cerr << "mcompress: " << e.what() << "\n";
    return 3;
  } catch (const mc::InputError& e) {
    std::cerr << "mcompress: error: " << e.what() << "\n";
    return 2;
  } catch (const std::bad_alloc&) {
    std::cerr << "mcompress: error: out of memory\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "mcompress: internal error: " << e.what() << "\n";
    return 1;
  }
}
