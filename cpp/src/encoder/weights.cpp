// Text encoder configuration (validation, config.json) and weights (safetensors, BERT names).
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

#include "inferline/encoder/encoder.hpp"
#include "inferline/native/safetensors.hpp"

namespace inferline::encoder {

encoder_exec::~encoder_exec() = default;

void encoder_config::validate() const {
  auto need = [](bool ok, const char* what) {
    if (!ok) throw std::invalid_argument(std::string("text encoder config: ") + what);
  };
  need(layers >= 1, "layers must be >= 1");
  need(hidden >= 1, "hidden must be >= 1");
  need(heads >= 1 && hidden % heads == 0, "hidden must be a positive multiple of heads");
  need(intermediate >= 1, "intermediate must be >= 1");
  need(vocab >= 1, "vocab must be >= 1");
  need(type_vocab >= 1, "type_vocab must be >= 1");
  need(max_position >= 1, "max_position must be >= 1");
  need(max_seq_len >= 1 && max_seq_len <= max_position,
       "max_seq_len must be in 1..max_position");
  need(max_batch_size >= 1 && max_batch_size <= 65536, "max_batch_size must be in 1..65536");
  need(std::isfinite(layer_norm_eps) && layer_norm_eps > 0.0f, "layer_norm_eps must be > 0");
  need(std::isfinite(l2_eps) && l2_eps > 0.0f, "l2_eps must be > 0");
}

namespace {

// config.json is a flat object for BERT; the few keys we need are looked up by name (the first
// occurrence of `"key"` followed by a colon), which is all this file format needs here.
std::string raw_value(const std::string& text, const std::string& key, const std::string& path) {
  const std::string quoted = "\"" + key + "\"";
  std::size_t at = 0;
  while ((at = text.find(quoted, at)) != std::string::npos) {
    std::size_t p = at + quoted.size();
    while (p < text.size() && std::isspace(static_cast<unsigned char>(text[p]))) ++p;
    if (p < text.size() && text[p] == ':') {
      ++p;
      while (p < text.size() && std::isspace(static_cast<unsigned char>(text[p]))) ++p;
      std::size_t end = p;
      if (end < text.size() && text[end] == '"') {
        end = text.find('"', end + 1);
        if (end == std::string::npos) break;
        return text.substr(p, end + 1 - p);
      }
      while (end < text.size() && text[end] != ',' && text[end] != '}' &&
             !std::isspace(static_cast<unsigned char>(text[end]))) {
        ++end;
      }
      return text.substr(p, end - p);
    }
    at = p;
  }
  throw std::runtime_error(path + ": missing field \"" + key + "\"");
}

int int_field(const std::string& text, const char* key, const std::string& path) {
  const std::string v = raw_value(text, key, path);
  char* end = nullptr;
  errno = 0;
  const long n = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0 || n < 1 || n > (1L << 30)) {
    throw std::runtime_error(path + ": field \"" + key + "\" must be a positive integer, got " +
                             v);
  }
  return static_cast<int>(n);
}

}  // namespace

encoder_config read_bert_config(const std::string& path, encoder_config base) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open the model config");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  base.layers = int_field(text, "num_hidden_layers", path);
  base.hidden = int_field(text, "hidden_size", path);
  base.heads = int_field(text, "num_attention_heads", path);
  base.intermediate = int_field(text, "intermediate_size", path);
  base.vocab = int_field(text, "vocab_size", path);
  base.max_position = int_field(text, "max_position_embeddings", path);
  base.type_vocab = int_field(text, "type_vocab_size", path);
  const std::string eps = raw_value(text, "layer_norm_eps", path);
  char* end = nullptr;
  const float e = std::strtof(eps.c_str(), &end);
  if (eps.empty() || *end != '\0' || !(e > 0.0f)) {
    throw std::runtime_error(path + ": field \"layer_norm_eps\" must be a positive number, got " +
                             eps);
  }
  base.layer_norm_eps = e;
  const std::string act = raw_value(text, "hidden_act", path);
  if (act != "\"gelu\"") {
    throw std::runtime_error(path +
                             ": field \"hidden_act\" must be \"gelu\" (exact erf GELU), got " +
                             act);
  }
  return base;
}

namespace {

// Appends "[a, b]" (built by append: GCC 12 warns falsely on "[" + std::string).
void append_shape(std::string& out, const std::vector<std::size_t>& shape) {
  out += '[';
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  out += ']';
}

class loader {
 public:
  loader(const std::string& path) : file_(path) {
    // Hugging Face checkpoints name the tensors with or without the "bert." of BertModel.
    if (file_.find("embeddings.word_embeddings.weight") == nullptr &&
        file_.find("bert.embeddings.word_embeddings.weight") != nullptr) {
      prefix_ = "bert.";
    }
  }

  std::vector<float> get(const std::string& name, std::size_t rows, std::size_t cols = 0) const {
    const native::st_tensor* t = file_.find(prefix_ + name);
    if (t == nullptr) {
      throw std::runtime_error(file_.path() + ": tensor " + prefix_ + name + " is missing");
    }
    const bool ok = cols == 0 ? (t->shape.size() == 1 && t->shape[0] == rows)
                              : (t->shape.size() == 2 && t->shape[0] == rows &&
                                 t->shape[1] == cols);
    if (!ok) {
      std::vector<std::size_t> want{rows};
      if (cols != 0) want.push_back(cols);
      std::string msg = file_.path();
      msg.append(": tensor ").append(prefix_).append(name).append(" has shape ");
      append_shape(msg, t->shape);
      msg.append(", expected ");
      append_shape(msg, want);
      throw std::runtime_error(msg);
    }
    std::vector<float> out;
    native::tensor_to_f32(*t, out);
    return out;
  }

 private:
  native::safetensors_file file_;
  std::string prefix_;
};

}  // namespace

std::shared_ptr<const encoder_weights> encoder_weights::load(const std::string& path,
                                                             const encoder_config& c) {
  c.validate();
  const loader f(path);
  const auto h = static_cast<std::size_t>(c.hidden);
  const auto inter = static_cast<std::size_t>(c.intermediate);
  auto w = std::make_shared<encoder_weights>();
  w->word_emb = f.get("embeddings.word_embeddings.weight", static_cast<std::size_t>(c.vocab), h);
  w->pos_emb = f.get("embeddings.position_embeddings.weight",
                     static_cast<std::size_t>(c.max_position), h);
  w->type_emb = f.get("embeddings.token_type_embeddings.weight",
                      static_cast<std::size_t>(c.type_vocab), h);
  w->emb_ln_g = f.get("embeddings.LayerNorm.weight", h);
  w->emb_ln_b = f.get("embeddings.LayerNorm.bias", h);
  w->layers.resize(static_cast<std::size_t>(c.layers));
  for (int i = 0; i < c.layers; ++i) {
    const std::string p = "encoder.layer." + std::to_string(i) + ".";
    encoder_layer_weights& l = w->layers[static_cast<std::size_t>(i)];
    l.qkv_w.reserve(3 * h * h);
    l.qkv_b.reserve(3 * h);
    for (const char* part : {"query", "key", "value"}) {
      const auto wt = f.get(p + "attention.self." + part + ".weight", h, h);
      const auto bs = f.get(p + "attention.self." + part + ".bias", h);
      l.qkv_w.insert(l.qkv_w.end(), wt.begin(), wt.end());
      l.qkv_b.insert(l.qkv_b.end(), bs.begin(), bs.end());
    }
    l.attn_out_w = f.get(p + "attention.output.dense.weight", h, h);
    l.attn_out_b = f.get(p + "attention.output.dense.bias", h);
    l.ln1_g = f.get(p + "attention.output.LayerNorm.weight", h);
    l.ln1_b = f.get(p + "attention.output.LayerNorm.bias", h);
    l.ffn_in_w = f.get(p + "intermediate.dense.weight", inter, h);
    l.ffn_in_b = f.get(p + "intermediate.dense.bias", inter);
    l.ffn_out_w = f.get(p + "output.dense.weight", h, inter);
    l.ffn_out_b = f.get(p + "output.dense.bias", h);
    l.ln2_g = f.get(p + "output.LayerNorm.weight", h);
    l.ln2_b = f.get(p + "output.LayerNorm.bias", h);
  }
  return w;
}

void check_packed_batch(const encoder_config& c, const std::int32_t* ids,
                        const std::int32_t* offsets, int n) {
  if (n < 1 || n > c.max_batch_size) {
    throw std::invalid_argument("text encoder: batch of " + std::to_string(n) +
                                " sequences, expected 1.." + std::to_string(c.max_batch_size));
  }
  if (offsets[0] != 0) throw std::invalid_argument("text encoder: offsets[0] must be 0");
  for (int i = 0; i < n; ++i) {
    const std::int32_t len = offsets[i + 1] - offsets[i];
    if (len < 1 || len > c.max_seq_len) {
      throw std::invalid_argument("text encoder: sequence " + std::to_string(i) + " has " +
                                  std::to_string(len) + " tokens, expected 1.." +
                                  std::to_string(c.max_seq_len));
    }
    for (std::int32_t t = offsets[i]; t < offsets[i + 1]; ++t) {
      if (ids[t] < 0 || ids[t] >= c.vocab) {
        throw std::invalid_argument("text encoder: sequence " + std::to_string(i) +
                                    " has token id " + std::to_string(ids[t]) +
                                    " outside 0.." + std::to_string(c.vocab - 1));
      }
    }
  }
}

}  // namespace inferline::encoder
