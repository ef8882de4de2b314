#include "text/jinja_builtins.hpp"

#include <algorithm>
#include <array>
#include <cmath>

#include "base/error.hpp"

namespace ferry::jinja {
namespace {

constexpr std::array<std::string_view, 33> kFilters = {
    "trim",       "length",   "count",  "tojson", "upper",      "lower", "replace",
    "join",       "default",  "d",      "first",  "last",       "items", "list",
    "string",     "int",      "float",  "safe",   "capitalize", "title", "selectattr",
    "rejectattr", "select",   "reject", "map",    "reverse",    "abs",   "unique",
    "sort",       "dictsort", "min",    "max",    "sum"};

constexpr std::array<std::string_view, 28> kTests = {
    "defined", "undefined",   "none",     "string",  "number", "integer",  "float",
    "mapping", "iterable",    "sequence", "boolean", "true",   "false",    "even",
    "odd",     "divisibleby", "equalto",  "eq",      "==",     "ne",       "!=",
    "lt",      "gt",          "le",       "ge",      "in",     "callable", "sameas"};

constexpr std::array<std::string_view, 18> kMethods = {
    "strip",   "lstrip", "rstrip", "split", "startswith", "endswith",
    "replace", "upper",  "lower",  "title", "capitalize", "find",
    "join",    "get",    "items",  "keys",  "values",     "rsplit"};

template <size_t N>
bool among(const std::array<std::string_view, N>& names, std::string_view n) {
  return std::find(names.begin(), names.end(), n) != names.end();
}

[[noreturn]] void type_error(std::string_view what, const Value& v) {
  throw Error(Setting::chat_template,
              std::string(what) + " does not take a " + std::string(kind_name(v.kind)));
}

const std::string& need_string(std::string_view what, const Value* v) {
  if (!v || !v->is(Kind::string))
    throw Error(Setting::chat_template, std::string(what) + " needs a string argument");
  return v->s;
}

int64_t int_arg(const Value* v, int64_t fallback) {
  if (!v || v->is(Kind::none)) return fallback;
  if (v->kind != Kind::integer && !v->is_bool())
    throw Error(Setting::chat_template,
                "expected an integer argument, got a " + std::string(kind_name(v->kind)));
  return v->as_int();
}

// Python's <, for sort/min/max/comparisons: numbers with numbers, strings with strings.
bool less(const Value& a, const Value& b) {
  if (a.is_numeric() && b.is_numeric()) return a.as_double() < b.as_double();
  if (a.is(Kind::string) && b.is(Kind::string)) return a.s < b.s;
  throw Error(Setting::chat_template, "cannot order a " + std::string(kind_name(a.kind)) +
                                          " and a " + std::string(kind_name(b.kind)));
}

// Jinja's attribute lookup for selectattr/map/sort: dotted paths ("function.name").
Value attribute_path(const Value& v, std::string_view path) {
  Value cur = v;
  for (size_t at = 0;;) {
    const size_t dot = path.find('.', at);
    cur = get_item(cur, Value::string(std::string(path.substr(at, dot - at))));
    if (dot == path.npos) return cur;
    at = dot + 1;
  }
}

Value select_items(const Value& v, const Args& a, bool by_attr, bool keep) {
  List out;
  const Value* attr = by_attr ? a.get(0, "attribute") : nullptr;
  if (by_attr && !attr) throw Error(Setting::chat_template, "selectattr needs an attribute name");
  const size_t t = by_attr ? 1 : 0;
  const Value* test = a.pos.size() > t ? &a.pos[t] : nullptr;
  Args targs;
  for (size_t k = t + 1; k < a.pos.size(); ++k) targs.pos.push_back(a.pos[k]);
  for (const Value& item : iterate(v)) {
    const Value x = by_attr ? attribute_path(item, need_string("selectattr", attr)) : item;
    const bool hit = test ? apply_test(need_string("select's test", test), x, targs) : truthy(x);
    if (hit == keep) out.push_back(item);
  }
  return Value::of_list(std::move(out));
}

Value map_items(const Value& v, const Args& a) {
  List out;
  const Value* attr = a.get(99, "attribute");
  const Value* fallback = a.get(99, "default");
  const Value* filter = attr ? nullptr : a.get(0, "");
  Args rest;
  for (size_t k = 1; k < a.pos.size(); ++k) rest.pos.push_back(a.pos[k]);
  for (const Value& item : iterate(v)) {
    if (attr) {
      Value x = attribute_path(item, need_string("map", attr));
      out.push_back(x.is(Kind::undefined) && fallback ? *fallback : x);
    } else {
      out.push_back(apply_filter(need_string("map", filter), item, rest));
    }
  }
  return Value::of_list(std::move(out));
}

Value sorted(const Value& v, const Args& a) {
  List items = iterate(v);
  const bool reverse = a.get(0, "reverse") && truthy(*a.get(0, "reverse"));
  const Value* attr = a.get(2, "attribute");
  auto key = [&](const Value& x) {
    Value k = attr ? attribute_path(x, need_string("sort", attr)) : x;
    return k.is(Kind::string) ? Value::string(py_lower(k.s)) : k;  // case_sensitive=False
  };
  std::stable_sort(items.begin(), items.end(),
                   [&](const Value& x, const Value& y) { return less(key(x), key(y)); });
  if (reverse) std::reverse(items.begin(), items.end());
  return Value::of_list(std::move(items));
}

Value to_int(const Value& v, const Args& a) {
  const int64_t fallback = int_arg(a.get(0, "default"), 0);
  if (v.is(Kind::integer) || v.is_bool()) return Value::integer(v.as_int());
  if (v.is(Kind::number)) return Value::integer(int64_t(v.f));
  if (!v.is(Kind::string)) return Value::integer(fallback);
  const std::string t = py_strip(v.s, true, true, nullptr);
  try {
    size_t used = 0;
    const int64_t n = std::stoll(t, &used);
    if (used == t.size()) return Value::integer(n);
    const double d = std::stod(t, &used);
    if (used == t.size()) return Value::integer(int64_t(d));
  } catch (const std::exception&) {
  }
  return Value::integer(fallback);
}

Value to_float(const Value& v, const Args& a) {
  const Value* fb = a.get(0, "default");
  const double fallback = fb && fb->is_numeric() ? fb->as_double() : 0.0;
  if (v.is_numeric()) return Value::number(v.as_double());
  if (!v.is(Kind::string)) return Value::number(fallback);
  try {
    size_t used = 0;
    const std::string t = py_strip(v.s, true, true, nullptr);
    const double d = std::stod(t, &used);
    if (used == t.size()) return Value::number(d);
  } catch (const std::exception&) {
  }
  return Value::number(fallback);
}

Value extreme(const Value& v, bool want_max) {
  const List items = iterate(v);
  if (items.empty()) return Value{};
  const Value* best = &items[0];
  for (const Value& x : items)
    if (want_max ? less(*best, x) : less(x, *best)) best = &x;
  return *best;
}

Value sum_of(const Value& v) {
  Value acc = Value::integer(0);
  for (const Value& x : iterate(v)) {
    if (!x.is_numeric()) type_error("sum", x);
    acc = acc.is(Kind::number) || x.is(Kind::number)
              ? Value::number(acc.as_double() + x.as_double())
              : Value::integer(acc.as_int() + x.as_int());
  }
  return acc;
}

Value items_of(const Value& v) {
  if (v.is(Kind::undefined)) return Value::of_list({});
  if (!v.is(Kind::dict)) type_error("items", v);
  List out;
  for (const auto& [k, x] : v.dict->items) out.push_back(Value::of_list({Value::string(k), x}));
  return Value::of_list(std::move(out));
}

Value join(const Value& v, const Args& a) {
  const Value* sep = a.get(0, "d");
  const Value* attr = a.get(1, "attribute");
  std::string out;
  bool first = true;
  for (const Value& x : iterate(v)) {
    if (!first && sep) out += to_str(*sep);
    first = false;
    out += to_str(attr ? attribute_path(x, need_string("join", attr)) : x);
  }
  return Value::string(std::move(out));
}

// Jinja applies these to str(value): {{ 3|upper }} is "3", an undefined value is "".
Value string_filter(std::string_view name, const Value& value, const Args& a) {
  const Value v = value.is(Kind::string) ? value : Value::string(to_str(value));
  if (name == "trim") {
    const Value* chars = a.get(0, "chars");
    return Value::string(
        py_strip(v.s, true, true, chars && chars->is(Kind::string) ? &chars->s : nullptr));
  }
  if (name == "upper") return Value::string(py_upper(v.s));
  if (name == "lower") return Value::string(py_lower(v.s));
  if (name == "capitalize") return Value::string(py_capitalize(v.s));
  if (name == "title") return Value::string(py_title(v.s));
  // replace(old, new, count)
  return Value::string(py_replace(v.s, need_string("replace", a.get(0, "old")),
                                  need_string("replace", a.get(1, "new")),
                                  int_arg(a.get(2, "count"), -1)));
}

Value first_or_last(const Value& v, bool last) {
  const List items = iterate(v);
  if (items.empty()) return Value{};
  return last ? items.back() : items.front();
}

}  // namespace

const Value* Args::get(size_t index, std::string_view keyword) const {
  for (const auto& [k, v] : kw)
    if (k == keyword) return &v;
  return index < pos.size() ? &pos[index] : nullptr;
}

bool known_filter(std::string_view name) {
  return among(kFilters, name);
}
bool known_test(std::string_view name) {
  return among(kTests, name);
}
bool known_method(std::string_view name) {
  return among(kMethods, name);
}

int64_t length_of(const Value& v) {
  switch (v.kind) {
    case Kind::undefined:
      return 0;
    case Kind::string:
      return int64_t(code_points(v.s).size());
    case Kind::list:
      return int64_t(v.list->size());
    case Kind::dict:
      return int64_t(v.dict->items.size());
    default:
      type_error("length", v);
  }
}

List iterate(const Value& v) {
  switch (v.kind) {
    case Kind::undefined:
      return {};
    case Kind::list:
      return *v.list;
    case Kind::dict: {
      List keys;
      for (const auto& kv : v.dict->items) keys.push_back(Value::string(kv.first));
      return keys;
    }
    case Kind::string: {
      List chars;
      for (std::string_view c : code_points(v.s)) chars.push_back(Value::string(std::string(c)));
      return chars;
    }
    default:
      throw Error(Setting::chat_template,
                  "a " + std::string(kind_name(v.kind)) + " cannot be iterated over");
  }
}

Value get_item(const Value& obj, const Value& key) {
  if (obj.is(Kind::dict) || obj.is(Kind::ns)) {
    if (!key.is(Kind::string)) return Value{};
    const Value* v = (obj.is(Kind::dict) ? *obj.dict : *obj.ns).find(key.s);
    return v ? *v : Value{};
  }
  if ((obj.is(Kind::list) || obj.is(Kind::string)) && (key.is(Kind::integer) || key.is_bool())) {
    const bool str = obj.is(Kind::string);
    const std::vector<std::string_view> cps =
        str ? code_points(obj.s) : std::vector<std::string_view>{};
    const int64_t n = str ? int64_t(cps.size()) : int64_t(obj.list->size());
    int64_t k = key.as_int();
    if (k < 0) k += n;
    if (k < 0 || k >= n) return Value{};
    return str ? Value::string(std::string(cps[size_t(k)])) : (*obj.list)[size_t(k)];
  }
  if (obj.is(Kind::undefined))
    throw Error(Setting::chat_template,
                "'" + to_str(key) + "' of an undefined value (a missing variable or key)");
  if (obj.is(Kind::none)) throw Error(Setting::chat_template, "'" + to_str(key) + "' of None");
  return Value{};
}

Value apply_filter(std::string_view name, const Value& v, const Args& a) {
  if (name == "length" || name == "count") return Value::integer(length_of(v));
  if (name == "tojson") return Value::string(to_json(v, int(int_arg(a.get(0, "indent"), -1))));
  if (name == "string") return Value::string(to_str(v));
  if (name == "safe") return v;
  if (name == "default" || name == "d") {
    const Value* fallback = a.get(0, "default_value");
    const Value* boolean = a.get(1, "boolean");
    const bool use = v.is(Kind::undefined) || (boolean && truthy(*boolean) && !truthy(v));
    return use ? (fallback ? *fallback : Value::string("")) : v;
  }
  if (name == "first" || name == "last") return first_or_last(v, name == "last");
  if (name == "items") return items_of(v);
  if (name == "list") return Value::of_list(iterate(v));
  if (name == "join") return join(v, a);
  if (name == "int") return to_int(v, a);
  if (name == "float") return to_float(v, a);
  if (name == "selectattr" || name == "rejectattr") return select_items(v, a, true, name[0] == 's');
  if (name == "select" || name == "reject") return select_items(v, a, false, name[0] == 's');
  if (name == "map") return map_items(v, a);
  if (name == "sort") return sorted(v, a);
  if (name == "min" || name == "max") return extreme(v, name == "max");
  if (name == "sum") return sum_of(v);
  if (name == "reverse") {
    if (v.is(Kind::string)) {
      std::string out;
      const auto cps = code_points(v.s);
      for (auto it = cps.rbegin(); it != cps.rend(); ++it) out += *it;
      return Value::string(std::move(out));
    }
    List items = iterate(v);
    std::reverse(items.begin(), items.end());
    return Value::of_list(std::move(items));
  }
  if (name == "unique") {
    List out;
    for (const Value& x : iterate(v))
      if (std::none_of(out.begin(), out.end(), [&](const Value& y) { return equal(x, y); }))
        out.push_back(x);
    return Value::of_list(std::move(out));
  }
  if (name == "dictsort") {
    if (!v.is(Kind::dict)) type_error("dictsort", v);
    Dict d = *v.dict;
    std::stable_sort(d.items.begin(), d.items.end(), [](const auto& x, const auto& y) {
      return py_lower(x.first) < py_lower(y.first);
    });
    return items_of(Value::of_dict(std::move(d)));
  }
  if (name == "abs") {
    if (v.is(Kind::integer)) return Value::integer(v.i < 0 ? -v.i : v.i);
    if (v.is(Kind::number)) return Value::number(std::fabs(v.f));
    type_error("abs", v);
  }
  return string_filter(name, v, a);
}

bool apply_test(std::string_view name, const Value& v, const Args& a) {
  const Value* arg = a.get(0, "");
  auto need_arg = [&]() -> const Value& {
    if (!arg)
      throw Error(Setting::chat_template, "the test 'is " + std::string(name) + "' needs a value");
    return *arg;
  };
  if (name == "defined") return !v.is(Kind::undefined);
  if (name == "undefined") return v.is(Kind::undefined);
  if (name == "none") return v.is(Kind::none);
  if (name == "string") return v.is(Kind::string);
  if (name == "number") return v.is_numeric() && !v.is_bool();
  if (name == "integer") return v.is(Kind::integer);
  if (name == "float") return v.is(Kind::number);
  if (name == "boolean") return v.is_bool();
  if (name == "true") return v.is_bool() && v.b;
  if (name == "false") return v.is_bool() && !v.b;
  if (name == "mapping") return v.is(Kind::dict);
  if (name == "iterable") return v.is(Kind::list) || v.is(Kind::dict) || v.is(Kind::string);
  if (name == "sequence") return v.is(Kind::list) || v.is(Kind::dict) || v.is(Kind::string);
  if (name == "callable") return v.is(Kind::macro);
  if (name == "even" || name == "odd") {
    if (!v.is(Kind::integer)) type_error("'is " + std::string(name) + "'", v);
    return (((v.i % 2) + 2) % 2 == 0) == (name == "even");
  }
  if (name == "divisibleby") {
    const int64_t d = int_arg(&need_arg(), 1);
    if (!v.is(Kind::integer) || d == 0) type_error("'is divisibleby'", v);
    return v.i % d == 0;
  }
  if (name == "equalto" || name == "eq" || name == "==" || name == "sameas")
    return equal(v, need_arg());
  if (name == "ne" || name == "!=") return !equal(v, need_arg());
  if (name == "lt") return less(v, need_arg());
  if (name == "gt") return less(need_arg(), v);
  if (name == "le") return !less(need_arg(), v);
  if (name == "ge") return !less(v, need_arg());
  // "in"
  const Value& seq = need_arg();
  if (seq.is(Kind::string) && v.is(Kind::string)) return seq.s.find(v.s) != std::string::npos;
  for (const Value& x : iterate(seq))
    if (equal(x, v)) return true;
  return false;
}

namespace {

Value string_method(const std::string& s, std::string_view name, const Args& a) {
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    const Value* chars = a.get(0, "chars");
    const std::string* set = chars && chars->is(Kind::string) ? &chars->s : nullptr;
    return Value::string(py_strip(s, name[0] != 'r', name[0] != 'l', set));
  }
  if (name == "split" || name == "rsplit") {
    const Value* sep = a.get(0, "sep");
    const int64_t max = int_arg(a.get(1, "maxsplit"), -1);
    if (name == "rsplit" && max >= 0)
      throw Error(Setting::chat_template, "rsplit with maxsplit is not supported");
    List out;
    for (std::string& part : py_split(s, sep && sep->is(Kind::string) ? &sep->s : nullptr, max))
      out.push_back(Value::string(std::move(part)));
    return Value::of_list(std::move(out));
  }
  if (name == "startswith" || name == "endswith") {
    const Value* p = a.get(0, "prefix");
    const List options = p && p->is(Kind::list) ? *p->list : List{p ? *p : Value{}};
    for (const Value& o : options) {
      const std::string& t = need_string(name, &o);
      if (name == "startswith" ? s.starts_with(t) : s.ends_with(t)) return Value::boolean(true);
    }
    return Value::boolean(false);
  }
  if (name == "replace")
    return Value::string(py_replace(s, need_string("replace", a.get(0, "old")),
                                    need_string("replace", a.get(1, "new")),
                                    int_arg(a.get(2, "count"), -1)));
  if (name == "upper") return Value::string(py_upper(s));
  if (name == "lower") return Value::string(py_lower(s));
  if (name == "title") return Value::string(py_title(s));
  if (name == "capitalize") return Value::string(py_capitalize(s));
  if (name == "find") {
    const size_t at = s.find(need_string("find", a.get(0, "sub")));
    return Value::integer(at == s.npos ? -1 : int64_t(code_points(s.substr(0, at)).size()));
  }
  if (name == "join") {
    Args j;
    j.pos.push_back(Value::string(s));
    return join(a.pos.empty() ? Value::of_list({}) : a.pos[0], j);
  }
  throw Error(Setting::chat_template, "a string has no method ." + std::string(name) + "()");
}

}  // namespace

Value call_method(const Value& self, std::string_view name, const Args& a) {
  if (self.is(Kind::string)) return string_method(self.s, name, a);
  if (self.is(Kind::dict)) {
    if (name == "get") {
      const Value* key = a.get(0, "key");
      const Value got = key ? get_item(self, *key) : Value{};
      const Value* fallback = a.get(1, "default");
      return got.is(Kind::undefined) ? (fallback ? *fallback : Value::none()) : got;
    }
    if (name == "items") return items_of(self);
    if (name == "keys") return Value::of_list(iterate(self));
    if (name == "values") {
      List out;
      for (const auto& kv : self.dict->items) out.push_back(kv.second);
      return Value::of_list(std::move(out));
    }
  }
  if (self.is(Kind::undefined))
    throw Error(Setting::chat_template,
                "." + std::string(name) + "() of an undefined value (a missing variable or key)");
  throw Error(Setting::chat_template, "a " + std::string(kind_name(self.kind)) +
                                          " has no method ." + std::string(name) + "()");
}

}  // namespace ferry::jinja
