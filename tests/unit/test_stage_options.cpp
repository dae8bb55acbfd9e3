// Stage option tables (stage_options.h): types checked when parsed, names suggested, recipes checked
// stage by stage when loaded; SHA-256 of calibration files against the FIPS 180-4 test vectors.
#include "../test_utils.h"
#include "mcompress/error.h"
#include "mcompress/job_data.h"
#include "mcompress/pipeline.h"
#include "mcompress/recipe.h"
#include "mcompress/stage_options.h"

using Catch::Contains;

TEST_CASE("stage options are typed and defaulted from the table", "[stage-options]") {
  mc::StageOptions so("quantize", {{"bits", "3"}, {"group_size", "64"}, {"asym", ""}, {"override", "a*:bits=8"},
                                   {"override", "b*:bits=2"}}, "here");
  CHECK(so.integer("bits") == 3);
  CHECK(so.integer("group-size") == 64);  // underscores read as dashes
  CHECK(so.flag("asym"));
  CHECK_FALSE(so.flag("sym"));
  CHECK(so.text("method") == "rtn");      // the table's default
  CHECK(so.real("damp") == 0.01);
  const std::vector<std::string> overrides = {"a*:bits=8", "b*:bits=2"};
  CHECK(so.repeated("override") == overrides);
  const std::vector<std::string> args = {"--bits", "3", "--group-size", "64", "--asym", "--override", "a*:bits=8",
                                         "--override", "b*:bits=2"};
  CHECK(so.args() == args);
  so.set_default("bits", "8");  // given by the stage: kept
  so.set_default("calib", "c.txt");
  CHECK(so.integer("bits") == 3);
  CHECK(so.text("calib") == "c.txt");
}

TEST_CASE("stage option errors name where, the option and what is allowed", "[stage-options]") {
  CHECK_THROWS_WITH(mc::StageOptions("quantize", {{"bitz", "4"}}, "r.yaml: stage 2 (quantize)"),
                    Contains("r.yaml: stage 2 (quantize): option 'bitz' is not a quantize option (did you mean 'bits'?)"));
  CHECK_THROWS_WITH(mc::StageOptions("prune", {{"sparsity", "half"}}, "p"), Contains("option 'sparsity' must be a number, not 'half'"));
  CHECK_THROWS_WITH(mc::StageOptions("quantize", {{"bits", "4.5"}}, "q"), Contains("'bits' must be an integer"));
  CHECK_THROWS_WITH(mc::StageOptions("quantize", {{"asym", "yes"}}, "q"), Contains("is a flag"));
  CHECK_THROWS_AS(mc::StageOptions("compress", {}, "q"), mc::InputError);
  // combinations are checked by check_stage, still before anything runs
  CHECK_THROWS_WITH(mc::check_stage(mc::StageOptions("quantize", {{"sym", ""}, {"asym", ""}}, "q")),
                    Contains("--sym and --asym exclude each other"));
  CHECK_THROWS_WITH(mc::check_stage(mc::StageOptions("quantize", {{"method", "gtpq"}}, "q")),
                    Contains("'gtpq' is not available"));
  CHECK_THROWS_WITH(mc::check_stage(mc::StageOptions("prune", {{"pattern", "2-4"}}, "p")), Contains("is not N:M"));
  CHECK_THROWS_WITH(mc::check_stage(mc::StageOptions("distill", {{"loss", "kl=1,bogus=2"}}, "d")), Contains("d: "));
}

TEST_CASE("a recipe with a bad option in its last stage fails when loaded", "[stage-options][recipe]") {
  const std::string text = "stages:\n  - prune: {method: magnitude}\n  - quantize: {method: gptq, group-size: 32}\n"
                           "  - quantize: {method: rtn, act_ordr: true}\n";
  CHECK_THROWS_WITH(mc::parse_recipe(text, "x.yaml"),
                    Contains("x.yaml: stage 3 (quantize): option 'act-ordr' is not a quantize option (did you mean 'act-order'?)"));
  CHECK_THROWS_WITH(mc::parse_recipe("stages:\n  - quantize: {method: rtn, bits: 9}\n", "x.yaml"), Contains("bits"));
  CHECK_NOTHROW(mc::parse_recipe("stages:\n  - quantize: {method: gptq, bits: 3, act-order: true}\n", "x.yaml"));
}

TEST_CASE("sha256 matches the FIPS 180-4 examples", "[stage-options]") {
  CHECK(mc::sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(mc::sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(mc::sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  CHECK(mc::sha256_hex(std::string(1000000, 'a')) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}
