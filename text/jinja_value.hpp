// The values a chat template computes with: Python's None, bool, int, float, str, list (and
// tuple), dict (insertion-ordered, string keys) and Jinja's Undefined, plus namespace() objects
// (the one mutable value: `set ns.x = ...` writes through every copy) and macros. Lists and dicts
// are shared immutable payloads, so copying a Value is cheap; templates run in transformers'
// ImmutableSandboxedEnvironment, which forbids mutating them anyway.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ferry::jinja {

struct Value;
struct MacroNode;
using List = std::vector<Value>;

struct Dict {
  std::vector<std::pair<std::string, Value>> items;  // insertion order, keys unique
  const Value* find(std::string_view key) const;
  void set(std::string key, Value v);  // replaces in place or appends
};

enum class Kind : uint8_t {
  undefined,
  none,
  boolean,
  integer,
  number,
  string,
  list,
  dict,
  ns,
  macro
};

struct Value {
  Kind kind = Kind::undefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;                     // string
  std::shared_ptr<const List> list;  // list (tuples too)
  std::shared_ptr<const Dict> dict;  // dict
  std::shared_ptr<Dict> ns;          // namespace(): shared and mutable
  const MacroNode* macro = nullptr;  // a macro of the template being rendered

  static Value none() { return with(Kind::none); }
  static Value boolean(bool v) {
    Value r = with(Kind::boolean);
    r.b = v;
    return r;
  }
  static Value integer(int64_t v) {
    Value r = with(Kind::integer);
    r.i = v;
    return r;
  }
  static Value number(double v) {
    Value r = with(Kind::number);
    r.f = v;
    return r;
  }
  static Value string(std::string v);
  static Value of_list(List v);
  static Value of_dict(Dict v);
  static Value with(Kind k) {
    Value r;
    r.kind = k;
    return r;
  }

  bool is(Kind k) const { return kind == k; }
  bool is_numeric() const { return kind == Kind::integer || kind == Kind::number || is_bool(); }
  bool is_bool() const { return kind == Kind::boolean; }
  double as_double() const { return kind == Kind::number ? f : double(as_int()); }
  int64_t as_int() const { return kind == Kind::boolean ? int64_t(b) : i; }
};

// Python's bool(v); Undefined is false.
bool truthy(const Value& v);
// Python's ==: 1 == 1.0 == True, lists and dicts compared deeply.
bool equal(const Value& a, const Value& b);
// Python's str(v) (what {{ v }} prints; Undefined prints nothing) and repr(v).
std::string to_str(const Value& v);
std::string repr(const Value& v);
// Python's json.dumps(v, ensure_ascii=False, indent=indent) as transformers' tojson filter calls
// it: ", " and ": " separators, or "," at line ends when indent >= 0.
std::string to_json(const Value& v, int indent = -1);
// A JSON text as a Value: objects keep their key order, as Python's json.loads does. Throws
// ferry::Error on malformed JSON.
Value value_from_json(std::string_view json_text);
// "string", "list", ... for error messages.
std::string_view kind_name(Kind k);

// Python float repr: shortest round-trip digits, "1.0", "1e-05", "1e+16", "inf", "nan".
std::string py_float(double d);

// Python str helpers on UTF-8 text, by code point.
bool is_py_space(char32_t c);
std::vector<std::string_view> code_points(std::string_view s);
std::string py_strip(std::string_view s, bool left, bool right, const std::string* chars);
std::vector<std::string> py_split(std::string_view s, const std::string* sep, int64_t maxsplit);
std::string py_upper(std::string_view s);
std::string py_lower(std::string_view s);
std::string py_title(std::string_view s);
std::string py_capitalize(std::string_view s);
std::string py_replace(std::string_view s, std::string_view from, std::string_view to,
                       int64_t count);

}  // namespace ferry::jinja
