// xtask-logits: run one prompt through llama.cpp and dump the logits of every position.
//
// bitnet-xtask's crossval compares these files with other implementations, so the
// program does as little as possible and nothing clever: the prompt in one batch (or in
// chunks of --n-batch tokens) with logits for all positions, then a greedy (argmax)
// continuation fed back one token at a time. With --trace it also writes every named
// intermediate tensor of the prompt's evaluation, read through llama.cpp's public eval
// callback (llama_context_params.cb_eval): no patch to the engine.
//
// Only public llama.h / ggml.h calls are used. The same source builds against upstream
// llama.cpp and against microsoft/BitNet's 2024 fork; CMakeLists.txt probes the header and
// defines the XTASK_HAVE_* macros that select between the two API generations (namespace api).
//
// Output files (DIR = --out):
//   tokens.json        {"tokens": [...], "n_vocab": V, "n_tokens": N}
//   logits.f32         N x V float32, row-major, little-endian, no header
//   continuation.json  {"tokens": [...], "text": "..."}
// With --trace TDIR: TDIR/index.json and TDIR/tensors.f32 (README.md, "Traces").
// With --tokenize-only, tokens.json alone: the model is loaded with its vocabulary only
// (llama_model_params.vocab_only), so tokenizing costs no weights and no evaluation.
// stdout: one JSON summary line. Exit codes: 0 ok, 1 failure, 2 bad arguments.

#include "ggml-backend.h"
#include "ggml.h"
#include "llama.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <regex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#ifndef XTASK_HAVE_VOCAB_API
#error "build xtask-logits with its CMakeLists.txt: it defines the XTASK_HAVE_* API probes"
#endif

namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------------------------------
// The two llama.h generations, behind one small interface.

namespace api {

#if XTASK_HAVE_VOCAB_API
using vocab_t = const llama_vocab *;  // Jan 2025 onward: tokenizer calls take the vocab
inline vocab_t vocab_of(const llama_model * m) { return llama_model_get_vocab(m); }
inline int32_t n_vocab(vocab_t v) { return llama_vocab_n_tokens(v); }
inline llama_token bos(vocab_t v) { return llama_vocab_bos(v); }
inline bool add_bos(vocab_t v) { return llama_vocab_get_add_bos(v); }
#else
using vocab_t = const llama_model *;  // 2024 (BitNet's fork): they take the model
inline vocab_t vocab_of(const llama_model * m) { return m; }
inline int32_t n_vocab(vocab_t v) { return llama_n_vocab(v); }
inline llama_token bos(vocab_t v) { return llama_token_bos(v); }
inline bool add_bos(vocab_t v) { return llama_add_bos_token(v); }
#endif

inline llama_model * load_model(const char * path, llama_model_params p) {
#if XTASK_HAVE_MODEL_LOAD_FROM_FILE
    return llama_model_load_from_file(path, p);
#else
    return llama_load_model_from_file(path, p);
#endif
}

inline void free_model(llama_model * m) {
#if XTASK_HAVE_MODEL_LOAD_FROM_FILE
    llama_model_free(m);
#else
    llama_free_model(m);
#endif
}

inline llama_context * new_context(llama_model * m, llama_context_params p) {
#if XTASK_HAVE_INIT_FROM_MODEL
    return llama_init_from_model(m, p);
#else
    return llama_new_context_with_model(m, p);
#endif
}

// Identical signatures in both generations apart from vocab_t.
std::vector<llama_token> tokenize(vocab_t v, const std::string & text) {
    if (text.size() > INT32_MAX) throw std::runtime_error("prompt too long");
    const auto len = static_cast<int32_t>(text.size());
    // parse_special=true: "<s>" in the text is the control token, as in llama-cli.
    int32_t n = llama_tokenize(v, text.data(), len, nullptr, 0, false, true);
    if (n == INT32_MIN) throw std::runtime_error("prompt too long to tokenize");
    std::vector<llama_token> out(static_cast<size_t>(n < 0 ? -n : n));
    n = llama_tokenize(v, text.data(), len, out.data(), static_cast<int32_t>(out.size()), false, true);
    if (n < 0) throw std::runtime_error("tokenization failed");
    out.resize(static_cast<size_t>(n));
    return out;
}

std::string piece(vocab_t v, llama_token t) {
    std::string buf(32, '\0');
    int32_t n = llama_token_to_piece(v, t, buf.data(), static_cast<int32_t>(buf.size()), 0, false);
    if (n < 0) {
        buf.resize(static_cast<size_t>(-n));
        n = llama_token_to_piece(v, t, buf.data(), static_cast<int32_t>(buf.size()), 0, false);
        if (n < 0) throw std::runtime_error("llama_token_to_piece failed for token " + std::to_string(t));
    }
    buf.resize(static_cast<size_t>(n));
    return buf;
}

constexpr const char * generation = XTASK_HAVE_VOCAB_API ? "vocab" : "model";

}  // namespace api

// ---------------------------------------------------------------------------------------
// Arguments.

struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

constexpr const char * kUsage =
    "usage: xtask-logits --model M.gguf (--prompt TEXT | --tokens 1,2,3 | --tokens-file F)\n"
    "                    --out DIR [--n-predict N] [--threads T] [--n-gpu-layers L]\n"
    "                    [--n-batch B] [--n-ubatch U] [--cache-type-k T] [--cache-type-v T]\n"
    "                    [--no-bos] [--tokenize-only] [--verbose]\n"
    "                    [--trace TDIR [--trace-filter REGEX] [--trace-max-bytes N]]\n"
    "\n"
    "Evaluates all positions of the prompt and writes DIR/tokens.json, DIR/logits.f32\n"
    "(N x n_vocab float32, row-major, little-endian) and DIR/continuation.json (a greedy\n"
    "continuation of --n-predict tokens, default 16). One JSON summary line on stdout.\n"
    "\n"
    "  --prompt TEXT       tokenized by the model; BOS is prepended when the model asks for it\n"
    "  --tokens LIST       token ids, comma or space separated, used verbatim\n"
    "  --tokens-file F     the same from a file: a list, or JSON with a \"tokens\" array\n"
    "                      (so DIR/tokens.json of another run can be fed back)\n"
    "  --no-bos            never prepend BOS to --prompt\n"
    "  --tokenize-only     load the vocabulary alone and write DIR/tokens.json only: no\n"
    "                      weights, no context, no evaluation\n"
    "  --threads T         CPU threads (default: all cores)\n"
    "  --n-gpu-layers L    layers to offload (default 0: CPU only)\n"
    "  --n-batch B         feed the prompt to llama_decode in chunks of at most B tokens\n"
    "                      (1: one token at a time, through the KV cache; default: all at once)\n"
    "  --n-ubatch U        llama.cpp's micro-batch size (default: the batch size); U <= B\n"
    "  --cache-type-k T    the KV cache's K type, a ggml type name (f16, q8_0, ...; default:\n"
    "  --cache-type-v T    llama.cpp's, f16), and the same for V\n"
    "  --trace TDIR        write every named intermediate tensor of the prompt's evaluation to\n"
    "                      TDIR/tensors.f32 (float32) with TDIR/index.json describing them\n"
    "  --trace-filter RE   trace only tensors whose name matches RE (ECMAScript, searched)\n"
    "  --trace-max-bytes N write at most N bytes of tensor data (default 4 GiB); a tensor that\n"
    "                      no longer fits is listed in index.json under \"capped\" instead\n"
    "  --verbose           pass all llama.cpp log output to stderr (default: errors only)\n"
    "exit codes: 0 ok, 1 failure, 2 bad arguments\n";

enum class Source { none, prompt, tokens, tokens_file };

constexpr int64_t kDefaultTraceMaxBytes = int64_t{4} << 30;

struct Options {
    std::string model, out;
    Source source = Source::none;
    std::string input;  // the prompt, the token list, or the token file's path
    int n_predict = 16;
    int threads = 0;
    int n_gpu_layers = 0;
    int n_batch = 0;   // 0: the whole prompt in one llama_decode call
    int n_ubatch = 0;  // 0: the batch size
    std::optional<ggml_type> cache_type_k, cache_type_v;  // unset: llama.cpp's default
    bool no_bos = false;
    bool tokenize_only = false;
    bool verbose = false;
    std::string trace_dir;  // empty: no trace
    std::string trace_filter;
    bool has_trace_filter = false;
    std::regex trace_regex;
    int64_t trace_max_bytes = kDefaultTraceMaxBytes;
};

long long parse_int(const std::string & flag, const std::string & s, long long lo, long long hi) {
    char * end = nullptr;
    errno = 0;
    const long long v = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || errno == ERANGE || v < lo || v > hi) {
        throw UsageError(flag + " wants an integer in [" + std::to_string(lo) + ", " +
                         std::to_string(hi) + "], got '" + s + "'");
    }
    return v;
}

// A ggml type by the name ggml_type_name gives it ("f16", "q8_0", ...).
ggml_type parse_type(const std::string & flag, const std::string & s) {
    std::string known;
    for (int i = 0; i < GGML_TYPE_COUNT; ++i) {
        const char * name = ggml_type_name(static_cast<ggml_type>(i));
        if (name == nullptr || ggml_type_size(static_cast<ggml_type>(i)) == 0) continue;  // a removed type
        if (s == name) return static_cast<ggml_type>(i);
        known += std::string(known.empty() ? "" : ", ") + name;
    }
    throw UsageError(flag + " wants a ggml type name (" + known + "), got '" + s + "'");
}

Options parse_args(int argc, char ** argv) {
    Options o;
    bool has_max_bytes = false;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i], value;
        bool has_value = false;
        if (const auto eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
            value = arg.substr(eq + 1);
            arg.resize(eq);
            has_value = true;
        }
        auto need = [&]() -> std::string {
            if (has_value) return value;
            if (i + 1 >= argc) throw UsageError(arg + " needs a value");
            return argv[++i];
        };
        auto set_source = [&](Source s) {
            if (o.source != Source::none) throw UsageError("give only one of --prompt, --tokens, --tokens-file");
            o.source = s;
            o.input = need();
        };
        auto flag_only = [&]() {
            if (has_value) throw UsageError(arg + " takes no value");
        };
        if (arg == "--help" || arg == "-h") {
            std::fputs(kUsage, stdout);
            std::exit(0);
        } else if (arg == "--model") {
            o.model = need();
        } else if (arg == "--out") {
            o.out = need();
        } else if (arg == "--prompt") {
            set_source(Source::prompt);
        } else if (arg == "--tokens") {
            set_source(Source::tokens);
        } else if (arg == "--tokens-file") {
            set_source(Source::tokens_file);
        } else if (arg == "--n-predict") {
            o.n_predict = static_cast<int>(parse_int(arg, need(), 0, 1 << 20));
        } else if (arg == "--threads") {
            o.threads = static_cast<int>(parse_int(arg, need(), 1, 1024));
        } else if (arg == "--n-gpu-layers") {
            o.n_gpu_layers = static_cast<int>(parse_int(arg, need(), -1, 1 << 20));
        } else if (arg == "--n-batch") {
            o.n_batch = static_cast<int>(parse_int(arg, need(), 1, 1 << 24));
        } else if (arg == "--n-ubatch") {
            o.n_ubatch = static_cast<int>(parse_int(arg, need(), 1, 1 << 24));
        } else if (arg == "--cache-type-k") {
            o.cache_type_k = parse_type(arg, need());
        } else if (arg == "--cache-type-v") {
            o.cache_type_v = parse_type(arg, need());
        } else if (arg == "--trace") {
            o.trace_dir = need();
            if (o.trace_dir.empty()) throw UsageError("--trace needs a directory");
        } else if (arg == "--trace-filter") {
            o.trace_filter = need();
            o.has_trace_filter = true;
        } else if (arg == "--trace-max-bytes") {
            o.trace_max_bytes = parse_int(arg, need(), 0, INT64_MAX);
            has_max_bytes = true;
        } else if (arg == "--no-bos") {
            flag_only();
            o.no_bos = true;
        } else if (arg == "--tokenize-only") {
            flag_only();
            o.tokenize_only = true;
        } else if (arg == "--verbose") {
            flag_only();
            o.verbose = true;
        } else {
            throw UsageError("unknown argument '" + arg + "'");
        }
    }
    if (o.model.empty()) throw UsageError("--model is required");
    if (o.out.empty()) throw UsageError("--out is required");
    if (o.source == Source::none) throw UsageError("give one of --prompt, --tokens, --tokens-file");
    if (o.n_batch && o.n_ubatch > o.n_batch) {
        throw UsageError("--n-ubatch " + std::to_string(o.n_ubatch) + " is larger than --n-batch " +
                         std::to_string(o.n_batch) + ": a micro-batch is part of one batch");
    }
    if (o.trace_dir.empty() && (o.has_trace_filter || has_max_bytes)) {
        throw UsageError("--trace-filter and --trace-max-bytes go with --trace DIR");
    }
    if (o.tokenize_only && !o.trace_dir.empty()) {
        throw UsageError("--trace needs an evaluation, which --tokenize-only skips");
    }
    if (o.has_trace_filter) {
        try {
            o.trace_regex = std::regex(o.trace_filter, std::regex::ECMAScript);
        } catch (const std::regex_error & e) {
            throw UsageError("--trace-filter '" + o.trace_filter + "' is not a valid regular expression (" +
                             e.what() + ")");
        }
    }
    if (o.threads == 0) o.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    return o;
}

// "1,2,3", "1 2 3" or "[1, 2, 3]". Throws std::runtime_error naming `what`.
std::vector<llama_token> parse_token_list(std::string_view s, const std::string & what) {
    std::vector<llama_token> out;
    size_t i = 0;
    if (const auto b = s.find_first_not_of(" \t\r\n"); b != std::string_view::npos && s[b] == '[') {
        const auto e = s.find_last_not_of(" \t\r\n");
        if (s[e] != ']') throw std::runtime_error(what + ": '[' without a closing ']'");
        s = s.substr(b + 1, e - b - 1);
    }
    while (i < s.size()) {
        const char c = s[i];
        if (c == ',' || c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            ++i;
        } else if (c >= '0' && c <= '9') {
            int64_t v = 0;
            while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
                v = v * 10 + (s[i++] - '0');
                if (v > INT32_MAX) throw std::runtime_error(what + ": token id out of range");
            }
            out.push_back(static_cast<llama_token>(v));
        } else {
            throw std::runtime_error(what + ": unexpected character '" + std::string(1, c) +
                                     "' (want non-negative integers separated by commas or spaces)");
        }
    }
    return out;
}

std::string read_file(const std::string & path) {
    std::FILE * f = std::fopen(path.c_str(), "rb");
    if (!f) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
    std::string data;
    char buf[1 << 16];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) data.append(buf, n);
    const bool failed = std::ferror(f) != 0;
    std::fclose(f);
    if (failed) throw std::runtime_error("cannot read " + path);
    return data;
}

// A plain list, or a JSON object whose "tokens" member is an array of integers.
std::vector<llama_token> read_tokens_file(const std::string & path) {
    const std::string data = read_file(path);
    const auto first = data.find_first_not_of(" \t\r\n");
    if (first == std::string::npos || data[first] != '{') return parse_token_list(data, path);
    const auto key = data.find("\"tokens\"");
    const auto open = key == std::string::npos ? key : data.find('[', key);
    const auto close = open == std::string::npos ? open : data.find(']', open);
    if (close == std::string::npos) throw std::runtime_error(path + ": no \"tokens\": [...] array");
    return parse_token_list(std::string_view(data).substr(open, close - open + 1), path);
}

// ---------------------------------------------------------------------------------------
// Output.

// A JSON string literal. Invalid UTF-8 (a byte-level token can split a character)
// becomes U+FFFD so the file stays valid JSON; logits and ids are what gets compared.
std::string json_string(std::string_view s) {
    std::string out = "\"";
    for (size_t i = 0; i < s.size();) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
            if (c == '"' || c == '\\') {
                out += '\\';
                out += static_cast<char>(c);
            } else if (c < 0x20) {
                char esc[8];
                std::snprintf(esc, sizeof esc, "\\u%04x", c);
                out += esc;
            } else {
                out += static_cast<char>(c);
            }
            ++i;
            continue;
        }
        // Length and smallest code point of a well-formed sequence starting with c.
        const size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
        uint32_t cp = len == 4 ? (c & 0x07u) : len == 3 ? (c & 0x0Fu) : (c & 0x1Fu);
        bool ok = len != 0 && i + len <= s.size();
        for (size_t k = 1; ok && k < len; ++k) {
            const auto cc = static_cast<unsigned char>(s[i + k]);
            ok = (cc & 0xC0) == 0x80;
            cp = (cp << 6) | (cc & 0x3Fu);
        }
        const uint32_t min_cp = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
        ok = ok && cp >= min_cp && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
        if (ok) {
            out.append(s.substr(i, len));
            i += len;
        } else {
            out += "\xEF\xBF\xBD";
            ++i;
        }
    }
    return out + "\"";
}

std::string json_ints(const std::vector<llama_token> & v) {
    std::string out = "[";
    for (size_t i = 0; i < v.size(); ++i) {
        if (i) out += ", ";
        out += std::to_string(v[i]);
    }
    return out + "]";
}

// Writes through a temporary file and renames, so a reader never sees half a file.
class AtomicFile {
  public:
    explicit AtomicFile(fs::path path) : path_(std::move(path)), tmp_(path_) {
        tmp_ += ".tmp";
        f_ = std::fopen(tmp_.string().c_str(), "wb");
        if (!f_) throw std::runtime_error("cannot create " + tmp_.string() + ": " + std::strerror(errno));
    }
    AtomicFile(const AtomicFile &) = delete;
    AtomicFile & operator=(const AtomicFile &) = delete;
    ~AtomicFile() {
        if (f_) {  // not committed: an error is on its way out
            std::fclose(f_);
            std::error_code ec;
            fs::remove(tmp_, ec);
        }
    }
    void write(const void * data, size_t n) {
        if (std::fwrite(data, 1, n, f_) != n) fail();
    }
    void write(const std::string & s) { write(s.data(), s.size()); }
    void commit() {
        const bool ok = std::fflush(f_) == 0 && std::ferror(f_) == 0;
        const int rc = std::fclose(f_);
        f_ = nullptr;
        if (!ok || rc != 0) fail();
        fs::rename(tmp_, path_);
    }

  private:
    [[noreturn]] void fail() {
        throw std::runtime_error("cannot write " + tmp_.string() + ": " + std::strerror(errno));
    }
    fs::path path_, tmp_;
    std::FILE * f_ = nullptr;
};

bool host_is_little_endian() {
    const uint32_t one = 1;
    unsigned char b;
    std::memcpy(&b, &one, 1);
    return b == 1;
}

// Appends n float32 values, little-endian whatever the host's byte order.
void write_f32_le(AtomicFile & f, const float * v, size_t n) {
    if (host_is_little_endian()) {
        f.write(v, sizeof(float) * n);
        return;
    }
    std::vector<uint32_t> swapped(n);
    for (size_t j = 0; j < n; ++j) {
        uint32_t u;
        std::memcpy(&u, &v[j], 4);
        swapped[j] = (u >> 24) | ((u >> 8) & 0xFF00u) | ((u << 8) & 0xFF0000u) | (u << 24);
    }
    f.write(swapped.data(), sizeof(uint32_t) * n);
}

// ---------------------------------------------------------------------------------------
// llama.cpp glue.

struct LogFilter {
    bool verbose = false;
    bool showing = false;  // whether the message a CONT line continues was shown
};

void log_callback(ggml_log_level level, const char * text, void * user) {
    auto * f = static_cast<LogFilter *>(user);
    // Compare names, not numbers: the enum's values changed between the generations.
    if (level != GGML_LOG_LEVEL_CONT) f->showing = f->verbose || level == GGML_LOG_LEVEL_ERROR;
    if (f->showing) std::fputs(text, stderr);
}

struct BackendGuard {
    BackendGuard() { llama_backend_init(); }
    ~BackendGuard() { llama_backend_free(); }
    BackendGuard(const BackendGuard &) = delete;
    BackendGuard & operator=(const BackendGuard &) = delete;
};

struct ModelDeleter {
    void operator()(llama_model * m) const { api::free_model(m); }
};
struct ContextDeleter {
    void operator()(llama_context * c) const { llama_free(c); }
};

class Batch {
  public:
    explicit Batch(int32_t capacity) : b_(llama_batch_init(capacity, 0, 1)), capacity_(capacity) {}
    ~Batch() { llama_batch_free(b_); }
    Batch(const Batch &) = delete;
    Batch & operator=(const Batch &) = delete;

    // One sequence (id 0) at positions pos0, pos0+1, ...; logits for every token or the last.
    const llama_batch & fill(const llama_token * tokens, int32_t n, llama_pos pos0, bool all_logits) {
        if (n > capacity_) throw std::logic_error("batch overflow");
        b_.n_tokens = n;
        for (int32_t i = 0; i < n; ++i) {
            b_.token[i] = tokens[i];
            b_.pos[i] = pos0 + i;
            b_.n_seq_id[i] = 1;
            b_.seq_id[i][0] = 0;
            b_.logits[i] = all_logits || i == n - 1;
        }
        return b_;
    }

  private:
    llama_batch b_;
    int32_t capacity_;
};

void decode(llama_context * ctx, const llama_batch & batch, const char * what) {
    if (const int32_t rc = llama_decode(ctx, batch); rc != 0) {
        throw std::runtime_error(std::string("llama_decode failed (") + what + ", rc=" +
                                 std::to_string(rc) + ")");
    }
}

const float * logits_row(llama_context * ctx, int32_t i) {
    const float * row = llama_get_logits_ith(ctx, i);
    if (!row) throw std::runtime_error("llama.cpp returned no logits for batch index " + std::to_string(i));
    return row;
}

// First maximum wins, as numpy.argmax does, so ties resolve the same everywhere.
llama_token argmax(const float * row, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; ++i) {
        if (row[i] > row[best]) best = i;
    }
    return best;
}

double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

std::string fixed(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3f", v);
    return buf;
}

// ---------------------------------------------------------------------------------------

// The ids to evaluate: --tokens / --tokens-file verbatim, or --prompt tokenized (BOS
// prepended when the model asks for it), each checked against the vocabulary.
std::vector<llama_token> input_tokens(const Options & opt, std::vector<llama_token> tokens, api::vocab_t vocab,
                                      bool & bos_added) {
    const int32_t n_vocab = api::n_vocab(vocab);
    bos_added = false;
    if (opt.source == Source::prompt) {
        tokens = api::tokenize(vocab, opt.input);
        const llama_token bos = api::bos(vocab);
        if (!opt.no_bos && api::add_bos(vocab) && bos != LLAMA_TOKEN_NULL) {
            tokens.insert(tokens.begin(), bos);
            bos_added = true;
        }
    }
    if (tokens.empty()) throw std::runtime_error("nothing to evaluate: the input has no tokens");
    for (const llama_token t : tokens) {
        if (t < 0 || t >= n_vocab) {
            throw std::runtime_error("token id " + std::to_string(t) + " is outside the vocabulary (n_vocab " +
                                     std::to_string(n_vocab) + ")");
        }
    }
    return tokens;
}

fs::path output_dir(const std::string & out) {
    std::error_code ec;
    fs::create_directories(out, ec);
    if (ec) throw std::runtime_error("cannot create " + out + ": " + ec.message());
    return fs::path(out);
}

std::string tokens_json(const std::vector<llama_token> & tokens, int32_t n_vocab) {
    return "{\"tokens\": " + json_ints(tokens) + ", \"n_vocab\": " + std::to_string(n_vocab) +
           ", \"n_tokens\": " + std::to_string(tokens.size()) + "}\n";
}

// ---------------------------------------------------------------------------------------
// Traces: the prompt's evaluation as ggml computes it, tensor by tensor (README "Traces").
//
// ggml_backend_sched asks the eval callback about every graph node in order (ask=true),
// computes the nodes up to the first one it wants, synchronizes, and hands that node over
// (ask=false): ggml_backend_sched_compute_splits, ggml/src/ggml-backend.cpp:1814-1848 in
// upstream 0c1e57098 and :2150-2180 in the BitNet fork 406a5036. So each wanted tensor is
// read right after it is computed, before the graph allocator reuses its memory, and every
// tensor decided on earlier has already been written when the next one is asked about.

class Tracer {
  public:
    Tracer(const Options & opt, int32_t n_tokens)
        : opt_(opt), dir_(output_dir(opt.trace_dir)), data_(dir_ / "tensors.f32"), n_tokens_(n_tokens) {}

    // llama_context_params.cb_eval (ggml_backend_sched_eval_callback). Nothing may throw
    // through the engine: the first error is kept, tracing stops, and end_call rethrows it.
    static bool callback(ggml_tensor * t, bool ask, void * user) {
        auto * self = static_cast<Tracer *>(user);
        if (!self->active_) return false;
        try {
            if (ask) return self->want(t);
            self->take(t);
            return true;
        } catch (const std::exception & e) {
            self->error_ = e.what();
        } catch (...) {
            self->error_ = "unknown failure";
        }
        self->active_ = false;
        return false;
    }

    // Before each llama_decode call of the prompt: the call's first position, its token
    // count, and the context's micro-batch size, which says how llama.cpp splits it
    // (consecutive runs of n_ubatch tokens: split_simple, src/llama-batch.cpp:508 upstream,
    // src/llama.cpp:3139 in the fork).
    void begin_call(llama_pos pos0, int32_t n, int32_t n_ubatch) {
        call_pos0_ = pos0;
        n_ubatch_ = n_ubatch;
        expected_graphs_ = (n + n_ubatch - 1) / n_ubatch;
        graphs_in_call_ = 0;
        first_node_.clear();
    }

    // After the call: the error the callback kept, and a check that the graphs seen are
    // exactly the call's micro-batches, so no tensor is filed under the wrong positions.
    void end_call() {
        if (!error_.empty()) throw std::runtime_error("tracing failed: " + error_);
        if (graphs_in_call_ != expected_graphs_) {
            throw std::runtime_error("tracing: saw " + std::to_string(graphs_in_call_) + " graphs for " +
                                     std::to_string(expected_graphs_) +
                                     " micro-batches and cannot tell their positions apart; trace with "
                                     "--n-ubatch equal to --n-batch");
        }
        batch_base_ += graphs_in_call_;
    }

    // The prompt is done: the continuation's decodes are not traced.
    void stop() { active_ = false; }

    // Commits the data, then the index that describes it. Returns the summary's "trace" object.
    std::string finish(const char * llama_api) {
        data_.commit();
        AtomicFile index(dir_ / "index.json");
        index.write("{\"format\": \"xtask-trace\", \"version\": 1, \"producer\": \"xtask-logits\", \"llama_api\": \"" +
                    std::string(llama_api) + "\", \"n_tokens\": " + std::to_string(n_tokens_) + ",\n" +
                    json_list("tensors", tensors_) + ",\n" + json_list("skipped", skipped_) + ",\n" +
                    json_list("capped", capped_) + "}\n");
        index.commit();
        return "{\"dir\": " + json_string(opt_.trace_dir) + ", \"tensors\": " + std::to_string(tensors_.size()) +
               ", \"skipped\": " + std::to_string(skipped_.size()) + ", \"capped\": " +
               std::to_string(capped_.size()) + ", \"bytes\": " + std::to_string(written_) + "}";
    }

  private:
    static std::string json_list(const char * key, const std::vector<std::string> & items) {
        std::string out = "\"" + std::string(key) + "\": [";
        for (size_t i = 0; i < items.size(); ++i) out += (i ? ",\n  " : "\n  ") + items[i];
        return out + (items.empty() ? "]" : "\n]");
    }

    static std::string ne_json(const ggml_tensor * t) {
        std::string out = "[";
        for (int d = 0; d < 4; ++d) out += (d ? ", " : "") + std::to_string(t->ne[d]);
        return out + "]";
    }

    static bool readable(ggml_type type) {
        return type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_BF16;
    }

    // Each micro-batch's graph starts with the same node, which occurs once per graph (the
    // token embedding's GET_ROWS in both engines): its reappearance marks the next graph.
    // A wrong guess can only add graphs, which end_call refuses.
    void count_graph(const ggml_tensor * t) {
        std::string key = std::string(ggml_get_name(t)) + '\0' + ggml_op_desc(t);
        if (first_node_.empty()) {
            first_node_ = std::move(key);
            graphs_in_call_ = 1;
        } else if (key == first_node_) {
            ++graphs_in_call_;
        }
    }

    // The "name", "op" (and "type", "ne") members every list's entries start with.
    static std::string head_json(const ggml_tensor * t, bool with_type) {
        std::string out = "{\"name\": " + json_string(ggml_get_name(t)) + ", \"op\": " + json_string(ggml_op_desc(t));
        if (with_type) out += ", \"type\": " + json_string(ggml_type_name(t->type));
        return out + ", \"ne\": " + ne_json(t);
    }

    bool want(const ggml_tensor * t) {
        count_graph(t);
        const char * name = ggml_get_name(t);
        // ggml names every node nothing else named "node_<index>" (ggml_visit_parents,
        // ggml/src/ggml.c:7303 upstream, :19394 in the fork): those are traced; an empty
        // name would be a tensor outside any graph's naming, and is not.
        if (name[0] == '\0') return false;
        if (opt_.has_trace_filter && !std::regex_search(name, opt_.trace_regex)) return false;
        if (!readable(t->type)) {
            const char * why = ggml_is_quantized(t->type) ? "quantized: the tracer dequantizes nothing"
                                                            : "not a floating-point type";
            skipped_.push_back(head_json(t, true) + ", \"reason\": \"" + why +
                               " (f32, f16 and bf16 tensors are traced)\"}");
            return false;
        }
        const int64_t nbytes = ggml_nelements(t) * static_cast<int64_t>(sizeof(float));
        if (nbytes > opt_.trace_max_bytes - written_) {  // each tensor is written if it still fits
            capped_.push_back(head_json(t, false) + ", \"nbytes\": " + std::to_string(nbytes) + "}");
            return false;
        }
        return true;
    }

    // Reads the tensor (host or device buffer alike) and gathers it by its strides nb[]
    // into float32 in ne order, ne0 fastest, so views and permuted tensors come out right.
    void take(const ggml_tensor * t) {
        const int64_t n = ggml_nelements(t);
        values_.resize(static_cast<size_t>(n));
        if (n > 0) {
            raw_.resize(ggml_nbytes(t));
            ggml_backend_tensor_get(t, raw_.data(), 0, raw_.size());
            size_t k = 0;
            for (int64_t i3 = 0; i3 < t->ne[3]; ++i3) {
                for (int64_t i2 = 0; i2 < t->ne[2]; ++i2) {
                    for (int64_t i1 = 0; i1 < t->ne[1]; ++i1) {
                        const uint8_t * row = raw_.data() + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3];
                        for (int64_t i0 = 0; i0 < t->ne[0]; ++i0) values_[k++] = to_f32(t->type, row + i0 * t->nb[0]);
                    }
                }
            }
        }
        const int64_t graph = graphs_in_call_ - 1;
        tensors_.push_back(head_json(t, true) + ", \"offset\": " + std::to_string(written_) +
                           ", \"batch\": " + std::to_string(batch_base_ + graph) +
                           ", \"pos0\": " + std::to_string(call_pos0_ + graph * n_ubatch_) + "}");
        write_f32_le(data_, values_.data(), values_.size());
        written_ += n * static_cast<int64_t>(sizeof(float));
    }

    static float to_f32(ggml_type type, const uint8_t * p) {
        if (type == GGML_TYPE_F16) {
            ggml_fp16_t h;
            std::memcpy(&h, p, sizeof h);
            return ggml_fp16_to_fp32(h);
        }
        if (type == GGML_TYPE_BF16) {
            ggml_bf16_t h;
            std::memcpy(&h, p, sizeof h);
            return ggml_bf16_to_fp32(h);
        }
        float f;
        std::memcpy(&f, p, sizeof f);
        return f;
    }

    const Options & opt_;
    fs::path dir_;
    AtomicFile data_;
    int32_t n_tokens_;
    bool active_ = true;
    std::string error_;
    std::vector<std::string> tensors_, skipped_, capped_;  // index.json entries, graph order
    int64_t written_ = 0;                                  // bytes in tensors.f32
    std::vector<uint8_t> raw_;                             // one tensor at a time
    std::vector<float> values_;
    llama_pos call_pos0_ = 0;
    int64_t n_ubatch_ = 1, expected_graphs_ = 0, graphs_in_call_ = 0, batch_base_ = 0;
    std::string first_node_;
};

struct Timings {
    double load_ms = 0, eval_ms = 0, gen_ms = 0;
};

// --tokenize-only: the model was loaded with its vocabulary alone (no weights, no
// context), so crossval's tokenization parity check costs no evaluation.
int tokenize_only(const Options & opt, const std::vector<llama_token> & tokens, int32_t n_vocab, bool bos_added,
                  double load_ms) {
    AtomicFile tokens_file(output_dir(opt.out) / "tokens.json");
    tokens_file.write(tokens_json(tokens, n_vocab));
    tokens_file.commit();
    std::printf(
        "{\"ok\": true, \"tokenize_only\": true, \"model\": %s, \"out\": %s, \"n_tokens\": %d, \"n_vocab\": %d, "
        "\"bos_added\": %s, \"llama_api\": \"%s\", \"load_ms\": %s}\n",
        json_string(opt.model).c_str(), json_string(opt.out).c_str(), static_cast<int>(tokens.size()), n_vocab,
        bos_added ? "true" : "false", api::generation, fixed(load_ms).c_str());
    return std::fflush(stdout) == 0 ? 0 : 1;
}

int evaluate(const Options & opt, llama_model * model, const std::vector<llama_token> & tokens, bool bos_added,
             Timings t) {
    const api::vocab_t vocab = api::vocab_of(model);
    const int32_t n_vocab = api::n_vocab(vocab);
    const auto n_tokens = static_cast<int32_t>(tokens.size());

    // The prompt goes to llama_decode in chunks of n_batch tokens (default: all of it in
    // one call), which llama.cpp splits into micro-batches of n_ubatch, one compute graph each.
    const int32_t n_batch = opt.n_batch ? opt.n_batch : n_tokens;
    const int32_t n_ubatch = opt.n_ubatch ? std::min(opt.n_ubatch, n_batch) : n_batch;
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = static_cast<uint32_t>(n_tokens + opt.n_predict);
    cparams.n_batch = static_cast<uint32_t>(n_batch);  // a call may hold at most n_batch tokens
    cparams.n_ubatch = static_cast<uint32_t>(n_ubatch);
    if (opt.cache_type_k) cparams.type_k = *opt.cache_type_k;
    if (opt.cache_type_v) cparams.type_v = *opt.cache_type_v;
    cparams.n_seq_max = 1;
    cparams.n_threads = opt.threads;
    cparams.n_threads_batch = opt.threads;
#if XTASK_HAVE_OP_OFFLOAD
    if (opt.n_gpu_layers == 0) cparams.op_offload = false;  // CPU only means CPU only
#endif
    std::unique_ptr<Tracer> tracer;
    if (!opt.trace_dir.empty()) {
        tracer = std::make_unique<Tracer>(opt, n_tokens);
        cparams.cb_eval = &Tracer::callback;
        cparams.cb_eval_user_data = tracer.get();
    }
    std::unique_ptr<llama_context, ContextDeleter> ctx(api::new_context(model, cparams));
    if (!ctx) throw std::runtime_error("cannot create a llama context (rerun with --verbose)");

    // 1. Every position, chunk by chunk; logits for all of them, row i after token i.
    auto t0 = std::chrono::steady_clock::now();
    const int32_t chunk = std::min(n_batch, n_tokens);
    Batch batch(chunk);
    const fs::path out_dir = output_dir(opt.out);
    AtomicFile logits_file(out_dir / "logits.f32");
    llama_token next = 0;
    for (int32_t pos0 = 0; pos0 < n_tokens; pos0 += chunk) {
        const int32_t n = std::min(chunk, n_tokens - pos0);
        if (tracer) tracer->begin_call(pos0, n, static_cast<int32_t>(llama_n_ubatch(ctx.get())));
        decode(ctx.get(), batch.fill(tokens.data() + pos0, n, pos0, true), "prompt");
        if (tracer) tracer->end_call();
        for (int32_t i = 0; i < n; ++i) {
            const float * row = logits_row(ctx.get(), i);
            if (pos0 + i == n_tokens - 1) next = argmax(row, n_vocab);
            write_f32_le(logits_file, row, static_cast<size_t>(n_vocab));
        }
    }
    logits_file.commit();
    std::string trace_summary = "null";
    if (tracer) {
        tracer->stop();
        trace_summary = tracer->finish(api::generation);
    }
    t.eval_ms = ms_since(t0);

    // 2. Greedy continuation: each argmax is fed back as a one-token batch.
    t0 = std::chrono::steady_clock::now();
    std::vector<llama_token> continuation;
    std::string text;
    for (int32_t k = 0; k < opt.n_predict; ++k) {
        continuation.push_back(next);
        text += api::piece(vocab, next);
        if (k + 1 == opt.n_predict) break;
        decode(ctx.get(), batch.fill(&next, 1, n_tokens + k, true), "continuation");
        next = argmax(logits_row(ctx.get(), 0), n_vocab);
    }
    t.gen_ms = ms_since(t0);

    AtomicFile tokens_file(out_dir / "tokens.json");
    tokens_file.write(tokens_json(tokens, n_vocab));
    AtomicFile cont_file(out_dir / "continuation.json");
    cont_file.write("{\"tokens\": " + json_ints(continuation) + ", \"text\": " + json_string(text) + "}\n");
    tokens_file.commit();
    cont_file.commit();

    std::printf(
        "{\"ok\": true, \"model\": %s, \"out\": %s, \"n_tokens\": %d, \"n_vocab\": %d, \"bos_added\": %s, "
        "\"n_predict\": %d, \"continuation\": %s, \"threads\": %d, \"n_gpu_layers\": %d, "
        "\"n_batch\": %d, \"n_ubatch\": %d, \"cache_type_k\": \"%s\", \"cache_type_v\": \"%s\", \"trace\": %s, "
        "\"llama_api\": \"%s\", \"load_ms\": %s, \"eval_ms\": %s, \"gen_ms\": %s}\n",
        json_string(opt.model).c_str(), json_string(opt.out).c_str(), n_tokens, n_vocab,
        bos_added ? "true" : "false", opt.n_predict, json_ints(continuation).c_str(), opt.threads,
        opt.n_gpu_layers, chunk, std::min(chunk, static_cast<int32_t>(llama_n_ubatch(ctx.get()))),
        ggml_type_name(cparams.type_k), ggml_type_name(cparams.type_v),
        trace_summary.c_str(), api::generation, fixed(t.load_ms).c_str(),
        fixed(t.eval_ms).c_str(), fixed(t.gen_ms).c_str());
    return std::fflush(stdout) == 0 ? 0 : 1;
}

int run(int argc, char ** argv) {
    const Options opt = parse_args(argc, argv);

    // Read the inputs before the slow model load, so bad input fails fast.
    std::vector<llama_token> given;
    if (opt.source == Source::tokens) given = parse_token_list(opt.input, "--tokens");
    if (opt.source == Source::tokens_file) given = read_tokens_file(opt.input);
    if (!fs::is_regular_file(opt.model)) throw std::runtime_error("model file not found: " + opt.model);

    LogFilter log_filter;
    log_filter.verbose = opt.verbose;
    llama_log_set(log_callback, &log_filter);
    BackendGuard backend;

    Timings t;
    const auto t0 = std::chrono::steady_clock::now();
    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = opt.n_gpu_layers;  // explicit: newer defaults offload everything
    mparams.vocab_only = opt.tokenize_only;
    std::unique_ptr<llama_model, ModelDeleter> model(api::load_model(opt.model.c_str(), mparams));
    if (!model) throw std::runtime_error("cannot load model " + opt.model + " (rerun with --verbose)");
    t.load_ms = ms_since(t0);

    const api::vocab_t vocab = api::vocab_of(model.get());
    bool bos_added = false;
    const std::vector<llama_token> tokens = input_tokens(opt, std::move(given), vocab, bos_added);
    if (opt.tokenize_only) return tokenize_only(opt, tokens, api::n_vocab(vocab), bos_added, t.load_ms);
    return evaluate(opt, model.get(), tokens, bos_added, t);
}

}  // namespace

int main(int argc, char ** argv) {
    try {
        return run(argc, argv);
    } catch (const UsageError & e) {
        std::fprintf(stderr, "xtask-logits: %s\n(xtask-logits --help shows the usage)\n", e.what());
        return 2;
    } catch (const std::exception & e) {
        std::fprintf(stderr, "xtask-logits: error: %s\n", e.what());
        return 1;
    } catch (...) {
        std::fprintf(stderr, "xtask-logits: error: unknown failure\n");
        return 1;
    }
}
