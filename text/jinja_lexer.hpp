// Jinja's lexer as transformers configures it (trim_blocks, lstrip_blocks, keep_trailing_newline
// off): the template becomes text tokens and, inside {{ }} and {% %}, expression tokens. Comments
// are dropped here. Whitespace control follows jinja2 3.1's lexer rule for rule: `{%-`/`{{-`
// strip all whitespace before the tag, `-%}`/`-}}` all after; without `-`, a block or comment tag
// alone on its line takes the line's indentation with it and `%}` eats one newline; `+` opts out.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::jinja {

enum class Tok : uint8_t {
  text,         // literal template text (already whitespace-controlled)
  var_begin,    // {{
  var_end,      // }}
  block_begin,  // {%
  block_end,    // %}
  name,         // identifiers and keywords (if, in, not, true, ...)
  string,       // a string literal, escapes resolved
  integer,
  number,  // a float literal
  op,      // + - * / // % ** ~ == != < > <= >= = ( ) [ ] { } , . : |
  eof,
};

struct Token {
  Tok type;
  std::string text;  // the text, name, operator or the string literal's value
  int line = 1;      // 1-based line of the template where the token starts
};

// Throws ferry::Error naming the line on an unterminated tag, string or comment, or a character
// that starts no token.
std::vector<Token> lex_template(std::string_view source);

}  // namespace ferry::jinja
