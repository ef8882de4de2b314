// Renders a parsed template: statements write to one output string, expressions evaluate to
// Values. Scoping follows jinja2: a for loop's body is a scope of its own each iteration (a `set`
// inside does not leak out, which is why templates use namespace()), `if` is not, and a macro
// sees the template's globals and top-level names plus its arguments.
#include <algorithm>
#include <cmath>
#include <ctime>
#include <optional>

#include "base/error.hpp"
#include "text/jinja_ast.hpp"
#include "text/jinja_builtins.hpp"
#include "text/jinja_parser.hpp"
#include "text/jinja_template.hpp"

namespace ferry::jinja {

struct Template::Parsed {
  Body body;
};

namespace {

constexpr std::string_view kPrefix = "chat template";

[[noreturn]] void fail(int line, const std::string& what) {
  throw Error(Setting::chat_template, "chat template line " + std::to_string(line) + ": " + what);
}

// Runs `f`; a ferry::Error from a builtin (which knows no line) gets the expression's line.
template <class F>
auto at_line(int line, F&& f) {
  try {
    return f();
  } catch (const Error& e) {
    if (std::string_view(e.what()).starts_with(kPrefix)) throw;
    fail(line, e.what());
  }
}

enum class Flow { normal, break_, continue_ };

class Renderer {
 public:
  explicit Renderer(const Dict& vars) {
    scopes_.push_back(vars);
    scopes_.emplace_back();  // the template's top level
  }

  Flow render(const Body& body, std::string& out) {
    for (const StmtPtr& s : body)
      if (const Flow f = render(*s, out); f != Flow::normal) return f;
    return Flow::normal;
  }

 private:
  // ---- variables ----
  const Value* lookup(const std::string& name) const {
    for (size_t k = scopes_.size(); k-- > floor_;)
      if (const Value* v = scopes_[k].find(name)) return v;
    for (size_t k = std::min<size_t>(2, floor_); k-- > 0;)
      if (const Value* v = scopes_[k].find(name)) return v;
    return nullptr;
  }
  void assign(const std::string& name, Value v) { scopes_.back().set(name, std::move(v)); }

  struct ScopeGuard {
    Renderer& r;
    explicit ScopeGuard(Renderer& rr) : r(rr) { r.scopes_.emplace_back(); }
    ~ScopeGuard() { r.scopes_.pop_back(); }
  };

  // ---- statements ----
  // A chat prompt takes thousands of steps and kilobytes (a 1,000-message conversation: 7,511
  // statements through Qwen3's template, measured); these bounds stop a runaway template (nested
  // loops over range(100000), a string repeated without end) with an error instead.
  static constexpr uint64_t kMaxSteps = 1'000'000;
  static constexpr size_t kMaxOutput = size_t(64) << 20;

  Flow render(const Stmt& s, std::string& out) {
    if (++steps_ > kMaxSteps)
      fail(s.line, "the template ran more than " + std::to_string(kMaxSteps) + " steps");
    if (out.size() > kMaxOutput) fail(s.line, "the template wrote more than 64 MiB");
    switch (s.kind) {
      case StmtKind::text:
        out += s.text;
        return Flow::normal;
      case StmtKind::output:
        out += to_str(eval(*s.expr));
        return Flow::normal;
      case StmtKind::if_:
        for (const auto& [cond, body] : s.branches)
          if (!cond || truthy(eval(*cond))) return render(body, out);
        return Flow::normal;
      case StmtKind::for_:
        render_for(s, out);
        return Flow::normal;
      case StmtKind::set:
        render_set(s);
        return Flow::normal;
      case StmtKind::set_block: {
        std::string text;
        render(s.body, text);
        assign(s.targets[0], Value::string(std::move(text)));
        return Flow::normal;
      }
      case StmtKind::macro: {
        Value m = Value::with(Kind::macro);
        m.macro = s.macro.get();
        assign(s.macro->name, std::move(m));
        return Flow::normal;
      }
      case StmtKind::break_:
        return Flow::break_;
      case StmtKind::continue_:
        return Flow::continue_;
      case StmtKind::scope:
        return render(s.body, out);
    }
    return Flow::normal;
  }

  void bind(const std::vector<std::string>& targets, const Value& v, int line) {
    if (targets.size() == 1) return assign(targets[0], v);
    const List items = at_line(line, [&] { return iterate(v); });
    if (items.size() != targets.size())
      fail(line, "cannot unpack " + std::to_string(items.size()) + " values into " +
                     std::to_string(targets.size()) + " names");
    for (size_t k = 0; k < items.size(); ++k) assign(targets[k], items[k]);
  }

  void render_set(const Stmt& s) {
    Value v = eval(*s.expr);
    if (s.attr.empty()) return bind(s.targets, v, s.line);
    const Value* target = lookup(s.targets[0]);
    if (!target || !target->is(Kind::ns))
      fail(s.line, "set " + s.targets[0] + "." + s.attr + ": " + s.targets[0] +
                       " is not a namespace() (only namespaces take attribute assignment)");
    target->ns->set(s.attr, std::move(v));
  }

  void render_for(const Stmt& s, std::string& out) {
    const Value seq = eval(*s.expr);
    List items = at_line(s.line, [&] { return iterate(seq); });
    if (s.filter) {  // `for x in xs if cond`: the loop (and loop.length) sees the kept items only
      List kept;
      for (const Value& item : items) {
        ScopeGuard g(*this);
        bind(s.targets, item, s.line);
        if (truthy(eval(*s.filter))) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      render(s.else_body, out);
      return;
    }
    const int64_t n = int64_t(items.size());
    for (int64_t k = 0; k < n; ++k) {
      ScopeGuard g(*this);
      Dict loop;
      loop.items = {{"index0", Value::integer(k)},
                    {"index", Value::integer(k + 1)},
                    {"revindex0", Value::integer(n - k - 1)},
                    {"revindex", Value::integer(n - k)},
                    {"first", Value::boolean(k == 0)},
                    {"last", Value::boolean(k == n - 1)},
                    {"length", Value::integer(n)},
                    {"depth", Value::integer(1)},
                    {"depth0", Value::integer(0)},
                    {"previtem", k > 0 ? items[size_t(k - 1)] : Value{}},
                    {"nextitem", k + 1 < n ? items[size_t(k + 1)] : Value{}}};
      assign("loop", Value::of_dict(std::move(loop)));
      bind(s.targets, items[size_t(k)], s.line);
      if (render(s.body, out) == Flow::break_) break;
    }
  }

  // ---- expressions ----
  Value eval(const Expr& e) {
    switch (e.kind) {
      case ExprKind::literal:
        return e.value;
      case ExprKind::name: {
        const Value* v = lookup(e.name);
        return v ? *v : Value{};
      }
      case ExprKind::list: {
        List l;
        for (const ExprPtr& a : e.args) l.push_back(eval(*a));
        return Value::of_list(std::move(l));
      }
      case ExprKind::dict: {
        Dict d;
        for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
          const Value key = eval(*e.args[k]);
          if (!key.is(Kind::string)) fail(e.line, "dict keys must be strings");
          d.set(key.s, eval(*e.args[k + 1]));
        }
        return Value::of_dict(std::move(d));
      }
      case ExprKind::attr: {
        const Value obj = eval(*e.args[0]);
        return at_line(e.line, [&] { return get_item(obj, Value::string(e.name)); });
      }
      case ExprKind::item: {
        const Value obj = eval(*e.args[0]);
        const Value key = eval(*e.args[1]);
        return at_line(e.line, [&] { return get_item(obj, key); });
      }
      case ExprKind::slice:
        return eval_slice(e);
      case ExprKind::call:
        return eval_call(e);
      case ExprKind::filter: {
        const Value v = eval(*e.args[0]);
        const Args a = eval_args(e, 1);
        return at_line(e.line, [&] { return apply_filter(e.name, v, a); });
      }
      case ExprKind::test: {
        const Value v = eval(*e.args[0]);
        const Args a = eval_args(e, 1);
        return Value::boolean(at_line(e.line, [&] { return apply_test(e.name, v, a); }) !=
                              e.negate);
      }
      case ExprKind::unary:
        return eval_unary(e);
      case ExprKind::binary:
        return eval_binary(e);
      case ExprKind::cond:
        if (truthy(eval(*e.args[1]))) return eval(*e.args[0]);
        return e.args[2] ? eval(*e.args[2]) : Value{};
    }
    return Value{};
  }

  Args eval_args(const Expr& e, size_t from) {
    Args a;
    for (size_t k = from; k < e.args.size(); ++k) a.pos.push_back(eval(*e.args[k]));
    for (const auto& [name, x] : e.kwargs) a.kw.emplace_back(name, eval(*x));
    return a;
  }

  Value eval_unary(const Expr& e) {
    const Value v = eval(*e.args[0]);
    if (e.name == "not") return Value::boolean(!truthy(v));
    if (v.is(Kind::integer) || v.is_bool())
      return Value::integer(e.name == "-" ? -v.as_int() : v.as_int());
    if (v.is(Kind::number)) return Value::number(e.name == "-" ? -v.f : v.f);
    fail(e.line, "unary " + e.name + " of a " + std::string(kind_name(v.kind)));
  }

  static bool compare_less(const Value& a, const Value& b, int line) {
    if (a.is_numeric() && b.is_numeric()) return a.as_double() < b.as_double();
    if (a.is(Kind::string) && b.is(Kind::string)) return a.s < b.s;
    fail(line, "cannot order a " + std::string(kind_name(a.kind)) + " and a " +
                   std::string(kind_name(b.kind)));
  }

  Value eval_binary(const Expr& e) {
    const std::string& op = e.name;
    const Value a = eval(*e.args[0]);
    if (op == "and") return truthy(a) ? eval(*e.args[1]) : a;
    if (op == "or") return truthy(a) ? a : eval(*e.args[1]);
    const Value b = eval(*e.args[1]);
    if (op == "==") return Value::boolean(equal(a, b));
    if (op == "!=") return Value::boolean(!equal(a, b));
    if (op == "<") return Value::boolean(compare_less(a, b, e.line));
    if (op == ">") return Value::boolean(compare_less(b, a, e.line));
    if (op == "<=") return Value::boolean(!compare_less(b, a, e.line));
    if (op == ">=") return Value::boolean(!compare_less(a, b, e.line));
    if (op == "in" || op == "notin") {
      Args args;
      args.pos.push_back(b);
      const bool in = at_line(e.line, [&] { return apply_test("in", a, args); });
      return Value::boolean(in == (op == "in"));
    }
    if (op == "~") return checked(Value::string(to_str(a) + to_str(b)), e.line);
    return checked(arithmetic(op, a, b, e.line), e.line);
  }

  // A string or list that doubles on each loop step would exhaust memory within ~40 steps.
  static Value checked(Value v, int line) {
    if ((v.is(Kind::string) && v.s.size() > kMaxOutput) ||
        (v.is(Kind::list) && v.list->size() > kMaxOutput / 64))
      fail(line, "a value grew past 64 MiB");
    return v;
  }

  static Value arithmetic(const std::string& op, const Value& a, const Value& b, int line) {
    if (op == "+" && a.is(Kind::string) && b.is(Kind::string)) return Value::string(a.s + b.s);
    if (op == "+" && a.is(Kind::list) && b.is(Kind::list)) {
      List l = *a.list;
      l.insert(l.end(), b.list->begin(), b.list->end());
      return Value::of_list(std::move(l));
    }
    if (op == "*" && (a.is(Kind::string) || b.is(Kind::string))) {
      const Value& s = a.is(Kind::string) ? a : b;
      const Value& n = a.is(Kind::string) ? b : a;
      if (!n.is(Kind::integer)) fail(line, "a string can only be repeated by an integer");
      if (n.i > 0 && s.s.size() * uint64_t(n.i) > kMaxOutput)
        fail(line, "a string repeated past 64 MiB");
      std::string out;
      for (int64_t k = 0; k < n.i; ++k) out += s.s;
      return Value::string(std::move(out));
    }
    if (!a.is_numeric() || !b.is_numeric())
      fail(line, "cannot apply " + op + " to a " + std::string(kind_name(a.kind)) + " and a " +
                     std::string(kind_name(b.kind)));
    const bool ints = !a.is(Kind::number) && !b.is(Kind::number);
    if (op == "/") {
      if (b.as_double() == 0) fail(line, "division by zero");
      return Value::number(a.as_double() / b.as_double());
    }
    if (ints) {
      const int64_t x = a.as_int(), y = b.as_int();
      if ((op == "//" || op == "%") && y == 0) fail(line, "division by zero");
      if (op == "+") return Value::integer(x + y);
      if (op == "-") return Value::integer(x - y);
      if (op == "*") return Value::integer(x * y);
      if (op == "//") return Value::integer(x / y - ((x % y != 0) && ((x < 0) != (y < 0))));
      if (op == "%") return Value::integer(((x % y) + y) % y);
      if (op == "**" && y >= 0) {
        int64_t r = 1;
        for (int64_t k = 0; k < y; ++k) r *= x;
        return Value::integer(r);
      }
    }
    const double x = a.as_double(), y = b.as_double();
    if ((op == "//" || op == "%") && y == 0) fail(line, "division by zero");
    if (op == "+") return Value::number(x + y);
    if (op == "-") return Value::number(x - y);
    if (op == "*") return Value::number(x * y);
    if (op == "//") return Value::number(std::floor(x / y));
    if (op == "%") return Value::number(x - y * std::floor(x / y));
    return Value::number(std::pow(x, y));
  }

  Value eval_slice(const Expr& e) {
    const Value obj = eval(*e.args[0]);
    auto bound = [&](size_t k) -> std::optional<int64_t> {
      if (!e.args[k]) return std::nullopt;
      const Value v = eval(*e.args[k]);
      if (v.is(Kind::none)) return std::nullopt;
      if (!v.is(Kind::integer)) fail(e.line, "slice bounds must be integers");
      return v.i;
    };
    const std::optional<int64_t> lo = bound(1), hi = bound(2), st = bound(3);
    const int64_t step = st.value_or(1);
    if (step == 0) fail(e.line, "a slice step cannot be zero");
    const bool str = obj.is(Kind::string);
    if (!str && !obj.is(Kind::list))
      fail(e.line, "cannot slice a " + std::string(kind_name(obj.kind)));
    const std::vector<std::string_view> cps =
        str ? code_points(obj.s) : std::vector<std::string_view>{};
    const int64_t n = str ? int64_t(cps.size()) : int64_t(obj.list->size());
    // Python's slice.indices()
    auto clamp = [&](std::optional<int64_t> v, int64_t dflt) {
      if (!v) return dflt;
      int64_t x = *v < 0 ? *v + n : *v;
      if (step > 0) return std::clamp<int64_t>(x, 0, n);
      return std::clamp<int64_t>(x, -1, n - 1);
    };
    const int64_t b = clamp(lo, step > 0 ? 0 : n - 1), end = clamp(hi, step > 0 ? n : -1);
    std::string s;
    List l;
    for (int64_t k = b; step > 0 ? k < end : k > end; k += step) {
      if (str)
        s += cps[size_t(k)];
      else
        l.push_back((*obj.list)[size_t(k)]);
    }
    return str ? Value::string(std::move(s)) : Value::of_list(std::move(l));
  }

  Value eval_call(const Expr& e) {
    const Expr& callee = *e.args[0];
    if (callee.kind == ExprKind::attr) {
      const Value self = eval(*callee.args[0]);
      const Args a = eval_args(e, 1);
      return at_line(e.line, [&] { return call_method(self, callee.name, a); });
    }
    if (callee.kind != ExprKind::name) fail(e.line, "only names and methods can be called");
    const Args a = eval_args(e, 1);
    if (const Value* v = lookup(callee.name); v && v->is(Kind::macro))
      return call_macro(*v->macro, a, e.line);
    return at_line(e.line, [&] { return call_global(callee.name, a); });
  }

  Value call_global(const std::string& name, const Args& a) {
    if (name == "raise_exception") {
      const Value* m = a.get(0, "message");
      // The conversation's fault, not the template's: no --template hint from the CLI.
      throw Error("chat template raised an error: " + (m ? to_str(*m) : std::string()));
    }
    if (name == "strftime_now") {
      const Value* f = a.get(0, "format");
      if (!f || !f->is(Kind::string)) throw Error("strftime_now needs a format string");
      char buf[256];
      const std::time_t now = std::time(nullptr);
      std::tm tm{};
      localtime_r(&now, &tm);
      return Value::string(std::string(buf, std::strftime(buf, sizeof buf, f->s.c_str(), &tm)));
    }
    if (name == "namespace" || name == "dict") {
      Dict d;
      if (const Value* init = a.get(0, ""); init && init->is(Kind::dict)) d = *init->dict;
      for (const auto& [k, v] : a.kw) d.set(k, v);
      if (name == "dict") return Value::of_dict(std::move(d));
      Value ns = Value::with(Kind::ns);
      ns.ns = std::make_shared<Dict>(std::move(d));
      return ns;
    }
    if (name == "range") {
      auto arg = [&](size_t k) {
        if (a.pos[k].kind != Kind::integer) throw Error("range() takes integers");
        return a.pos[k].i;
      };
      if (a.pos.empty() || a.pos.size() > 3) throw Error("range() takes 1 to 3 integers");
      const int64_t lo = a.pos.size() > 1 ? arg(0) : 0, hi = a.pos.size() > 1 ? arg(1) : arg(0);
      const int64_t step = a.pos.size() > 2 ? arg(2) : 1;
      if (step == 0) throw Error("range() step cannot be zero");
      // jinja2's sandbox refuses ranges of more than 100,000 items (MAX_RANGE).
      const int64_t count = step > 0 ? (hi > lo ? (hi - lo + step - 1) / step : 0)
                                     : (lo > hi ? (lo - hi - step - 1) / -step : 0);
      if (count > 100'000) throw Error("range() of more than 100000 items (jinja2's limit)");
      List l;
      for (int64_t k = lo; step > 0 ? k < hi : k > hi; k += step) l.push_back(Value::integer(k));
      return Value::of_list(std::move(l));
    }
    throw Error("'" + name + "' is not a function ferry's Jinja knows (raise_exception, " +
                "strftime_now, namespace, dict, range, or a macro)");
  }

  Value call_macro(const MacroNode& m, const Args& a, int line) {
    if (a.pos.size() > m.params.size())
      fail(line, "macro " + m.name + " takes " + std::to_string(m.params.size()) + " arguments");
    if (scopes_.size() > 200) fail(line, "macros call each other more than 200 deep");
    const size_t saved_floor = floor_;
    ScopeGuard g(*this);
    floor_ = scopes_.size() - 1;
    for (size_t k = 0; k < m.params.size(); ++k) {
      const Value* v = a.get(k, m.params[k]);
      assign(m.params[k], v ? *v : m.defaults[k] ? eval(*m.defaults[k]) : Value{});
    }
    std::string out;
    render(m.body, out);
    floor_ = saved_floor;
    return Value::string(std::move(out));
  }

  std::vector<Dict> scopes_;
  uint64_t steps_ = 0;
  size_t floor_ = 0;  // a macro body sees scopes_[floor_..] and the first two (globals, top level)
};

}  // namespace

Template::Template(std::string_view source)
    : parsed_(std::make_unique<Parsed>(Parsed{parse_template(source)})) {}
Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

std::string Template::render(const Dict& vars) const {
  Renderer r(vars);
  std::string out;
  r.render(parsed_->body, out);
  return out;
}

}  // namespace ferry::jinja
