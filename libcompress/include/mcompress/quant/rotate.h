// Hadamard rotations of a llama-family model before quantization (QuaRot, Ashkboos et al. 2024; SpinQuant
// with fixed rotations, Liu et al. 2024): the rotated float model computes the same function, and its
// weights and activations have their outliers spread over many channels, so low-bit grids fit them better.
//
// 1. Each RMSNorm's weight is folded into the linears reading it (W diag(w), the norm's weight becomes 1;
//    Gemma's (1 + w): w becomes 0). RMSNorm is then rotation-invariant: ||x Q|| = ||x||.
// 2. R1 on the residual stream, Q = diag(s) H_dim (s: ±1 signs from a splitmix64 seeded by `seed`): the
//    embedding rows E Q, every linear reading the stream W Q, every linear writing to it (o_proj, down_proj)
//    Qᵀ W and its bias bQ, the classifier W Q. A tied classifier stays tied when the final norm's weight is
//    all ones (the same E Q serves both); otherwise it is untied first (its weight E diag(w) cannot be the
//    embedding any more): + vocab x dim parameters, said in the summary.
// 3. R2 per attention head: v_proj's output rows of each KV head Hᵀ W (and its bias), o_proj's input
//    columns of each query head W H (H = H_head_dim, the same for every head, so grouped KV heads agree).
// 4. With `online`: R4 on down_proj's input, W H_hidden, and the model applies x H_hidden to the input at run
//    time (Model::set_input_hadamard; the checkpoint's kRotationMetadataKey lists the layers). Formats
//    without such a transform (Hugging Face safetensors, GGUF) cannot carry it: export refuses such a model.
// Everything is computed in float64 and stored back in float32. Deterministic: the same model and seed
// give the same bytes. Gemma 2/3's sandwich norms (a norm with its own weight on o's and down's outputs,
// before the residual add) cannot pass R1 through and are refused, as are models that are not llama-family.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mc {

class Model;

struct RotateOptions {
  bool online = false;  // R4 on down_proj's input (online Hadamard at run time)
  uint64_t seed = 0;    // signs of R1
};

struct RotateResult {
  std::string summary;                      // for the report's settings
  std::vector<std::string> online_layers;   // layers given an online Hadamard (R4)
  bool untied = false;                      // the classifier was untied
  std::string metadata() const;             // the checkpoint's kRotationMetadataKey value
};

// InputError (saying why) for a model rotate_model cannot rotate; the plan of what it will do otherwise
// ("norms folded, R1 64 (Sylvester) ..."), before any weight is read.
std::string rotation_plan(const Model& model, const RotateOptions& o);

// Rewrites `model` in place as above. InputError for a model it cannot rotate (the message says why).
RotateResult rotate_model(Model& model, const RotateOptions& o);

// How many layers of the checkpoint at `path` (a file, or an mcompress output directory) have an online
// Hadamard (--rotate hadamard-online); 0 for any other checkpoint. Export refuses such a model.
size_t online_hadamard_layers(const std::string& path);

// The online Hadamard layers of a checkpoint's kRotationMetadataKey value, turned on in `model`.
void apply_rotation_metadata(Model& model, const std::string& value, const std::string& where);

}  // namespace mc
