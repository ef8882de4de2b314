// Chat: built-in template renderers against transformers-style renderings of the real templates
// (tools/reference/gen_chat_golden.py -> tests/fixtures/chat/golden.json), the template matcher,
// stop-string holdback, and `ferry chat` / `ferry run --stop` end to end on a synthesized
// qwen2-tiny model driven through pipes.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <vector>

#include "base/error.hpp"
#include "runtime/generate.hpp"
#include "test_util.hpp"
#include "text/chat_template.hpp"
#include "text/tokenizer.hpp"

namespace ferry {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

const std::filesystem::path kFixtures =
    std::filesystem::path(FERRY_SOURCE_DIR) / "tests" / "fixtures";

std::string read_text(const std::filesystem::path& p) {
  const std::vector<uint8_t> bytes = test::read_file(p);
  return std::string(bytes.begin(), bytes.end());
}

// The tokenizer_config.json text of one entry of tests/fixtures/chat/templates.json, built the
// way gen_chat_golden.py builds it.
std::string tokenizer_config(const json& entry) {
  if (entry.contains("tokenizer_config_file"))
    return read_text(kFixtures / "chat" / entry["tokenizer_config_file"].get<std::string>());
  return json{
      {"chat_template", read_text(kFixtures / "chat" / entry["template_file"].get<std::string>())},
      {"bos_token", entry["bos_token"]},
      {"eos_token", entry["eos_token"]}}
      .dump();
}

std::vector<ChatMessage> messages_of(const json& conversation) {
  std::vector<ChatMessage> out;
  for (const json& m : conversation)
    out.push_back({m.at("role").get<std::string>(), m.at("content").get<std::string>()});
  return out;
}

TEST(ChatTemplate, RendersTheRealTemplatesExactly) {
  const json templates = json::parse(read_text(kFixtures / "chat" / "templates.json"));
  const json golden = json::parse(read_text(kFixtures / "chat" / "golden.json"));
  std::map<std::string, ChatTemplate> matched, own;  // built-in renderers; the Jinja engine
  for (const json& e : templates) {
    const std::string name = e.at("name");
    const ChatTemplate t = match_chat_template(tokenizer_config(e));
    EXPECT_EQ(chat_format_name(t.format), e.at("format").get<std::string>()) << name;
    matched.emplace(name, t);
    own.emplace(name, load_chat_template(tokenizer_config(e), ""));
  }
  size_t checked = 0;
  for (const json& c : golden.at("cases")) {
    const std::string name = c.at("template");
    const size_t conv = c.at("conversation");
    const bool gen = c.at("add_generation_prompt");
    SCOPED_TRACE(name + ", conversation " + std::to_string(conv) + (gen ? ", generation" : ""));
    const std::vector<ChatMessage> m = messages_of(golden.at("conversations").at(conv));
    EXPECT_EQ(render_chat(matched.at(name), m, gen), c.at("text").get<std::string>());
    EXPECT_EQ(render_chat(own.at(name), m, gen), c.at("text").get<std::string>());
    ++checked;
  }
  EXPECT_EQ(checked, templates.size() * golden.at("conversations").size() * 2);
}

TEST(ChatTemplate, ReadsTheRevisionDetails) {
  const json templates = json::parse(read_text(kFixtures / "chat" / "templates.json"));
  std::map<std::string, ChatTemplate> t;
  for (const json& e : templates) t.emplace(e.at("name"), match_chat_template(tokenizer_config(e)));
  EXPECT_EQ(t["qwen2.5-7b-instruct"].default_system,
            "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  EXPECT_EQ(t["ferry-synth-qwen2"].default_system, "");
  EXPECT_EQ(t["meta-llama-3-8b-instruct"].today_date, "");
  EXPECT_EQ(t["llama-3.1-8b-instruct"].today_date, "26 Jul 2024");
  EXPECT_TRUE(t["deepseek-r1-distill-qwen-32b"].open_think);
  EXPECT_FALSE(t["deepseek-r1-distill-qwen-32b.2025-01"].open_think);
  // AddedToken objects ({"content": ...}) are read for the BOS as well as plain strings.
  EXPECT_EQ(t["deepseek-r1-distill-qwen-32b.2025-01"].bos, "<｜begin▁of▁sentence｜>");
}

TEST(ChatTemplate, RejectsUnknownAndMissingTemplatesNamingTheOption) {
  const std::string mistral =
      json{{"chat_template",
            "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
            "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}"
            "{{ message['content'] + eos_token }}{% endif %}{% endfor %}"}}
          .dump();
  for (const std::string& cfg : {mistral, std::string("{}"), std::string(), std::string("{")}) {
    try {
      match_chat_template(cfg);
      ADD_FAILURE() << "accepted " << cfg;
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_EQ(e.setting, Setting::chat_template) << what;  // the CLI names --template
      EXPECT_NE(what.find("chatml, llama3, deepseek-r1"), std::string::npos) << what;
    }
  }
  // --template overrides: any config then renders in the chosen format.
  const ChatTemplate forced = match_chat_template(mistral, ChatFormat::llama3);
  EXPECT_EQ(forced.format, ChatFormat::llama3);
  EXPECT_EQ(forced.bos, "<|begin_of_text|>");
  const std::vector<ChatMessage> m = {{"user", "hi"}};
  EXPECT_EQ(render_chat(match_chat_template("", ChatFormat::deepseek_r1), m, true),
            "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>\n");
  EXPECT_EQ(parse_chat_format("deepseek-r1"), ChatFormat::deepseek_r1);
  EXPECT_EQ(parse_chat_format("vicuna"), std::nullopt);
}

TEST(ChatTemplate, ListOfNamedTemplatesAndTodaysDate) {
  // Some checkpoints store {"name": ..., "template": ...} entries; "default" is the chat one.
  const std::string named =
      json{{"chat_template",
            json::array({{{"name", "tool_use"}, {"template", "<｜User｜><｜Assistant｜>"}},
                         {{"name", "default"}, {"template", "<|im_start|><|im_end|>"}}})}}
          .dump();
  EXPECT_EQ(match_chat_template(named).format, ChatFormat::chatml);
  // Llama 3.2 asks strftime_now for the date: the renderer writes today's, "%d %b %Y".
  const std::string llama32 =
      json{{"chat_template",
            "<|start_header_id|><|eot_id|>Cutting Knowledge Date: December 2023 "
            "{%- set date_string = strftime_now(\"%d %b %Y\") %}"}}
          .dump();
  const std::string date = match_chat_template(llama32).today_date;
  EXPECT_TRUE(std::regex_match(date, std::regex("[0-9]{2} [A-Z][a-z]{2} [0-9]{4}"))) << date;
}

// The model's own template runs on the Jinja engine: chat_template.jinja first, else
// tokenizer_config's chat_template (string or named list); --template still picks a built-in.
TEST(ChatTemplate, LoadsTheModelsOwnTemplate) {
  const std::string cfg = json{
      {"chat_template", json::array({{{"name", "tool_use"}, {"template", "tools"}},
                                     {{"name", "default"},
                                      {"template",
                                       "{{ bos_token }}{% for m in messages %}[{{ m.role }}: "
                                       "{{ m.content }}]{% endfor %}{{ eos_token }}"}}})},
      {"bos_token", {{"content", "<s>"}, {"lstrip", false}}},
      {"eos_token", "</s>"}}.dump();
  const std::vector<ChatMessage> m = {{"system", "S"}, {"user", "hi"}};
  const ChatTemplate from_cfg = load_chat_template(cfg, "");
  ASSERT_TRUE(from_cfg.jinja);
  EXPECT_EQ(render_chat(from_cfg, m, true), "<s>[system: S][user: hi]</s>");
  EXPECT_EQ(chat_stop_tokens(from_cfg), std::vector<std::string>{"</s>"});
  EXPECT_EQ(describe_chat_template(from_cfg), "the model's chat template (tokenizer_config.json)");
  // chat_template.jinja wins; a ChatML template also stops at ChatML's end-of-turn tokens.
  const ChatTemplate from_file = load_chat_template(
      cfg, "{% for m in messages %}<|im_start|>{{ m.role }}<|im_end|>{% endfor %}");
  EXPECT_EQ(render_chat(from_file, m, false),
            "<|im_start|>system<|im_end|><|im_start|>user<|im_end|>");
  EXPECT_EQ(chat_stop_tokens(from_file),
            (std::vector<std::string>{"<|im_end|>", "<|endoftext|>", "</s>"}));
  EXPECT_EQ(describe_chat_template(from_file), "the model's chat template (chat_template.jinja)");
  // --template overrides the model's template.
  const ChatTemplate forced = load_chat_template(cfg, "{{ x }}", ChatFormat::chatml);
  EXPECT_FALSE(forced.jinja);
  EXPECT_EQ(
      render_chat(forced, m, true),
      "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  // A template the engine cannot parse is an error naming the line and the construct.
  try {
    load_chat_template("", "ok\n{% include 'x' %}");
    ADD_FAILURE() << "accepted an include";
  } catch (const Error& e) {
    EXPECT_EQ(e.setting, Setting::chat_template);
    EXPECT_NE(std::string(e.what()).find("line 2: the statement {% include %}"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(load_chat_template("{}", ""), Error);  // no template at all: choose a format
}

// Feeds `pieces` through a StopStringFilter; returns the concatenated output and whether a stop
// string was found, with the text flushed at the end when none was.
std::pair<std::string, bool> filter_all(const std::vector<std::string>& stops,
                                        const std::vector<std::string>& pieces,
                                        std::vector<std::string>* outputs = nullptr) {
  StopStringFilter f(stops);
  std::string all;
  for (const std::string& p : pieces) {
    const std::string out = f.push(p);
    if (outputs) outputs->push_back(out);
    all += out;
  }
  if (!f.found()) all += f.flush();
  return {all, f.found()};
}

TEST(StopStrings, StopSpreadOverSeveralPiecesIsNeverPrinted) {
  std::vector<std::string> outs;
  const auto [text, found] = filter_all({"<|end|>"}, {"Hello <", "|en", "d|", "> tail"}, &outs);
  EXPECT_TRUE(found);
  EXPECT_EQ(text, "Hello ");
  EXPECT_EQ(outs, (std::vector<std::string>{"Hello ", "", "", ""}));
}

TEST(StopStrings, FalsePartialMatchIsFlushedWhenItDiverges) {
  std::vector<std::string> outs;
  const auto [text, found] = filter_all({"STOP"}, {"go ST", "ART now", " S", "TO"}, &outs);
  EXPECT_FALSE(found);
  EXPECT_EQ(outs, (std::vector<std::string>{"go ", "START now", " ", ""}));
  EXPECT_EQ(text, "go START now STO");  // the held-back tail comes out at the end
  // An overlapping false start: "aab" inside "aaab" after holding "aa".
  EXPECT_EQ(filter_all({"aab"}, {"xa", "a", "ab!"}), std::make_pair(std::string("xa"), true));
}

TEST(StopStrings, EarliestOfSeveralStopsWinsAndEmptyOnesAreIgnored) {
  EXPECT_EQ(filter_all({"", "abc", "b"}, {"xab", "c"}), std::make_pair(std::string("xa"), true));
  EXPECT_EQ(filter_all({}, {"no ", "stops"}), std::make_pair(std::string("no stops"), false));
}

TEST(StopStrings, MultiByteCharactersFromATokenizerStream) {
  // Byte-level BPE with 512 tokens splits each CJK character over several tokens: the stream
  // decoder holds incomplete characters back, the filter holds the partial stop string.
  const Tokenizer tok =
      Tokenizer::from_json(read_text(kFixtures / "tokenizer" / "qwen2_tiny.tokenizer.json"),
                           read_text(kFixtures / "tokenizer" / "qwen2_tiny.tokenizer_config.json"));
  const std::string text = "héllo 你好世界, the end";
  const std::vector<int32_t> ids = tok.encode(text, false);
  ASSERT_TRUE(std::any_of(ids.begin(), ids.end(), [&](int32_t id) {
    return tok.decode(std::vector<int32_t>{id}).find("\xEF\xBF\xBD") != std::string::npos;
  })) << "no token ends inside a character: the test would not test that";
  for (const auto& [stop, expected] : std::vector<std::pair<std::string, std::string>>{
           {"世界", "héllo 你好"}, {"好世", "héllo 你"}, {"世纪", text}}) {
    StreamDecoder d(tok);
    StopStringFilter f({stop});
    std::string out;
    for (const int32_t id : ids) {
      out += f.push(d.push(id));
      if (f.found()) break;
    }
    if (!f.found()) out += f.push(d.flush()) + f.flush();
    EXPECT_EQ(out, expected) << stop;
  }
}

// ---- end to end ---------------------------------------------------------------------------

// The ferry binary as a child with its stdin, stdout and stderr on pipes.
class Child {
 public:
  explicit Child(const std::vector<std::string>& args) {
    int in[2], out[2], err[2];
    if (pipe(in) != 0 || pipe(out) != 0 || pipe(err) != 0) throw std::runtime_error("pipe");
    pid_ = fork();
    if (pid_ == 0) {
      dup2(in[0], 0);
      dup2(out[1], 1);
      dup2(err[1], 2);
      for (int fd : {in[0], in[1], out[0], out[1], err[0], err[1]}) close(fd);
      std::vector<std::string> copy = args;
      std::string bin = FERRY_BINARY;
      std::vector<char*> argv = {bin.data()};
      for (std::string& a : copy) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(bin.c_str(), argv.data());
      _exit(127);
    }
    close(in[0]);
    close(out[1]);
    close(err[1]);
    in_ = in[1], out_ = out[0], err_ = err[0];
  }
  ~Child() {
    if (pid_ > 0) {  // a failed test: do not leave the child running
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    for (int fd : {in_, out_, err_})
      if (fd >= 0) close(fd);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  void write_stdin(const std::string& s) {
    ASSERT_EQ(write(in_, s.data(), s.size()), ssize_t(s.size()));
  }
  void close_stdin() {
    close(in_);
    in_ = -1;
  }
  void signal(int sig) { kill(pid_, sig); }

  // Reads both outputs until `done` holds or `seconds` pass; returns whether `done` held.
  bool read_until(const std::function<bool()>& done, double seconds) {
    const auto end = Clock::now() + std::chrono::duration<double>(seconds);
    while (!done()) {
      if (Clock::now() > end) return false;
      if (!read_some(50) && out_ < 0 && err_ < 0) return done();
    }
    return true;
  }
  // Closes stdin, reads everything and returns the exit code (-1 when killed or timed out).
  int finish(double seconds) {
    if (in_ >= 0) close_stdin();
    read_until([&] { return out_ < 0 && err_ < 0; }, seconds);
    int status = 0;
    if (out_ >= 0 || err_ >= 0) return -1;  // the destructor kills it
    waitpid(std::exchange(pid_, -1), &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  std::string out, err;

 private:
  // One poll of the open outputs; false when nothing was open.
  bool read_some(int timeout_ms) {
    pollfd fds[2] = {{out_, POLLIN, 0}, {err_, POLLIN, 0}};
    if (out_ < 0 && err_ < 0) return false;
    if (poll(fds, 2, timeout_ms) <= 0) return true;
    drain(fds[0], out_, out);
    drain(fds[1], err_, err);
    return true;
  }
  static void drain(const pollfd& p, int& fd, std::string& into) {
    if (fd < 0 || !(p.revents & (POLLIN | POLLHUP))) return;
    char buf[4096];
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) {
      into.append(buf, size_t(n));
      return;
    }
    close(fd);  // end of output
    fd = -1;
  }

  pid_t pid_ = -1;
  int in_ = -1, out_ = -1, err_ = -1;
};

size_t count(const std::string& s, const std::string& part) {
  size_t n = 0;
  for (size_t at = s.find(part); at != std::string::npos; at = s.find(part, at + 1)) ++n;
  return n;
}

// A synthesized qwen2-tiny checkpoint (ChatML template, random weights) quantized to INT4.
std::string tiny_model(const test::ScratchDir& dir) {
  const std::string hf = (dir / "hf").string(), model = (dir / "m.ferry").string();
  const test::RunResult s = test::run_ferry({"synth", "--preset", "qwen2-tiny", "-o", hf});
  EXPECT_EQ(s.exit_code, 0) << s.output;
  const test::RunResult q = test::run_ferry({"quantize", hf, "-o", model});
  EXPECT_EQ(q.exit_code, 0) << q.output;
  return model;
}

// The numbers N of the "[N prompt tokens evaluated, ..." lines, in order.
std::vector<int> evaluated_counts(const std::string& err) {
  std::vector<int> n;
  const std::regex re("\\[([0-9]+) prompt tokens evaluated");
  for (auto it = std::sregex_iterator(err.begin(), err.end(), re); it != std::sregex_iterator();
       ++it)
    n.push_back(std::stoi((*it)[1]));
  return n;
}

TEST(ChatCommand, TwoTurnsResetAndExitThroughAPipe) {
  test::ScratchDir dir;
  const std::string model = tiny_model(dir);
  Child c({"chat", model, "-n", "12", "--threads", "1"});
  c.write_stdin("Hello there\nHow are you today?\n/reset\nAgain\n/exit\nnever read\n");
  ASSERT_EQ(c.finish(60), 0) << c.err;
  EXPECT_NE(c.err.find("the model's chat template (tokenizer_config.json)"), std::string::npos)
      << c.err;
  EXPECT_EQ(count(c.err, "stopped: "), 3u) << c.err;  // three answers, nothing after /exit
  EXPECT_EQ(count(c.err, "(conversation reset)"), 1u) << c.err;
  ASSERT_FALSE(c.out.empty());
  EXPECT_EQ(c.out.back(), '\n');  // each answer ends its line
  EXPECT_EQ(c.out.find("> "), std::string::npos) << "no prompt on a pipe";
  // The second turn reuses the KV cache: it evaluates the first answer's last token (not
  // evaluated when the token limit stopped it) and the tokens of the new turn, nothing more.
  const Tokenizer tok = Tokenizer::from_json(read_text(dir / "hf" / "tokenizer.json"),
                                             read_text(dir / "hf" / "tokenizer_config.json"));
  const std::vector<int> n = evaluated_counts(c.err);
  ASSERT_EQ(n.size(), 3u) << c.err;
  ASSERT_NE(c.err.find("12 generated, "), std::string::npos) << c.err;
  ASSERT_NE(c.err.find("stopped: token limit]"), std::string::npos) << c.err;
  const auto tokens = [&](const std::string& text) { return int(tok.encode(text, false).size()); };
  EXPECT_EQ(n[0], tokens("<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"));
  EXPECT_EQ(n[1], 1 + tokens("<|im_end|>\n<|im_start|>user\nHow are you today?<|im_end|>\n"
                             "<|im_start|>assistant\n"));
}

// A checkpoint saved by transformers >= 4.43 keeps its template in chat_template.jinja: quantize
// stores it in the packed file and `ferry chat` renders it (its default system line, its
// raise_exception) instead of tokenizer_config's ChatML one.
TEST(ChatCommand, UsesTheModelsChatTemplateJinja) {
  test::ScratchDir dir;
  const std::string hf = (dir / "hf").string(), model = (dir / "m.ferry").string();
  ASSERT_EQ(test::run_ferry({"synth", "--preset", "qwen2-tiny", "-o", hf}).exit_code, 0);
  std::ofstream(dir / "hf" / "chat_template.jinja")
      << "{%- for message in messages %}\n"
         "  {%- if message.content == 'boom' %}{{ raise_exception('no booms: ' ~ message.role) }}"
         "{% endif %}\n"
         "  {%- if loop.first and message.role != 'system' %}\n"
         "<|im_start|>system\nJinja default system<|im_end|>\n"
         "  {%- endif %}\n"
         "<|im_start|>{{ message.role }}\n{{ message.content | trim }}<|im_end|>\n"
         "{% endfor %}\n"
         "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}\n";
  const test::RunResult q = test::run_ferry({"quantize", hf, "-o", model});
  ASSERT_EQ(q.exit_code, 0) << q.output;
  Child c({"chat", model, "-n", "4", "--threads", "1"});
  c.write_stdin("  Hello  \nboom\n");
  ASSERT_EQ(c.finish(60), 1) << c.err;  // "boom" was refused by the template
  EXPECT_NE(c.err.find("the model's chat template (chat_template.jinja)"), std::string::npos)
      << c.err;
  EXPECT_NE(c.err.find("this line was not sent: chat template raised an error: no "
                       "booms: user"),
            std::string::npos)
      << c.err;
  const Tokenizer tok = Tokenizer::from_json(read_text(dir / "hf" / "tokenizer.json"),
                                             read_text(dir / "hf" / "tokenizer_config.json"));
  const std::vector<int> n = evaluated_counts(c.err);
  ASSERT_EQ(n.size(), 1u) << c.err;
  // As transformers renders it: `{%- endif %}` takes the newline after the system turn.
  EXPECT_EQ(n[0], int(tok.encode("<|im_start|>system\nJinja default system<|im_end|>"
                                 "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
                                 false)
                          .size()));
}

// A template the engine cannot run fails the conversion, not the first chat.
TEST(ChatCommand, QuantizeRefusesATemplateItCannotRun) {
  test::ScratchDir dir;
  const std::string hf = (dir / "hf").string(), model = (dir / "m.ferry").string();
  ASSERT_EQ(test::run_ferry({"synth", "--preset", "qwen2-tiny", "-o", hf}).exit_code, 0);
  std::ofstream(dir / "hf" / "chat_template.jinja") << "{{ bos_token }}\n{{ messages | batch(2) }}";
  const test::RunResult q = test::run_ferry({"quantize", hf, "-o", model});
  EXPECT_EQ(q.exit_code, 1) << q.output;
  EXPECT_NE(q.output.find("chat_template.jinja: chat template line 2: the filter 'batch' is not "
                          "supported"),
            std::string::npos)
      << q.output;
  EXPECT_FALSE(std::filesystem::exists(model));
}

TEST(ChatCommand, SigintStopsTheAnswerAndTheChatGoesOn) {
  test::ScratchDir dir;
  const std::string model = tiny_model(dir);
  // A context and token limit far beyond what a few seconds generate: only Ctrl-C ends it.
  Child c({"chat", model, "-n", "1000000", "--ctx", "30000", "--threads", "1"});
  for (const std::string line : {"Tell me a very long story", "And another one"}) {
    const size_t answers = count(c.err, "stopped: "), out_before = c.out.size();
    c.write_stdin(line + "\n");
    ASSERT_TRUE(c.read_until([&] { return c.out.size() > out_before + 16; }, 20)) << c.err;
    c.signal(SIGINT);
    ASSERT_TRUE(c.read_until([&] { return count(c.err, "stopped: ") > answers; }, 20)) << c.err;
  }
  c.write_stdin("/exit\n");
  EXPECT_EQ(c.finish(20), 0) << c.err;
  EXPECT_EQ(count(c.err, "stopped: cancelled"), 2u) << c.err;
}

TEST(ChatCommand, ContextOverflowIsReportedAndTheChatGoesOn) {
  test::ScratchDir dir;
  const std::string model = tiny_model(dir);
  Child c({"chat", model, "-n", "4", "--ctx", "24", "--threads", "1"});
  c.write_stdin(std::string(200, 'a') + "\nhi\n");
  ASSERT_EQ(c.finish(60), 1) << c.err;  // a line was not answered: a script learns it
  EXPECT_NE(c.err.find("the context holds 24; /reset"), std::string::npos) << c.err;
  EXPECT_EQ(count(c.err, "stopped: "), 1u) << c.err;  // "hi" still got its answer
}

// A line that is not UTF-8 is reported and dropped; the next one is answered.
TEST(ChatCommand, ALineThatIsNotTextIsReportedAndTheChatGoesOn) {
  test::ScratchDir dir;
  const std::string model = tiny_model(dir);
  Child c({"chat", model, "-n", "4", "--threads", "1"});
  c.write_stdin("caf\xe9 \xff\xfe\nhi\n");
  ASSERT_EQ(c.finish(60), 1) << c.err;
  EXPECT_EQ(count(c.err, "this line was not sent"), 1u) << c.err;
  EXPECT_EQ(count(c.err, "stopped: "), 1u) << c.err;
  EXPECT_NE(c.err.find("context of 1024 tokens"), std::string::npos) << c.err;  // the default
}

TEST(ChatCommand, UnknownTemplateNameIsAnError) {
  test::ScratchDir dir;
  const std::string model = tiny_model(dir);
  Child c({"chat", model, "--template", "vicuna"});
  EXPECT_EQ(c.finish(30), 1);
  EXPECT_NE(c.err.find("chatml, llama3 or deepseek-r1"), std::string::npos) << c.err;
}

TEST(RunCommand, StopStringEndsTheTextBeforeIt) {
  test::ScratchDir dir;
  const std::string model = tiny_model(dir);
  const std::string prompt = "Once upon a time";
  Child plain({"run", model, "-p", prompt, "-n", "48", "--threads", "1"});
  ASSERT_EQ(plain.finish(60), 0) << plain.err;
  ASSERT_EQ(plain.out.substr(0, prompt.size()), prompt);
  // Stop at a run of three ASCII letters the model generates (greedy: the same text) past its
  // first 12 characters, so that decode steps are timed before it, and not seen earlier.
  const std::string generated = plain.out.substr(prompt.size());
  const std::regex letters("[A-Za-z]{3}");
  auto it = std::sregex_iterator(generated.begin(), generated.end(), letters);
  for (; it != std::sregex_iterator(); ++it)
    if (it->position() >= 12 && generated.find(it->str()) == size_t(it->position())) break;
  ASSERT_NE(it, std::sregex_iterator()) << generated;
  const std::smatch m = *it;
  const std::string stop = m.str();
  Child cut(
      {"run", model, "-p", prompt, "-n", "48", "--threads", "1", "--stop", "zq,x", "--stop", stop});
  ASSERT_EQ(cut.finish(60), 0) << cut.err;
  EXPECT_EQ(cut.out, prompt + generated.substr(0, size_t(m.position())) + "\n");
  EXPECT_NE(cut.err.find("stopped: stop string"), std::string::npos) << cut.err;
  EXPECT_NE(cut.err.find("GB/s of weights read"), std::string::npos) << cut.err;
}

// Mistakes in the options are reported before the model is loaded or any text is generated:
// one line, exit 1, nothing on stdout.
TEST(RunCommand, OptionMistakesAreReportedBeforeAnyWork) {
  test::ScratchDir dir;
  const std::string model = tiny_model(dir);
  const struct {
    std::vector<std::string> extra;
    const char* says;
  } cases[] = {
      {{"--stats"}, "add --cache-budget"},
      {{"--stop", ""}, "--stop: the stop string is empty"},
      {{model}, "unexpected argument"},
      {{"--threads", "100000"}, "--threads 100000: this machine has"},
      {{"--ctx", "0"}, "--ctx must be at least 1"},
      {{"--ctx", "4000000000"}, "--ctx: a context of 4000000000 tokens needs"},  // TBs of KV cache
      {{"--kv-type", "f8"}, "--kv-type: 'f8' is not f16 or f32"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> args = {"run", model, "-p", "Hi", "-n", "4"};
    args.insert(args.end(), c.extra.begin(), c.extra.end());
    Child run(args);
    EXPECT_EQ(run.finish(60), 1) << c.says << ": " << run.err;
    EXPECT_NE(run.err.find(c.says), std::string::npos) << run.err;
    EXPECT_EQ(run.out, "") << c.says;
    EXPECT_EQ(count(run.err, "\n"), 1u) << run.err;
  }
}

// One generated token comes from the prompt's pass, so no decode step is timed and no rate is
// made up; a context past the model's trained length (qwen2-tiny: 32,768) is warned about.
TEST(RunCommand, FiguresAreHonestAndALongContextIsWarnedAbout) {
  test::ScratchDir dir;
  const std::string model = tiny_model(dir);
  Child one({"run", model, "-p", "Hi", "-n", "1", "--threads", "1"});
  ASSERT_EQ(one.finish(60), 0) << one.err;
  EXPECT_NE(one.err.find("generated 1 token, no decode step timed | - of weights read"),
            std::string::npos)
      << one.err;
  Child two({"run", model, "-p", "Hi", "-n", "3", "--threads", "1"});
  ASSERT_EQ(two.finish(60), 0) << two.err;
  EXPECT_TRUE(std::regex_search(two.err, std::regex("generated 3 tokens, [0-9.]+ tok/s")))
      << two.err;
  EXPECT_EQ(two.err.find("warning"), std::string::npos) << two.err;
  Child past({"run", model, "-p", "Hi", "-n", "3", "--threads", "1", "--ctx", "40000"});
  ASSERT_EQ(past.finish(60), 0) << past.err;
  EXPECT_NE(past.err.find("warning: --ctx: a context of 40000 tokens is past the 32768 positions"),
            std::string::npos)
      << past.err;
}

}  // namespace
}  // namespace ferry
