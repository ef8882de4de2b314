#include "text/jinja_lexer.hpp"

#include <algorithm>
#include <array>

#include "base/error.hpp"
#include "text/jinja_value.hpp"

namespace ferry::jinja {
namespace {

[[noreturn]] void fail(int line, const std::string& what) {
  throw Error(Setting::chat_template, "chat template line " + std::to_string(line) + ": " + what);
}

int lines_in(std::string_view s) {
  return int(std::count(s.begin(), s.end(), '\n'));
}

// Python's str.isspace over the text: what `\s` matches in jinja2's whitespace regexes.
bool all_space(std::string_view s) {
  return py_strip(s, true, false, nullptr).empty();
}

// Jinja drops one trailing newline and spells every line ending "\n".
std::string normalize(std::string_view src) {
  std::string out;
  out.reserve(src.size());
  for (size_t i = 0; i < src.size(); ++i) {
    if (src[i] != '\r')
      out += src[i];
    else if (i + 1 >= src.size() || src[i + 1] != '\n')
      out += '\n';
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

void append_utf8(std::string& out, uint32_t c) {
  if (c < 0x80) {
    out += char(c);
  } else if (c < 0x800) {
    out += char(0xC0 | (c >> 6)), out += char(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += char(0xE0 | (c >> 12)), out += char(0x80 | ((c >> 6) & 0x3F));
    out += char(0x80 | (c & 0x3F));
  } else {
    out += char(0xF0 | (c >> 18)), out += char(0x80 | ((c >> 12) & 0x3F));
    out += char(0x80 | ((c >> 6) & 0x3F)), out += char(0x80 | (c & 0x3F));
  }
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// A string literal's body decoded as Python's "unicode-escape" codec does (jinja2 decodes them
// so); an escape it does not know keeps its backslash.
std::string unescape(std::string_view s, int line) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 >= s.size()) {
      out += s[i];
      continue;
    }
    const char c = s[++i];
    const size_t hex = c == 'x' ? 2 : c == 'u' ? 4 : c == 'U' ? 8 : 0;
    if (hex) {
      uint32_t v = 0;
      for (size_t k = 1; k <= hex; ++k) {
        const int h = i + k < s.size() ? hex_value(s[i + k]) : -1;
        if (h < 0)
          fail(line, "a string literal has a truncated \\" + std::string(1, c) + " escape");
        v = v * 16 + uint32_t(h);
      }
      append_utf8(out, v);
      i += hex;
      continue;
    }
    if (c >= '0' && c <= '7') {
      uint32_t v = 0;
      size_t k = 0;
      for (; k < 3 && i + k < s.size() && s[i + k] >= '0' && s[i + k] <= '7'; ++k)
        v = v * 8 + uint32_t(s[i + k] - '0');
      append_utf8(out, v);
      i += k - 1;
      continue;
    }
    constexpr std::string_view from = "\\'\"abfnrtv\n", to = "\\'\"\a\b\f\n\r\t\v";
    const size_t at = from.find(c);
    if (c == '\n') continue;  // a backslash-newline joins the lines
    if (at != from.npos)
      out += to[at];
    else
      out += '\\', out += c;
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string src) : src_(std::move(src)) {}

  std::vector<Token> run() {
    while (pos_ < src_.size()) {
      const size_t open = next_tag(pos_);
      std::string_view text = std::string_view(src_).substr(pos_, open - pos_);
      if (open == src_.size()) {
        emit_text(text);
        break;
      }
      const char kind = src_[open + 1];  // '{', '%' or '#'
      const char sign = open + 2 < src_.size() ? src_[open + 2] : '\0';
      const bool at_line_start = pos_ == 0 || src_[pos_ - 1] == '\n';
      if (sign == '-') {
        text = text.substr(0, text.size() - trailing_space(text));
      } else if (sign != '+' && kind != '{') {  // lstrip_blocks
        const size_t l = text.rfind('\n') + 1;  // npos + 1 == 0
        if ((l > 0 || at_line_start) && l < text.size() && all_space(text.substr(l)))
          text = text.substr(0, l);
      }
      emit_text(text);
      line_ += lines_in(src_.substr(pos_, open - pos_));
      pos_ = open + 2 + (sign == '-' || sign == '+' ? 1 : 0);
      if (kind == '#')
        comment();
      else
        tag(kind == '{');
    }
    out_.push_back({Tok::eof, "", line_});
    return std::move(out_);
  }

 private:
  size_t next_tag(size_t from) const {
    for (size_t i = src_.find('{', from); i != std::string::npos; i = src_.find('{', i + 1))
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#'))
        return i;
    return src_.size();
  }

  static size_t trailing_space(std::string_view s) {
    return s.size() - py_strip(s, false, true, nullptr).size();
  }

  void emit_text(std::string_view t) {
    if (!t.empty()) out_.push_back({Tok::text, std::string(t), line_});
  }

  // After a closing `-%}` all whitespace goes; after `%}` (trim_blocks) one newline.
  void after_close(bool minus, bool block) {
    if (minus) {
      const std::string_view rest = std::string_view(src_).substr(pos_);
      const size_t keep = py_strip(rest, true, false, nullptr).size();
      line_ += lines_in(rest.substr(0, rest.size() - keep));
      pos_ = src_.size() - keep;
    } else if (block && pos_ < src_.size() && src_[pos_] == '\n') {
      ++pos_, ++line_;
    }
  }

  void comment() {
    const size_t end = src_.find("#}", pos_);
    if (end == std::string::npos) fail(line_, "a {# comment #} is not closed");
    const bool minus = end > pos_ && src_[end - 1] == '-';
    const bool plus = end > pos_ && src_[end - 1] == '+';
    line_ += lines_in(std::string_view(src_).substr(pos_, end - pos_));
    pos_ = end + 2;
    after_close(minus, !plus);
  }

  void tag(bool var) {
    const int start_line = line_;
    out_.push_back({var ? Tok::var_begin : Tok::block_begin, "", line_});
    int depth = 0;
    for (;;) {
      while (pos_ < src_.size() && is_space(src_[pos_])) line_ += src_[pos_++] == '\n';
      if (pos_ >= src_.size())
        fail(start_line, std::string("a ") + (var ? "{{ … }}" : "{% … %}") + " tag is not closed");
      if (depth == 0 && closes(var)) return;
      const char c = src_[pos_];
      if (c == '"' || c == '\'')
        string_literal();
      else if (is_digit(c))
        number();
      else if (is_name_start(c))
        name();
      else
        op(depth);
    }
  }

  // At the tag's end: `}}`/`%}`, optionally after `-` or `+`.
  bool closes(bool var) {
    const std::string_view rest = std::string_view(src_).substr(pos_);
    const std::string_view end = var ? "}}" : "%}";
    const char s = rest.empty() ? '\0' : rest[0];
    const size_t skip = (s == '-' || s == '+') && rest.substr(1).starts_with(end) ? 1 : 0;
    if (!rest.substr(skip).starts_with(end)) return false;
    out_.push_back({var ? Tok::var_end : Tok::block_end, "", line_});
    pos_ += skip + 2;
    after_close(skip && s == '-', !var && !(skip && s == '+'));
    return true;
  }

  void string_literal() {
    const char q = src_[pos_];
    size_t i = pos_ + 1;
    while (i < src_.size() && src_[i] != q) i += src_[i] == '\\' ? 2 : 1;
    if (i >= src_.size()) fail(line_, "a string literal is not closed");
    const std::string_view body = std::string_view(src_).substr(pos_ + 1, i - pos_ - 1);
    out_.push_back({Tok::string, unescape(body, line_), line_});
    line_ += lines_in(body);
    pos_ = i + 1;
  }

  void number() {
    size_t i = pos_;
    while (i < src_.size() && (is_digit(src_[i]) || src_[i] == '_')) ++i;
    bool is_float = false;
    if (i + 1 < src_.size() && src_[i] == '.' && is_digit(src_[i + 1])) {
      is_float = true;
      for (++i; i < src_.size() && (is_digit(src_[i]) || src_[i] == '_');) ++i;
    }
    if (i < src_.size() && (src_[i] == 'e' || src_[i] == 'E')) {
      size_t j = i + 1;
      if (j < src_.size() && (src_[j] == '+' || src_[j] == '-')) ++j;
      if (j < src_.size() && is_digit(src_[j])) {
        is_float = true;
        for (i = j; i < src_.size() && is_digit(src_[i]);) ++i;
      }
    }
    std::string digits;
    for (char c : src_.substr(pos_, i - pos_))
      if (c != '_') digits += c;
    out_.push_back({is_float ? Tok::number : Tok::integer, digits, line_});
    pos_ = i;
  }

  void name() {
    size_t i = pos_;
    while (i < src_.size() && (is_name_start(src_[i]) || is_digit(src_[i]))) ++i;
    out_.push_back({Tok::name, src_.substr(pos_, i - pos_), line_});
    pos_ = i;
  }

  void op(int& depth) {
    static constexpr std::array<std::string_view, 6> two = {"//", "**", "==", "!=", "<=", ">="};
    const std::string_view rest = std::string_view(src_).substr(pos_);
    for (std::string_view t : two)
      if (rest.starts_with(t)) {
        out_.push_back({Tok::op, std::string(t), line_});
        pos_ += 2;
        return;
      }
    const char c = rest[0];
    if (std::string_view("+-*/%~<>=()[]{},.:|").find(c) == std::string_view::npos)
      fail(line_, std::string("unexpected character '") + c + "' in a tag");
    if (c == '(' || c == '[' || c == '{') ++depth;
    if (c == ')' || c == ']' || c == '}') {
      if (depth == 0) fail(line_, std::string("unbalanced '") + c + "'");
      --depth;
    }
    out_.push_back({Tok::op, std::string(1, c), line_});
    ++pos_;
  }

  static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
  static bool is_digit(char c) { return c >= '0' && c <= '9'; }
  static bool is_name_start(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  }

  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  std::vector<Token> out_;
};

}  // namespace

std::vector<Token> lex_template(std::string_view source) {
  return Lexer(normalize(source)).run();
}

}  // namespace ferry::jinja
