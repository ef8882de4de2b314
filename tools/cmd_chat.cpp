// ferry chat MODEL.ferry: multi-turn chat with the model's chat template. The KV cache is kept
// between turns: each turn evaluates only the tokens after the longest prefix the cache already
// holds. /reset forgets the conversation, /exit or end of input leaves; Ctrl-C stops the answer
// being generated, and at the prompt leaves. Answers go to stdout, everything else to stderr,
// and on a pipe there is no "> " prompt, so that scripts and tests can drive it.
#include <poll.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <thread>

#include "base/error.hpp"
#include "runtime/engine.hpp"
#include "runtime/generate.hpp"
#include "text/chat_template.hpp"
#include "tools/commands.hpp"
#include "tools/option_names.hpp"

namespace ferry {
namespace {

// Ctrl-C without a signal handler or a static flag: SIGINT is blocked before the engine starts
// its thread pool (threads inherit the mask, so no kernel thread can take it), and one watcher
// thread takes it with sigwait. During an answer it sets `cancel`, which generate() checks
// between tokens; at the prompt it writes to a pipe that the line reader polls with stdin.
class Interrupts {
 public:
  Interrupts() {
    const sigset_t set = sigint_set();
    if (pthread_sigmask(SIG_BLOCK, &set, nullptr) != 0 || pipe(wake_) != 0)
      throw Error("cannot set up Ctrl-C handling (pthread_sigmask or pipe failed)");
    watcher_ = std::thread([this] { watch(); });
  }
  ~Interrupts() {
    quit_ = true;
    pthread_kill(watcher_.native_handle(), SIGINT);  // wakes sigwait
    watcher_.join();
    close(wake_[0]);
    close(wake_[1]);
  }
  Interrupts(const Interrupts&) = delete;
  Interrupts& operator=(const Interrupts&) = delete;

  std::atomic<bool> answering = false, cancel = false;
  int wake_fd() const { return wake_[0]; }

 private:
  static sigset_t sigint_set() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    return set;
  }
  void watch() {
    const sigset_t set = sigint_set();
    for (int sig = 0; sigwait(&set, &sig) == 0 && !quit_;) {
      if (answering) {
        cancel = true;
      } else {
        const char c = 'x';
        (void)!write(wake_[1], &c, 1);
      }
    }
  }

  std::atomic<bool> quit_ = false;
  int wake_[2] = {-1, -1};
  std::thread watcher_;
};

enum class Input { line, end, interrupted };

// Reads one line from stdin (without its newline), or returns `interrupted` once the wake pipe
// is readable. `pending` keeps what was read past the line.
Input read_line(int wake_fd, std::string& pending, std::string& line) {
  for (;;) {
    if (const size_t nl = pending.find('\n'); nl != std::string::npos) {
      line = pending.substr(0, nl > 0 && pending[nl - 1] == '\r' ? nl - 1 : nl);
      pending.erase(0, nl + 1);
      return Input::line;
    }
    pollfd fds[2] = {{0, POLLIN, 0}, {wake_fd, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) continue;  // EINTR
    if (fds[1].revents & POLLIN) return Input::interrupted;
    char buf[4096];
    const ssize_t n = read(0, buf, sizeof buf);
    if (n <= 0) {
      if (pending.empty()) return Input::end;
      line = std::exchange(pending, {});  // a last line without a newline
      return Input::line;
    }
    pending.append(buf, size_t(n));
  }
}

std::string meta_text(const PackedFile& f, const char* key) {
  const auto it = f.file.metadata().find(key);
  return it == f.file.metadata().end() ? std::string() : it->second;
}

class Chat {
 public:
  Chat(Engine& e, Sampler& s, ChatTemplate t, std::string system, uint64_t max_tokens)
      : engine_(e), sampler_(s), tmpl_(std::move(t)), system_(std::move(system)) {
    gen_.max_tokens = max_tokens;
    gen_.stop_ids = eos_token_ids(e);
    for (const std::string& m : chat_stop_tokens(tmpl_))
      if (const int32_t id = e.tokenizer().token_to_id(m); id >= 0) gen_.stop_ids.push_back(id);
    reset();
  }

  // Forgets the conversation. The KV cache is left as it is: the next prompt reuses whatever
  // prefix it shares with it (the system prompt, at least).
  void reset() {
    messages_.clear();
    if (!system_.empty()) messages_.push_back({"system", system_});
    in_sync_ = false;
  }

  // One turn: the user's line, then the answer streamed to stdout. A line that cannot be taken
  // (it does not fit the context, or is not valid text) is reported and forgotten; the
  // conversation goes on, and refused() turns true for the exit status.
  void turn(const std::string& line, Interrupts& irq) {
    messages_.push_back({"user", line});
    bool ready = false;
    try {
      ready = prepare_prompt();
    } catch (const Error& e) {
      std::fprintf(stderr, "ferry: this line was not sent: %s\n", cli_message(e, "chat").c_str());
    }
    if (!ready) {
      messages_.pop_back();
      refused_ = true;
      return;
    }
    answer(irq);
  }
  bool refused() const { return refused_; }

 private:
  // Tokens for the conversation rendered with a generation prompt. When the rendering extends
  // the text the context spells, only the new text is encoded, so that the answer keeps the very
  // tokens that were generated; otherwise (after /reset, a stop string, or a format that rewrites
  // history, as DeepSeek-R1 drops the reasoning) all of it is, and the common prefix is kept.
  bool prepare_prompt() {
    const std::string text = render_chat(tmpl_, messages_, true);
    std::vector<int32_t> ids;
    if (in_sync_ && text.starts_with(rendered_)) {
      ids = context_;
      const std::vector<int32_t> more =
          engine_.tokenizer().encode(std::string_view(text).substr(rendered_.size()), false);
      ids.insert(ids.end(), more.begin(), more.end());
    } else {
      ids = engine_.tokenizer().encode(text, false);
    }
    if (ids.size() >= engine_.ctx()) {
      std::fprintf(stderr,
                   "ferry: this turn needs %zu tokens, the context holds %llu; /reset to start "
                   "over or restart with a larger --ctx\n",
                   ids.size(), (unsigned long long)engine_.ctx());
      return false;
    }
    const auto diff = std::mismatch(context_.begin(), context_.end(), ids.begin(), ids.end());
    evaluated_ = std::min<uint64_t>(evaluated_, uint64_t(diff.first - context_.begin()));
    context_ = std::move(ids);
    rendered_ = text;
    in_sync_ = true;
    return true;
  }

  void answer(Interrupts& irq) {
    const size_t prompt_len = context_.size();
    std::string reply;
    GenerateOptions g = gen_;
    g.cancel = &irq.cancel;
    irq.cancel = false;
    irq.answering = true;
    const GenerateStats st =
        generate(engine_, sampler_, context_, evaluated_, g, [&reply](std::string_view text) {
          reply += text;
          std::fwrite(text.data(), 1, text.size(), stdout);
          std::fflush(stdout);
        });
    irq.answering = false;
    std::fputs("\n", stdout);
    std::fflush(stdout);
    // The tokens spell the reply exactly unless a stop string was cut off or a special token
    // was generated (decode drops it): then the next turn re-encodes the history.
    const std::span<const int32_t> answer(context_.begin() + long(prompt_len), context_.end());
    in_sync_ =
        st.reason != StopReason::stop_string && engine_.tokenizer().decode(answer, false) == reply;
    rendered_ += reply;
    messages_.push_back({"assistant", std::move(reply)});
    report(st);
  }

  void report(const GenerateStats& st) const {
    std::fprintf(stderr,
                 "[%llu prompt tokens evaluated, %llu generated, %.1f tok/s, stopped: %s]\n",
                 (unsigned long long)st.prompt_tokens, (unsigned long long)st.generated,
                 st.decode_rate(), std::string(stop_reason_name(st.reason)).c_str());
    if (st.reason == StopReason::context_full)
      std::fprintf(stderr,
                   "ferry: the context of %llu tokens is full; /reset to start over or "
                   "restart with a larger --ctx\n",
                   (unsigned long long)engine_.ctx());
  }

  Engine& engine_;
  Sampler& sampler_;
  const ChatTemplate tmpl_;
  const std::string system_;
  GenerateOptions gen_;
  std::vector<ChatMessage> messages_;
  std::vector<int32_t> context_;  // the tokens of the conversation so far
  uint64_t evaluated_ = 0;        // how many of them the KV cache holds
  std::string rendered_;          // the text context_ spells, when in_sync_
  bool in_sync_ = false;
  bool refused_ = false;  // a line was not sent
};

std::optional<ChatFormat> forced_format(const cxxopts::ParseResult& a) {
  if (!a.count("template")) return std::nullopt;
  const std::string name = a["template"].as<std::string>();
  const std::optional<ChatFormat> f = parse_chat_format(name);
  if (!f)
    throw Error("--template: '" + name +
                "' is not a chat format; choose chatml, llama3 or deepseek-r1");
  return f;
}

// Reads lines until /exit, end of input or Ctrl-C at the prompt.
void chat_loop(Chat& chat, Interrupts& irq) {
  const bool tty = isatty(0);
  std::string pending, line;
  for (;;) {
    if (tty) std::fputs("> ", stdout), std::fflush(stdout);
    const Input in = read_line(irq.wake_fd(), pending, line);
    if (in != Input::line || line == "/exit") break;
    if (line == "/reset") {
      chat.reset();
      std::fputs("(conversation reset)\n", stderr);
    } else if (!line.empty()) {
      chat.turn(line, irq);
    }
  }
  if (tty) std::fputs("\n", stdout);
}

}  // namespace

int cmd_chat(int argc, char** argv) {
  cxxopts::Options o("ferry chat",
                     "Chat with a .ferry model. /reset forgets the conversation, /exit leaves; "
                     "Ctrl-C stops an answer.");
  o.positional_help("MODEL.ferry");
  add_engine_options(o);
  add_sampler_options(o);
  o.add_options()("template",
                  "a built-in chat format instead of the model's own template: chatml, llama3 or "
                  "deepseek-r1",
                  cxxopts::value<std::string>())(
      "system", "system prompt (when not given: the template's own, if any)",
      cxxopts::value<std::string>())("n,tokens", "most tokens per answer",
                                     cxxopts::value<uint64_t>()->default_value("512"))("h,help",
                                                                                       "this help");
  o.parse_positional({"model"});
  const auto a = parse_command(o, argc, argv);
  if (a.count("help")) return std::puts(o.help().c_str()), 0;
  const std::optional<ChatFormat> forced = forced_format(a);

  Interrupts irq;  // before the engine starts its threads, so that they inherit the mask
  Engine e(engine_options(a));
  warn_about_context(e);
  const ChatTemplate t = load_chat_template(meta_text(e.file(), meta::kTokenizerConfig),
                                            meta_text(e.file(), meta::kChatTemplate), forced);
  Sampler sampler(sampler_options(a, generation_config(e)), e.config().vocab);
  Chat chat(e, sampler, t, a.count("system") ? a["system"].as<std::string>() : std::string(),
            a["tokens"].as<uint64_t>());
  std::fprintf(stderr, "ferry chat: %s, context of %llu tokens; /reset, /exit, Ctrl-C\n",
               describe_chat_template(t).c_str(), (unsigned long long)e.ctx());
  chat_loop(chat, irq);
  finish_stdout();
  return chat.refused() ? 1 : 0;  // a script feeding lines learns that one was not answered
}

}  // namespace ferry
