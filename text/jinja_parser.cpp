#include "text/jinja_parser.hpp"

#include <algorithm>
#include <initializer_list>
#include <set>

#include "base/error.hpp"
#include "text/jinja_builtins.hpp"
#include "text/jinja_lexer.hpp"

namespace ferry::jinja {
namespace {

[[noreturn]] void fail(int line, const std::string& what) {
  throw Error(Setting::chat_template, "chat template line " + std::to_string(line) + ": " + what);
}

// An integer or number token's value; one past int64 or double is a template error, not a throw
// of std::stoll's (the fuzzer found `m.5555...5` escaping as std::out_of_range).
Value number_literal(const Token& t) {
  try {
    return t.type == Tok::integer ? Value::integer(std::stoll(t.text))
                                  : Value::number(std::stod(t.text));
  } catch (const std::exception&) {
    fail(t.line, "the number " + t.text + " is out of range");
  }
}

ExprPtr make(ExprKind k, int line, std::string name = {}) {
  auto e = std::make_unique<Expr>();
  e->kind = k;
  e->line = line;
  e->name = std::move(name);
  return e;
}

ExprPtr make(ExprKind k, int line, std::string name, ExprPtr a, ExprPtr b = nullptr) {
  ExprPtr e = make(k, line, std::move(name));
  e->args.push_back(std::move(a));
  if (b) e->args.push_back(std::move(b));
  return e;
}

class Parser {
 public:
  explicit Parser(std::vector<Token> t) : toks_(std::move(t)) {}

  Body parse_all() {
    Body body = parse_body({});
    if (peek().type != Tok::eof) fail(peek().line, "unexpected '" + peek().text + "'");
    // A function that is neither a global ferry provides nor a macro of the template would fail
    // mid-conversation: refuse it now.
    for (const auto& [name, line] : called_)
      if (!macros_.contains(name))
        fail(line, "the function " + name +
                       "() is not supported (ferry's Jinja has raise_exception, strftime_now, "
                       "namespace, dict, range and the template's macros)");
    return body;
  }

 private:
  // ---- token stream ----
  const Token& peek(size_t k = 0) const { return toks_[std::min(pos_ + k, toks_.size() - 1)]; }
  const Token& next() {
    const Token& t = peek();
    if (pos_ < toks_.size() - 1) ++pos_;
    return t;
  }
  bool is_op(std::string_view op, size_t k = 0) const {
    return peek(k).type == Tok::op && peek(k).text == op;
  }
  bool is_name(std::string_view n, size_t k = 0) const {
    return peek(k).type == Tok::name && peek(k).text == n;
  }
  bool skip_op(std::string_view op) { return is_op(op) ? (next(), true) : false; }
  bool skip_name(std::string_view n) { return is_name(n) ? (next(), true) : false; }
  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::eof:
        return "the end of the template";
      case Tok::block_end:
        return "'%}'";
      case Tok::var_end:
        return "'}}'";
      case Tok::string:
        return "a string";
      case Tok::text:
        return "text";
      default:
        return "'" + t.text + "'";
    }
  }
  void expect_op(std::string_view op) {
    if (!skip_op(op))
      fail(peek().line, "expected '" + std::string(op) + "', found " + describe(peek()));
  }
  void expect(Tok type, std::string_view what) {
    if (peek().type != type)
      fail(peek().line, "expected " + std::string(what) + ", found " + describe(peek()));
    next();
  }
  std::string expect_identifier(std::string_view what) {
    if (peek().type != Tok::name)
      fail(peek().line, "expected " + std::string(what) + ", found " + describe(peek()));
    return next().text;
  }

  // ---- statements ----
  // Statements until a {% name %} of `ends` (left unconsumed after the name) or the end.
  Body parse_body(std::initializer_list<std::string_view> ends) {
    Body body;
    for (;;) {
      const Token& t = peek();
      if (t.type == Tok::eof) {
        if (ends.size())
          fail(t.line, "the template ends inside a block: expected {% " +
                           std::string(*ends.begin()) + " %}");
        return body;
      }
      if (t.type == Tok::text) {
        auto s = stmt(StmtKind::text, t.line);
        s->text = next().text;
        body.push_back(std::move(s));
      } else if (t.type == Tok::var_begin) {
        auto s = stmt(StmtKind::output, next().line);
        s->expr = parse_expression();
        expect(Tok::var_end, "'}}'");
        body.push_back(std::move(s));
      } else {
        const Token& name = peek(1);
        for (std::string_view e : ends)
          if (name.type == Tok::name && name.text == e) {
            next(), next();
            return body;
          }
        next();
        body.push_back(parse_statement());
      }
    }
  }

  static StmtPtr stmt(StmtKind k, int line) {
    auto s = std::make_unique<Stmt>();
    s->kind = k;
    s->line = line;
    return s;
  }

  StmtPtr parse_statement() {
    const Token& t = peek();
    const Nest nest(*this, t.line);
    if (t.type != Tok::name) fail(t.line, "expected a statement name, found " + describe(t));
    const std::string n = next().text;
    if (n == "if") return parse_if(t.line);
    if (n == "for") return parse_for(t.line);
    if (n == "set") return parse_set(t.line);
    if (n == "macro") return parse_macro(t.line);
    if (n == "break" || n == "continue") {
      expect(Tok::block_end, "'%}'");
      return stmt(n == "break" ? StmtKind::break_ : StmtKind::continue_, t.line);
    }
    if (n == "generation") {  // transformers' assistant-mask extension: renders its body
      expect(Tok::block_end, "'%}'");
      auto s = stmt(StmtKind::scope, t.line);
      s->body = parse_body({"endgeneration"});
      expect(Tok::block_end, "'%}'");
      return s;
    }
    if (n.starts_with("end") || n == "elif" || n == "else")
      fail(t.line, "unexpected {% " + n + " %} (no block of that kind is open)");
    fail(t.line, "the statement {% " + n +
                     " %} is not supported (ferry's Jinja runs if, for, set, macro, break, "
                     "continue)");
  }

  StmtPtr parse_if(int line) {
    auto s = stmt(StmtKind::if_, line);
    ExprPtr cond = parse_expression();
    for (;;) {
      expect(Tok::block_end, "'%}'");
      Body body = parse_body({"elif", "else", "endif"});
      const std::string& ended = toks_[pos_ - 1].text;
      s->branches.emplace_back(std::move(cond), std::move(body));
      if (ended == "endif") break;
      if (ended == "else") {
        expect(Tok::block_end, "'%}'");
        s->branches.emplace_back(nullptr, parse_body({"endif"}));
        break;
      }
      cond = parse_expression();
    }
    expect(Tok::block_end, "'%}'");
    return s;
  }

  std::vector<std::string> parse_targets() {
    std::vector<std::string> names;
    const bool paren = skip_op("(");
    do names.push_back(expect_identifier("a loop variable"));
    while (skip_op(","));
    if (paren) expect_op(")");
    return names;
  }

  StmtPtr parse_for(int line) {
    auto s = stmt(StmtKind::for_, line);
    s->targets = parse_targets();
    if (!skip_name("in")) fail(peek().line, "expected 'in' in the for loop");
    s->expr = parse_tuple(false);
    if (skip_name("if")) s->filter = parse_expression();
    if (is_name("recursive")) fail(peek().line, "recursive for loops are not supported");
    expect(Tok::block_end, "'%}'");
    s->body = parse_body({"else", "endfor"});
    if (toks_[pos_ - 1].text == "else") {
      expect(Tok::block_end, "'%}'");
      s->else_body = parse_body({"endfor"});
    }
    expect(Tok::block_end, "'%}'");
    return s;
  }

  StmtPtr parse_set(int line) {
    auto s = stmt(StmtKind::set, line);
    const std::string first = expect_identifier("a variable name");
    s->targets.push_back(first);
    if (skip_op(".")) {
      s->attr = expect_identifier("an attribute name");
    } else {
      while (skip_op(",")) s->targets.push_back(expect_identifier("a variable name"));
    }
    if (peek().type == Tok::block_end && s->attr.empty() && s->targets.size() == 1) {
      next();
      s->kind = StmtKind::set_block;
      s->body = parse_body({"endset"});
      expect(Tok::block_end, "'%}'");
      return s;
    }
    expect_op("=");
    s->expr = parse_tuple(true);
    expect(Tok::block_end, "'%}'");
    return s;
  }

  StmtPtr parse_macro(int line) {
    auto s = stmt(StmtKind::macro, line);
    s->macro = std::make_shared<MacroNode>();
    s->macro->name = expect_identifier("a macro name");
    macros_.insert(s->macro->name);
    expect_op("(");
    while (!skip_op(")")) {
      if (!s->macro->params.empty()) expect_op(",");
      if (skip_op(")")) break;
      s->macro->params.push_back(expect_identifier("a macro parameter"));
      s->macro->defaults.push_back(skip_op("=") ? parse_expression() : nullptr);
    }
    expect(Tok::block_end, "'%}'");
    s->macro->body = parse_body({"endmacro"});
    expect(Tok::block_end, "'%}'");
    return s;
  }

  // ---- expressions ----
  // An expression, or several separated by commas (a tuple, as `set a, b = 1, 2` writes).
  ExprPtr parse_tuple(bool with_cond) {
    const int line = peek().line;
    ExprPtr first = with_cond ? parse_expression() : parse_or();
    if (!is_op(",")) return first;
    ExprPtr t = make(ExprKind::list, line);
    t->args.push_back(std::move(first));
    while (skip_op(",")) t->args.push_back(with_cond ? parse_expression() : parse_or());
    return t;
  }

  // Nesting is bounded so that a hostile template cannot overflow the stack: real chat templates
  // nest expressions a few levels deep, blocks under ten.
  static constexpr int kMaxDepth = 100;
  struct Nest {
    Parser& p;
    Nest(Parser& pp, int line) : p(pp) {
      if (++p.depth_ > kMaxDepth)
        fail(line, "expressions or blocks nest more than " + std::to_string(kMaxDepth) + " deep");
    }
    ~Nest() { --p.depth_; }
  };

  ExprPtr parse_expression() {
    const Nest n(*this, peek().line);
    ExprPtr e = parse_or();
    while (is_name("if")) {
      const int line = next().line;
      ExprPtr c = make(ExprKind::cond, line);
      c->args.push_back(std::move(e));
      c->args.push_back(parse_or());
      c->args.push_back(skip_name("else") ? parse_expression() : nullptr);
      e = std::move(c);
    }
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      const int line = next().line;  // consumed before the operand is parsed
      e = make(ExprKind::binary, line, "or", std::move(e), parse_and());
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      const int line = next().line;
      e = make(ExprKind::binary, line, "and", std::move(e), parse_not());
    }
    return e;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      const Nest n(*this, peek().line);
      const int line = next().line;
      return make(ExprKind::unary, line, "not", parse_not());
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    ExprPtr e = parse_math1();
    for (;;) {
      const int line = peek().line;
      std::string op;
      if (peek().type == Tok::op &&
          (peek().text == "==" || peek().text == "!=" || peek().text == "<" || peek().text == ">" ||
           peek().text == "<=" || peek().text == ">="))
        op = next().text;
      else if (skip_name("in"))
        op = "in";
      else if (is_name("not") && is_name("in", 1))
        next(), next(), op = "notin";
      else
        return e;
      e = make(ExprKind::binary, line, op, std::move(e), parse_math1());
    }
  }

  ExprPtr parse_binary_level(std::initializer_list<std::string_view> ops,
                             ExprPtr (Parser::*sub)()) {
    ExprPtr e = (this->*sub)();
    for (;;) {
      bool found = false;
      for (std::string_view op : ops)
        if (is_op(op)) {
          const int line = next().line;
          e = make(ExprKind::binary, line, std::string(op), std::move(e), (this->*sub)());
          found = true;
          break;
        }
      if (!found) return e;
    }
  }
  ExprPtr parse_math1() { return parse_binary_level({"+", "-"}, &Parser::parse_concat); }
  ExprPtr parse_concat() { return parse_binary_level({"~"}, &Parser::parse_math2); }
  ExprPtr parse_math2() { return parse_binary_level({"*", "/", "//", "%"}, &Parser::parse_pow); }
  ExprPtr parse_pow() { return parse_binary_level({"**"}, &Parser::parse_unary_filtered); }

  ExprPtr parse_unary_filtered() { return parse_filters(parse_unary()); }

  ExprPtr parse_unary() {
    const Nest n(*this, peek().line);
    if (is_op("-") || is_op("+")) {
      const Token t = next();
      return make(ExprKind::unary, t.line, t.text, parse_unary());
    }
    return parse_postfix(parse_primary());
  }

  ExprPtr parse_primary() {
    const Token& t = next();
    switch (t.type) {
      case Tok::name: {
        if (t.text == "true" || t.text == "True" || t.text == "false" || t.text == "False") {
          ExprPtr e = make(ExprKind::literal, t.line);
          e->value = Value::boolean(t.text[0] == 't' || t.text[0] == 'T');
          return e;
        }
        if (t.text == "none" || t.text == "None") {
          ExprPtr e = make(ExprKind::literal, t.line);
          e->value = Value::none();
          return e;
        }
        return make(ExprKind::name, t.line, t.text);
      }
      case Tok::string: {
        std::string s = t.text;
        while (peek().type == Tok::string) s += next().text;  // adjacent literals join
        ExprPtr e = make(ExprKind::literal, t.line);
        e->value = Value::string(std::move(s));
        return e;
      }
      case Tok::integer:
      case Tok::number: {
        ExprPtr e = make(ExprKind::literal, t.line);
        e->value = number_literal(t);
        return e;
      }
      case Tok::op:
        if (t.text == "(") return parse_paren(t.line);
        if (t.text == "[") return parse_list(t.line);
        if (t.text == "{") return parse_dict(t.line);
        break;
      default:
        break;
    }
    fail(t.line, "expected an expression, found " + describe(t));
  }

  ExprPtr parse_paren(int line) {
    if (skip_op(")")) return make(ExprKind::list, line);  // ()
    ExprPtr e = parse_expression();
    if (!is_op(",")) {
      expect_op(")");
      return e;
    }
    ExprPtr t = make(ExprKind::list, line);
    t->args.push_back(std::move(e));
    while (skip_op(",") && !is_op(")")) t->args.push_back(parse_expression());
    expect_op(")");
    return t;
  }

  ExprPtr parse_list(int line) {
    ExprPtr l = make(ExprKind::list, line);
    while (!skip_op("]")) {
      if (!l->args.empty()) expect_op(",");
      if (skip_op("]")) break;
      l->args.push_back(parse_expression());
    }
    return l;
  }

  ExprPtr parse_dict(int line) {
    ExprPtr d = make(ExprKind::dict, line);
    while (!skip_op("}")) {
      if (!d->args.empty()) expect_op(",");
      if (skip_op("}")) break;
      d->args.push_back(parse_expression());
      expect_op(":");
      d->args.push_back(parse_expression());
    }
    return d;
  }

  ExprPtr parse_postfix(ExprPtr e) {
    for (;;) {
      const int line = peek().line;
      if (skip_op(".")) {
        const Token& t = next();
        if (t.type == Tok::integer) {  // x.0 is x[0]
          ExprPtr k = make(ExprKind::literal, line);
          k->value = number_literal(t);
          e = make(ExprKind::item, line, "", std::move(e), std::move(k));
        } else if (t.type == Tok::name) {
          e = make(ExprKind::attr, line, t.text, std::move(e));
        } else {
          fail(line, "expected an attribute name after '.', found " + describe(t));
        }
      } else if (skip_op("[")) {
        e = parse_subscript(std::move(e), line);
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr obj, int line) {
    std::vector<ExprPtr> parts(1);
    bool slice = false;
    for (;;) {
      if (is_op(":")) {
        next(), slice = true;
        if (parts.size() == 3) fail(line, "a slice takes at most three parts");
        parts.emplace_back();
        continue;
      }
      if (skip_op("]")) break;
      if (parts.back()) fail(line, "expected ']' or ':' in a subscript");
      parts.back() = parse_expression();
    }
    if (!slice) {
      if (!parts[0]) fail(line, "an empty subscript []");
      return make(ExprKind::item, line, "", std::move(obj), std::move(parts[0]));
    }
    ExprPtr s = make(ExprKind::slice, line);
    s->args.push_back(std::move(obj));
    for (size_t k = 0; k < 3; ++k)
      s->args.push_back(k < parts.size() ? std::move(parts[k]) : nullptr);
    return s;
  }

  // (args, kw=args) after a callee, filter or test; appended to `e`.
  void parse_arg_list(Expr& e) {
    expect_op("(");
    for (size_t n = 0; !skip_op(")"); ++n) {
      if (n > 0) expect_op(",");
      if (skip_op(")")) break;
      if (peek().type == Tok::name && is_op("=", 1)) {
        std::string k = next().text;
        next();
        e.kwargs.emplace_back(std::move(k), parse_expression());
      } else {
        if (!e.kwargs.empty()) fail(peek().line, "a positional argument follows a keyword one");
        e.args.push_back(parse_expression());
      }
    }
  }

  ExprPtr parse_call(ExprPtr callee) {
    ExprPtr c = make(ExprKind::call, peek().line);
    if (callee->kind == ExprKind::attr && !known_method(callee->name) && callee->args[0])
      fail(callee->line, "the method ." + callee->name + "() is not supported");
    static constexpr std::string_view kGlobals[] = {"raise_exception", "strftime_now", "namespace",
                                                    "dict", "range"};
    if (callee->kind == ExprKind::name &&
        std::find(std::begin(kGlobals), std::end(kGlobals), callee->name) == std::end(kGlobals))
      called_.emplace_back(callee->name, callee->line);
    c->args.push_back(std::move(callee));
    parse_arg_list(*c);
    return c;
  }

  ExprPtr parse_filters(ExprPtr e) {
    for (;;) {
      if (skip_op("|")) {
        const int line = peek().line;
        std::string name = expect_identifier("a filter name");
        while (skip_op(".")) name += "." + expect_identifier("a filter name");
        if (!known_filter(name)) fail(line, "the filter '" + name + "' is not supported");
        ExprPtr f = make(ExprKind::filter, line, name, std::move(e));
        if (is_op("(")) parse_arg_list(*f);
        e = std::move(f);
      } else if (is_name("is")) {
        e = parse_test(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_test(ExprPtr subject) {
    const int line = next().line;  // 'is'
    const bool negate = skip_name("not");
    std::string name = expect_identifier("a test name");
    if (!known_test(name)) fail(line, "the test 'is " + name + "' is not supported");
    ExprPtr t = make(ExprKind::test, line, name, std::move(subject));
    t->negate = negate;
    const Token& n = peek();
    if (is_op("(")) {
      parse_arg_list(*t);
    } else if ((n.type == Tok::name || n.type == Tok::string || n.type == Tok::integer ||
                n.type == Tok::number || is_op("[") || is_op("{")) &&
               !is_name("else") && !is_name("or") && !is_name("and") && !is_name("is")) {
      t->args.push_back(parse_postfix(parse_primary()));
    }
    return t;
  }

  std::vector<Token> toks_;
  size_t pos_ = 0;
  int depth_ = 0;
  std::set<std::string> macros_;                     // macros the template defines
  std::vector<std::pair<std::string, int>> called_;  // other names called, with their lines
};

}  // namespace

Body parse_template(std::string_view source) {
  return Parser(lex_template(source)).parse_all();
}

}  // namespace ferry::jinja
